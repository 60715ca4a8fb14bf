"""Moving files between nodes over NATS, under both nodes' file policies.

A message is capped by the server's ``max_payload`` (1 MiB by default), so a file travels as a
series of request/reply chunks to ``agentrt.<cluster>.files.<node>``. One request per chunk,
and the next chunk leaves only after the receiver acknowledged the previous one: the ack *is*
the flow control, so a slow disk on the receiving side slows the sender down instead of
filling a queue, and nothing needs JetStream.

Each chunk carries the headers ``Agentrt-Transfer`` (a random id), ``Agentrt-Seq`` (0-based),
``Agentrt-Total`` (number of chunks), ``Agentrt-Sha256`` (of the whole file) and
``Agentrt-Path`` (the destination, as the receiver's policy sees it); the payload is the chunk.
The reply is ``b"ok"`` or ``b"error: <message>"`` with an ``Agentrt-Error: <kind>`` header.

The receiver's policy decides, as it does for local writes:

* the destination is checked with ``FileAccess.resolve(path, write=True)`` on the first chunk,
  so a denied path costs one round trip, not the whole file;
* ``files.max_bytes`` is enforced as bytes arrive (refused as soon as it is exceeded);
* chunks are appended, in order, to a hidden staging file in the destination directory (not
  kept in memory: a 16 MiB file is never held twice);
* on the last chunk the SHA-256 is compared, then the staged content is read back once and
  handed to ``FileAccess.write``, which checks the type *from the complete content* (a prefix
  of a JSON document is not JSON, so checking the first chunk would misjudge it), checks the
  size again, audits any denial and writes atomically. The staging file is always removed.

Transfers with no chunk for ``IDLE_TIMEOUT_S`` (30 s) are dropped and their staging file removed.
Chunks are handled one at a time per receiver; concurrent transfers interleave chunk by chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from agentrt import AgentrtError, AgentUnavailable, BusError, PolicyDenied
from agentrt._bus import InboundMsg, Transport

from ._files import FileAccess

__all__ = ["FileTransfer", "TransferError"]

_NAME_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
_HEADROOM = 64 * 1024
_MIN_CHUNK = 16 * 1024

H_ID, H_SEQ, H_TOTAL = "Agentrt-Transfer", "Agentrt-Seq", "Agentrt-Total"
H_SHA, H_PATH, H_ERROR = "Agentrt-Sha256", "Agentrt-Path", "Agentrt-Error"

_HINTS = {
    "policy": "change the receiving node's policy file or send to a path it allows",
    "size": "raise the receiving node's files.max_bytes or send a smaller file",
    "checksum": "the bytes changed on the way; send the file again",
    "sequence": "chunks arrived out of order or the transfer expired; send the file again",
    "protocol": "the request was malformed; sender and receiver must run the same agentrt",
    "io": "the receiving node could not write there; check the destination directory exists",
    "timeout": "the receiving node did not acknowledge in time; check it is running and healthy",
    "unavailable": "no node serves that name; start FileTransfer.serve() on it",
}


class TransferError(AgentrtError):  # type: ignore[misc]  # AgentrtError is opaque to mypy here
    """A file could not be moved to another node.

    A refusal by the receiver leaves nothing at the destination (no file, no staging file).
    After a ``timeout`` the outcome is unknown, as for any request/reply: the receiver may have
    written the file if only the last acknowledgement was lost; its staging file of an
    unfinished transfer is removed once the transfer has been idle for ``IDLE_TIMEOUT_S``.

    Attributes:
        node: the receiving node.
        path: the destination path.
        kind: ``policy``, ``size``, ``checksum``, ``sequence``, ``protocol``, ``io`` (refused
            by the receiver), ``timeout`` or ``unavailable`` (no answer).
        detail: the receiver's explanation (for ``policy``, the deciding rule of its policy).
        seq: the chunk that failed, if one did.
    """

    def __init__(
        self, node: str, path: str, kind: str, detail: str, *, seq: int | None = None
    ) -> None:
        self.node, self.path, self.kind, self.detail, self.seq = node, path, kind, detail, seq
        hint = _HINTS.get(kind, "see the receiving node's log")
        super().__init__(f"sending {path!r} to node {node!r} failed ({kind}): {detail}; {hint}")


class _Refused(Exception):
    """Internal: a chunk the receiver refuses, with the kind for the ``Agentrt-Error`` header."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class _Incoming:
    """One transfer being received: where it is staged and what comes next."""

    path: str
    real: Path
    staging: str
    total: int
    sha256: str
    last_seen: float
    next_seq: int = 0
    size: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)


def _append(staging: str, data: bytes) -> None:
    with open(staging, "ab") as f:
        f.write(data)


def _remove(staging: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)


class FileTransfer:
    """Send files to other nodes and receive them, each side under its own ``FileAccess``.

    Args:
        bus: this node's bus connection.
        files: this node's confined file access (the sender reads with it, the receiver writes).
        cluster: the cluster name (subjects are ``agentrt.<cluster>.files.<node>``).
        node: this node's name, one subject token (letters, digits, ``_``, ``-``).
        chunk_bytes: payload per request; by default the server's ``max_payload`` minus 64 KiB
            of headroom for headers (at least 16 KiB).
    """

    IDLE_TIMEOUT_S = 30.0
    CHUNK_TIMEOUT_S = 30.0

    def __init__(
        self, bus: Transport, files: FileAccess, *, cluster: str, node: str,
        chunk_bytes: int | None = None,
    ) -> None:  # fmt: skip
        for what, name in (("cluster", cluster), ("node", node)):
            if not _NAME_RE.match(name):
                raise ValueError(f"{what} name {name!r} must be letters, digits, '_' or '-'")
        if chunk_bytes is None:
            chunk_bytes = max(bus.max_payload - _HEADROOM, _MIN_CHUNK)
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, not {chunk_bytes}")
        self.bus, self.files, self.cluster, self.node = bus, files, cluster, node
        self.chunk_bytes = chunk_bytes
        self.subject = self.subject_of(node)
        self._incoming: dict[str, _Incoming] = {}

    def subject_of(self, node: str) -> str:
        """The subject a node receives files on."""
        return f"agentrt.{self.cluster}.files.{node}"

    # -- sending ------------------------------------------------------------------------------

    def iter_chunks(self, data: bytes) -> Iterator[bytes]:
        """The chunks ``data`` is sent as (a hook: tests override it to corrupt one)."""
        for start in range(0, len(data), self.chunk_bytes):
            yield data[start : start + self.chunk_bytes]

    async def send(self, to_node: str, data: bytes | Path, dest_path: str) -> str:
        """Send ``data`` (or the file at a ``Path``, read under this node's policy) to
        ``dest_path`` on ``to_node``; returns the SHA-256 (hex) the receiver verified.

        Raises:
            TransferError: the receiver refused (its policy, size cap, checksum, order) or did
                not answer a chunk within ``CHUNK_TIMEOUT_S``.
            PolicyDenied: a ``Path`` this node's policy does not allow reading.
        """
        if not _NAME_RE.match(to_node):
            raise ValueError(f"node name {to_node!r} must be letters, digits, '_' or '-'")
        if "\r" in dest_path or "\n" in dest_path:  # it travels in a NATS header
            raise ValueError(f"destination path {dest_path!r} contains a line break")
        if isinstance(data, Path):
            data = await self.files.aread(str(data))
        sha = hashlib.sha256(data).hexdigest()
        chunks = list(self.iter_chunks(data)) or [b""]
        transfer_id = os.urandom(12).hex()
        subject = self.subject_of(to_node)
        for seq, chunk in enumerate(chunks):
            headers = {
                H_ID: transfer_id, H_SEQ: str(seq), H_TOTAL: str(len(chunks)),
                H_SHA: sha, H_PATH: dest_path,
            }  # fmt: skip
            deadline = trio.current_time() + self.CHUNK_TIMEOUT_S
            try:
                reply = await self.bus.request(subject, chunk, headers=headers, deadline=deadline)
            except trio.TooSlowError:
                raise TransferError(
                    to_node, dest_path, "timeout",
                    f"no acknowledgement for chunk {seq} within {self.CHUNK_TIMEOUT_S:g}s",
                    seq=seq,
                ) from None  # fmt: skip
            except AgentUnavailable:
                raise TransferError(
                    to_node, dest_path, "unavailable", f"nothing subscribed to {subject}", seq=seq
                ) from None
            if reply.data != b"ok":
                kind = (reply.headers or {}).get(H_ERROR, "protocol")
                detail = reply.data.decode("utf-8", "replace").removeprefix("error: ")
                raise TransferError(to_node, dest_path, kind, detail, seq=seq)
        return sha

    # -- receiving ----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive files sent to this node until cancelled.

        Channel mode (not a synchronous handler), because handling a chunk awaits disk I/O in a
        worker thread. ``task_status.started()`` is called once the subscription is registered
        with the server, so ``nursery.start(ft.serve)`` returns when senders can reach it.
        """
        sub = await self.bus.subscribe(self.subject)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reap_forever)
                task_status.started()
                async for msg in sub:
                    await self._handle(msg)
                nursery.cancel_scope.cancel()
        finally:
            for transfer_id in list(self._incoming):
                self._drop(transfer_id)
            with trio.CancelScope(shield=True), contextlib.suppress(BusError):
                await sub.unsubscribe()

    async def _reap_forever(self) -> None:
        while True:
            await trio.sleep(self.IDLE_TIMEOUT_S / 3)
            self.reap(trio.current_time())

    def reap(self, now: float) -> list[str]:
        """Drop transfers idle for ``IDLE_TIMEOUT_S`` at trio time ``now`` (their staging files
        are removed); returns their ids. ``serve`` calls it periodically."""
        stale = [i for i, t in self._incoming.items() if now - t.last_seen >= self.IDLE_TIMEOUT_S]
        for transfer_id in stale:
            self._drop(transfer_id)
        return stale

    def _drop(self, transfer_id: str) -> None:
        incoming = self._incoming.pop(transfer_id, None)
        if incoming is not None:
            _remove(incoming.staging)

    async def _handle(self, msg: InboundMsg) -> None:
        if not msg.reply:
            return  # a publish, not a request: nobody to answer
        headers: dict[str, str] = msg.headers or {}
        transfer_id = headers.get(H_ID, "")
        try:
            await self._receive_chunk(transfer_id, headers, msg.data)
        except _Refused as exc:
            self._drop(transfer_id)
            self.bus.publish_nowait(
                msg.reply, f"error: {exc}".encode(), headers={H_ERROR: exc.kind}
            )
        except BaseException:
            self._drop(transfer_id)
            raise
        else:
            self.bus.publish_nowait(msg.reply, b"ok")

    async def _receive_chunk(self, transfer_id: str, headers: dict[str, str], data: bytes) -> None:
        try:
            seq, total = int(headers[H_SEQ]), int(headers[H_TOTAL])
            sha, path = headers[H_SHA], headers[H_PATH]
        except (KeyError, ValueError) as exc:
            raise _Refused("protocol", f"missing or invalid transfer header ({exc})") from None
        if not transfer_id or not 0 <= seq < total:
            raise _Refused("protocol", f"chunk {seq} of {total} for transfer {transfer_id!r}")
        incoming = self._incoming.get(transfer_id)
        if incoming is None:
            if seq != 0:
                raise _Refused("sequence", f"chunk {seq} of an unknown or expired transfer")
            incoming = await self._start(transfer_id, path, total, sha)
        elif seq != incoming.next_seq:
            raise _Refused("sequence", f"chunk {seq} arrived, chunk {incoming.next_seq} expected")
        elif (total, sha, path) != (incoming.total, incoming.sha256, incoming.path):
            raise _Refused("protocol", "chunk headers changed in the middle of the transfer")
        incoming.last_seen = trio.current_time()
        incoming.size += len(data)
        cap = self.files.policy.files.max_bytes
        if incoming.size > cap:
            # _deny audits the refusal the way a local write over the cap is audited.
            denial = self.files._deny("write file", path, f"files.max_bytes = {cap}")
            raise _Refused("size", f"{denial} (received {incoming.size} bytes so far)")
        incoming.hasher.update(data)
        try:
            await trio.to_thread.run_sync(_append, incoming.staging, data)
        except OSError as exc:
            raise _Refused("io", f"cannot stage chunk {seq}: {exc}") from None
        incoming.next_seq += 1
        if incoming.next_seq == incoming.total:
            await self._finish(transfer_id, incoming)

    async def _start(self, transfer_id: str, path: str, total: int, sha: str) -> _Incoming:
        try:
            real = self.files.resolve(path, write=True)
        except PolicyDenied as exc:
            raise _Refused("policy", str(exc)) from None
        if self.files.policy.files.max_bytes == 0:
            denial = self.files._deny("write file", path, "files.max_bytes = 0 (no file content)")
            raise _Refused("size", str(denial))
        try:
            fd, staging = tempfile.mkstemp(
                dir=real.parent, prefix=f".{real.name}.", suffix=".transfer"
            )
        except OSError as exc:
            raise _Refused("io", f"cannot stage {path!r}: {exc}") from None
        os.close(fd)
        incoming = _Incoming(path, real, staging, total, sha, trio.current_time())
        self._incoming[transfer_id] = incoming
        return incoming

    async def _finish(self, transfer_id: str, incoming: _Incoming) -> None:
        try:
            got = incoming.hasher.hexdigest()
            if got != incoming.sha256:
                raise _Refused("checksum", f"received SHA-256 {got}, sender said {incoming.sha256}")
            content = await trio.to_thread.run_sync(Path(incoming.staging).read_bytes)
            try:
                await self.files.awrite(incoming.path, content)
            except PolicyDenied as exc:
                kind = "size" if exc.rule.startswith("files.max_bytes") else "policy"
                raise _Refused(kind, str(exc)) from None
            except OSError as exc:
                raise _Refused("io", f"cannot write {incoming.path!r}: {exc}") from None
        finally:
            self._drop(transfer_id)
