"""Nodes on a real nats-server: typed request/reply, affinity, pub/sub, bad input, limits."""

from __future__ import annotations

from collections.abc import Iterator

import agentrt
import msgspec
import pytest
import trio
from agentrt import (
    AgentId,
    AgentUnavailable,
    DeadlineExceeded,
    HandlerFailed,
    NodeConfig,
    PayloadTooLarge,
    open_client,
    open_node,
)
from agentrt._connect import open_bus
from agentrt._envelope import (
    Envelope,
    ErrorCode,
    Kind,
    decode_envelope,
    decode_error,
    encode,
)
from agentrt._node import partition_of

from .helpers import Boom, Echo, Ping, Pong, Slow


def ncfg(url: str, cluster: str, name: str, **kw: object) -> NodeConfig:
    return NodeConfig(cluster=cluster, name=name, servers=(url,), **kw)  # type: ignore[arg-type]


class Note(agentrt.Message, tag="natstest.note"):
    n: int


class _Log:
    records: list[tuple[str, str, str, int]] = []
    expected = 0
    done: trio.Event | None = None

    @classmethod
    def add(cls, record: tuple[str, str, str, int]) -> None:
        cls.records.append(record)
        if len(cls.records) >= cls.expected and cls.done is not None:
            cls.done.set()


class NewsA(agentrt.Agent):
    topics = ("news.tech",)

    async def on_note(self, msg: Note) -> None:
        _Log.add(("NewsA", self.node_name, self.id.key, msg.n))


class NewsB(agentrt.Agent):
    topics = ("news.tech",)

    async def on_note(self, msg: Note) -> None:
        _Log.add(("NewsB", self.node_name, self.id.key, msg.n))


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    _Log.records, _Log.expected, _Log.done = [], 0, None
    yield


async def test_typed_request_reply_across_nodes_keeps_each_key_on_one_replica(
    nats_url: str, cluster_name: str
) -> None:
    parts = {"Echo": 2}
    async with (
        open_node(ncfg(nats_url, cluster_name, "a", partitions=parts, owned={"Echo": 0}), [Echo]),
        open_node(ncfg(nats_url, cluster_name, "b", partitions=parts, owned={"Echo": 1}), [Echo]),
        open_client(ncfg(nats_url, cluster_name, "c", partitions=parts)) as client,
    ):
        keys = [f"user{i}" for i in range(16)]
        owners = {k: "ab"[partition_of(k, 2)] for k in keys}
        assert set(owners.values()) == {"a", "b"}  # the keys really spread over both
        with trio.fail_after(20):
            for round_ in (1, 2, 3):
                for key in keys:
                    pong = await client.send(AgentId("Echo", key), Ping(n=round_), expect=Pong)
                    assert (pong.node, pong.key, pong.n) == (owners[key], key, round_)
                    assert pong.count == round_  # the same actor, with its state, every time


async def test_node_sends_to_a_key_owned_by_another_node_over_the_bus(
    nats_url: str, cluster_name: str
) -> None:
    parts = {"Echo": 2}
    key = next(f"k{i}" for i in range(100) if partition_of(f"k{i}", 2) == 1)
    a_cfg = ncfg(nats_url, cluster_name, "a", partitions=parts, owned={"Echo": 0})
    b_cfg = ncfg(nats_url, cluster_name, "b", partitions=parts, owned={"Echo": 1})
    async with open_node(a_cfg, [Echo]) as a, open_node(b_cfg, [Echo]):
        with trio.fail_after(10):
            pong = await a.send(AgentId("Echo", key), Ping(), expect=Pong)
    assert pong.node == "b"


async def test_publish_reaches_every_subscribed_type_once_on_the_key_owner(
    nats_url: str, cluster_name: str
) -> None:
    parts = {"NewsA": 2, "NewsB": 1}
    _Log.expected, _Log.done = 40, trio.Event()
    async with (
        open_node(ncfg(nats_url, cluster_name, "a", partitions=parts, owned={"NewsA": 0}), [NewsA]),
        open_node(ncfg(nats_url, cluster_name, "b", partitions=parts, owned={"NewsA": 1}),
                  [NewsA, NewsB]),
        open_client(ncfg(nats_url, cluster_name, "c", partitions=parts)) as client,
    ):  # fmt: skip
        for n in range(10):
            for key in ("k1", "k2"):
                await client.publish("news.tech", Note(n=n), key=key)
        with trio.fail_after(10):
            await _Log.done.wait()
    assert len(_Log.records) == 40
    for key in ("k1", "k2"):
        owner = "ab"[partition_of(key, 2)]
        a_notes = [r for r in _Log.records if r[0] == "NewsA" and r[2] == key]
        assert {r[1] for r in a_notes} == {owner}
        assert sorted(r[3] for r in a_notes) == list(range(10))
        b_notes = [r[3] for r in _Log.records if r[0] == "NewsB" and r[2] == key]
        assert b_notes == list(range(10))  # one subscriber, one connection: order kept


async def test_handler_exception_over_nats_is_a_typed_remote_error(
    nats_url: str, cluster_name: str
) -> None:
    async with (
        open_node(ncfg(nats_url, cluster_name, "a"), [Echo]),
        open_client(ncfg(nats_url, cluster_name, "c")) as client,
    ):
        with trio.fail_after(10), pytest.raises(HandlerFailed) as info:
            await client.send(AgentId("Echo", "x"), Boom(reason="disk full"))
    assert (info.value.remote_type, info.value.agent_id) == ("ValueError", "Echo/x")
    assert str(info.value) == "ValueError in Echo/x: disk full"


async def test_malformed_bytes_on_an_agent_subject_never_crash_the_node(
    nats_url: str, cluster_name: str
) -> None:
    async with (
        open_node(ncfg(nats_url, cluster_name, "a"), [Echo]) as node,
        open_client(ncfg(nats_url, cluster_name, "c")) as client,
        open_bus(nats_url) as raw,
    ):
        subject = node.agent_subject(AgentId("Echo", "k"))
        with trio.fail_after(10):
            raw.publish_nowait(subject, b"\x00\xffgarbage")  # no reply subject: logged, counted
            reply = await raw.request(subject, b"not msgpack at all")
            err = decode_error(decode_envelope(reply.data))
            assert err.code is ErrorCode.MALFORMED
            assert "are not an agentrt envelope" in err.message

            unknown = Envelope(id="1", kind=Kind.REQUEST, type="nope.nothing", sender="t",
                               recipient="Echo/k", payload=b"")  # fmt: skip
            err = decode_error(decode_envelope((await raw.request(subject, encode(unknown))).data))
            assert err.code is ErrorCode.UNKNOWN_TYPE
            assert "node a has no message type 'nope.nothing'" in err.message

            bad_payload = msgspec.msgpack.encode({"type": "test.ping", "n": "one"})
            wrong = Envelope(id="2", kind=Kind.REQUEST, type="test.ping", sender="t",
                             recipient="Echo/k", payload=bad_payload)  # fmt: skip
            err = decode_error(decode_envelope((await raw.request(subject, encode(wrong))).data))
            assert err.code is ErrorCode.MALFORMED
            assert "Expected `int`, got `str` - at `$.n`" in err.message

            # The node is still serving, and it counted all four.
            assert (await client.send(AgentId("Echo", "k"), Ping(n=1), expect=Pong)).n == 1
            assert node.status().malformed == 4


async def test_oversized_message_is_refused_before_sending(
    nats_url: str, cluster_name: str
) -> None:
    async with (
        open_node(ncfg(nats_url, cluster_name, "a"), [Echo]),
        open_client(ncfg(nats_url, cluster_name, "c")) as client,
    ):
        with trio.fail_after(10), pytest.raises(PayloadTooLarge) as info:
            await client.send(AgentId("Echo", "k"), Ping(text="x" * (1024 * 1024)))
    assert info.value.limit == 1024 * 1024
    assert info.value.size > info.value.limit
    assert f"message for Echo/k is {info.value.size} bytes, over the 1048576-byte limit" in str(
        info.value
    )


async def test_unknown_agent_type_fails_fast_with_the_fix(nats_url: str, cluster_name: str) -> None:
    async with open_client(ncfg(nats_url, cluster_name, "c")) as client:
        with trio.fail_after(5), pytest.raises(AgentUnavailable) as info:
            await client.send(AgentId("Nobody", "x"), Ping())
    assert str(info.value).startswith(
        f"no node of cluster '{cluster_name}' serves agent type 'Nobody'; check the agents "
        "listed under [[nodes]] in agentrt.toml"
    )


async def test_slow_remote_handler_gives_deadline_exceeded_not_a_hang(
    nats_url: str, cluster_name: str
) -> None:
    async with (
        open_node(ncfg(nats_url, cluster_name, "a"), [Echo]),
        open_client(ncfg(nats_url, cluster_name, "c", default_deadline_s=0.3)) as client,
    ):
        with trio.fail_after(10), pytest.raises(DeadlineExceeded) as info:
            await client.send(AgentId("Echo", "k"), Slow(seconds=60))
    assert info.value.recipient == "Echo/k"
    assert info.value.deadline_s == pytest.approx(0.3, abs=0.05)


async def test_many_concurrent_requests_all_answered(nats_url: str, cluster_name: str) -> None:
    got: list[int] = []
    async with (
        open_node(ncfg(nats_url, cluster_name, "a"), [Echo]),
        open_client(ncfg(nats_url, cluster_name, "c")) as client,
    ):

        async def call(i: int) -> None:
            # 5 per key at most: within the mailbox (8), so none is refused as Overloaded
            pong = await client.send(AgentId("Echo", f"k{i % 100}"), Ping(n=i), expect=Pong)
            got.append(pong.n)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(500):
                    nursery.start_soon(call, i)
    assert sorted(got) == list(range(500))
