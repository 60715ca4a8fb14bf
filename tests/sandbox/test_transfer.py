"""File transfer between nodes: chunks over a real nats-server between two bus connections,
real files in tmp_path, and the receiver's policy deciding path, size and checksum before
anything lands (refusals leave no file and no staging file behind)."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from agentrt._connect import open_bus
from agentrt.sandbox import (
    FileAccess,
    FileRoot,
    FileRules,
    FileTransfer,
    Policy,
    TransferError,
    detect_type,
    nats_permissions,
)

BIN = "application/octet-stream"
MiB = 1024 * 1024


def random_bytes(size: int, seed: int = 7) -> bytes:
    data = random.Random(seed).randbytes(size)
    assert detect_type(data) == BIN  # seeded, so this holds every run
    return data


def node_files(
    tmp_path: Path, name: str, *, write: bool = True, max_bytes: int = 8 * MiB
) -> FileAccess:
    """A node whose only root is tmp_path/<name>, allowing binary content up to max_bytes."""
    (tmp_path / name).mkdir()
    policy = Policy(
        files=FileRules(roots=[FileRoot(path=name, write=write)], types=[BIN], max_bytes=max_bytes),
        path=str(tmp_path / f"{name}.toml"),
    )
    return FileAccess(policy, node=name)


class CountingTransfer(FileTransfer):
    """Records how many chunks each send used."""

    counts: list[int]

    def iter_chunks(self, data: bytes) -> Iterator[bytes]:
        chunks = list(super().iter_chunks(data))
        self.counts = [*getattr(self, "counts", []), len(chunks)]
        return iter(chunks)


class CorruptingTransfer(FileTransfer):
    """Flips one byte of the second chunk after the checksum was computed: damage in transit."""

    def iter_chunks(self, data: bytes) -> Iterator[bytes]:
        for seq, chunk in enumerate(super().iter_chunks(data)):
            yield chunk[:1] + bytes([chunk[1] ^ 0xFF]) + chunk[2:] if seq == 1 else chunk


@asynccontextmanager
async def pair(
    nats_url: str, cluster: str, sender_files: FileAccess, receiver_files: FileAccess, *,
    sender_cls: type[FileTransfer] = FileTransfer, chunk_bytes: int | None = None,
) -> AsyncIterator[tuple[FileTransfer, FileTransfer]]:  # fmt: skip
    """A serving receiver and a sender, each on its own connection to the server."""
    async with open_bus(nats_url) as a, open_bus(nats_url) as b, trio.open_nursery() as nursery:
        receiver = FileTransfer(b, receiver_files, cluster=cluster, node="receiver")
        await nursery.start(receiver.serve)
        sender = sender_cls(
            a, sender_files, cluster=cluster, node="sender", chunk_bytes=chunk_bytes
        )
        yield sender, receiver
        nursery.cancel_scope.cancel()


async def test_a_5_mib_file_arrives_intact_in_several_chunks(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    data = random_bytes(5 * MiB)
    sender_files = node_files(tmp_path, "sender")
    receiver_files = node_files(tmp_path, "receiver")
    (tmp_path / "sender" / "blob.bin").write_bytes(data)
    async with pair(
        nats_url, cluster_name, sender_files, receiver_files, sender_cls=CountingTransfer
    ) as (sender, _):
        # a Path is read through the sender's own policy
        sha = await sender.send("receiver", Path("blob.bin"), "blob.bin")
    assert isinstance(sender, CountingTransfer) and sender.counts[0] > 1
    assert sha == hashlib.sha256(data).hexdigest()
    assert receiver_files.read("blob.bin") == data
    assert os.listdir(tmp_path / "receiver") == ["blob.bin"]  # no staging file left


async def test_a_read_only_root_refuses_on_the_first_chunk(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    sender_files = node_files(tmp_path, "sender")
    receiver_files = node_files(tmp_path, "receiver", write=False)
    async with pair(nats_url, cluster_name, sender_files, receiver_files) as (sender, _):
        with pytest.raises(TransferError) as info:
            await sender.send("receiver", random_bytes(64 * 1024), "blob.bin")
    assert (info.value.kind, info.value.node, info.value.path, info.value.seq) == (
        "policy", "receiver", "blob.bin", 0,
    )  # fmt: skip
    assert "files.roots[0].write = false" in str(info.value)
    assert os.listdir(tmp_path / "receiver") == []


async def test_a_corrupted_chunk_fails_the_checksum_and_leaves_nothing(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    sender_files = node_files(tmp_path, "sender")
    receiver_files = node_files(tmp_path, "receiver")
    async with pair(
        nats_url, cluster_name, sender_files, receiver_files,
        sender_cls=CorruptingTransfer, chunk_bytes=256 * 1024,
    ) as (sender, _):  # fmt: skip
        with pytest.raises(TransferError) as info:
            await sender.send("receiver", random_bytes(MiB), "blob.bin")
    assert (info.value.kind, info.value.seq) == ("checksum", 3)  # noticed on the last chunk
    assert os.listdir(tmp_path / "receiver") == []


async def test_over_max_bytes_is_refused_mid_stream(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    sender_files = node_files(tmp_path, "sender")
    receiver_files = node_files(tmp_path, "receiver", max_bytes=MiB)
    async with pair(
        nats_url, cluster_name, sender_files, receiver_files, chunk_bytes=256 * 1024
    ) as (sender, _):
        with pytest.raises(TransferError) as info:
            await sender.send("receiver", random_bytes(3 * MiB), "blob.bin")
    # 4 chunks are exactly 1 MiB (allowed); the 5th of 12 goes over the cap
    assert (info.value.kind, info.value.seq) == ("size", 4)
    assert f"files.max_bytes = {MiB}" in str(info.value)
    assert os.listdir(tmp_path / "receiver") == []


async def test_out_of_order_chunks_are_refused_and_idle_transfers_reaped(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    receiver_files = node_files(tmp_path, "receiver")
    headers = {
        "Agentrt-Transfer": "t1", "Agentrt-Total": "2", "Agentrt-Sha256": "0" * 64,
        "Agentrt-Path": "blob.bin",
    }  # fmt: skip
    async with pair(nats_url, cluster_name, receiver_files, receiver_files) as (sender, receiver):
        subject = receiver.subject
        skipped = await sender.bus.request(subject, b"x", headers={**headers, "Agentrt-Seq": "1"})
        assert skipped.headers and skipped.headers["Agentrt-Error"] == "sequence"
        first = await sender.bus.request(subject, b"x", headers={**headers, "Agentrt-Seq": "0"})
        assert first.data == b"ok"
        assert [n for n in os.listdir(tmp_path / "receiver") if n.endswith(".transfer")]
        assert receiver.reap(trio.current_time()) == []  # not idle yet
        assert receiver.reap(trio.current_time() + FileTransfer.IDLE_TIMEOUT_S) == ["t1"]
    assert os.listdir(tmp_path / "receiver") == []


def test_nats_permissions_let_a_named_node_send_anywhere_but_receive_only_its_own() -> None:
    publish, subscribe = nats_permissions(
        None, cluster="c", agents=[], hosted_tools=[], known_tools=[], node_name="worker"
    )
    assert "agentrt.c.files.>" in publish
    assert [s for s in subscribe if ".files." in s] == ["agentrt.c.files.worker"]
    unnamed = nats_permissions(None, cluster="c", agents=[], hosted_tools=[], known_tools=[])
    assert not [s for s in unnamed[0] + unnamed[1] if ".files." in s]
