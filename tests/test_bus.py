"""Both bus implementations against a real nats-server: the same behaviour through one API."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio
from agentrt import AgentUnavailable, BusError, PayloadTooLarge
from agentrt._bus import open_thread_bus
from agentrt._connect import bus_kind, open_bus
from agentrt._natsserver import NatsServer
from agentrt._trionats import open_trio_bus

Opener = Callable[..., AbstractAsyncContextManager[Any]]


def _trio(url: str, **kw: Any) -> AbstractAsyncContextManager[Any]:
    return open_trio_bus([url], name="t", user=kw.get("user"), password=kw.get("password"),
                         connect_timeout=kw.get("connect_timeout", 5.0))  # fmt: skip


def _thread(url: str, **kw: Any) -> AbstractAsyncContextManager[Any]:
    return open_thread_bus(url, **kw)


@pytest.fixture(params=[_trio, _thread], ids=["trio", "thread"])
def opener(request: pytest.FixtureRequest) -> Opener:
    return request.param  # type: ignore[no-any-return]


async def echo_server(
    bus: Any, subject: str, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    sub = await bus.subscribe(subject, queue="q")
    task_status.started()
    async for msg in sub:
        bus.publish_nowait(msg.reply, msg.data[::-1], headers=msg.headers)


async def test_request_reply_with_headers(opener: Opener, nats_url: str) -> None:
    async with opener(nats_url) as a, opener(nats_url) as b, trio.open_nursery() as n:
        await n.start(echo_server, b, "bus.echo")
        with trio.fail_after(10):
            reply = await a.request("bus.echo", b"abc", headers={"traceparent": "00-1-2-01"})
            many = [await a.request("bus.echo", bytes([i])) for i in range(100)]
        n.cancel_scope.cancel()
    assert reply.data == b"cba"
    assert reply.headers == {"traceparent": "00-1-2-01"}
    assert [m.data for m in many] == [bytes([i]) for i in range(100)]


async def test_no_responders_fails_fast(opener: Opener, nats_url: str) -> None:
    async with opener(nats_url) as a:
        with (
            trio.fail_after(5),
            pytest.raises(AgentUnavailable, match=r"^no subscriber on bus\.nobody$"),
        ):
            await a.request("bus.nobody", b"x")


async def test_payload_limit_is_checked_before_sending(opener: Opener, nats_url: str) -> None:
    async with opener(nats_url) as a:
        assert a.max_payload == 1024 * 1024
        with pytest.raises(PayloadTooLarge, match="over the 1048576-byte limit"):
            a.publish_nowait("bus.big", b"x" * (1024 * 1024 + 1))


async def test_overflow_goes_to_the_handler_not_into_the_loop(
    opener: Opener, nats_url: str
) -> None:
    overflowed: list[bytes] = []
    async with opener(nats_url) as a, opener(nats_url) as b:
        sub = await b.subscribe(
            "bus.flood", capacity=4, on_overflow=lambda m: overflowed.append(m.data)
        )
        for i in range(20):
            a.publish_nowait("bus.flood", str(i).encode())
        await a.flush()
        with trio.fail_after(5):
            while sub.delivered + sub.overflowed < 20:
                await b.flush()  # a round trip through the server: what was sent has arrived
        kept = [(await sub.receive()).data for _ in range(4)]
    assert kept == [b"0", b"1", b"2", b"3"]
    assert overflowed == [str(i).encode() for i in range(4, 20)]
    assert sub.overflowed == 16


async def test_handler_subscriptions_are_called_in_order(opener: Opener, nats_url: str) -> None:
    seen: list[str] = []
    async with opener(nats_url) as a, opener(nats_url) as b:
        await b.subscribe("bus.h.>", handler=lambda m: seen.append(m.subject))
        for i in range(50):
            a.publish_nowait(f"bus.h.{i}", b"")
        await a.flush()
        with trio.fail_after(5):
            while len(seen) < 50:
                await b.flush()
    assert seen == [f"bus.h.{i}" for i in range(50)]


async def test_unsubscribe_ends_iteration(opener: Opener, nats_url: str) -> None:
    async with opener(nats_url) as b:
        sub = await b.subscribe("bus.unsub")
        await sub.unsubscribe()
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            await sub.receive()


async def test_unreachable_server_is_a_clear_error(opener: Opener) -> None:
    from agentrt._natsserver import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    with trio.fail_after(30), pytest.raises(BusError) as info:
        async with opener(url, connect_timeout=1.0):
            pass
    assert f"cannot connect to NATS at {url}" in str(info.value)
    assert "is the server running" in str(info.value)


async def test_trio_client_reconnects_and_resubscribes_after_a_server_restart(
    tmp_path: Path,
) -> None:
    server = NatsServer(tmp_path / "n", name="restart", jetstream=False)
    await trio.to_thread.run_sync(server.start)
    try:
        async with _trio(server.url) as a, _trio(server.url) as b, trio.open_nursery() as n:
            await n.start(echo_server, b, "bus.again")
            with trio.fail_after(10):
                assert (await a.request("bus.again", b"12")).data == b"21"
            server.kill()
            restarted = NatsServer(
                tmp_path / "n", name="restart", port=server.port, jetstream=False
            )
            await trio.to_thread.run_sync(restarted.start)
            server = restarted
            with trio.fail_after(20):
                while True:  # until both clients are back and b's subscription is restored
                    try:
                        reply = await a.request("bus.again", b"34")
                        break
                    except AgentUnavailable:
                        await trio.sleep(0.05)
            n.cancel_scope.cancel()
    finally:
        server.stop()
    assert reply.data == b"43"


def test_bus_kind_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert bus_kind(["nats://127.0.0.1:4222"]) == "trio"
    assert bus_kind(["tls://example:4222"]) == "thread"
    monkeypatch.setenv("AGENTRT_BUS", "thread")
    assert bus_kind(["nats://127.0.0.1:4222"]) == "thread"
    monkeypatch.setenv("AGENTRT_BUS", "carrier-pigeon")
    with pytest.raises(BusError, match="AGENTRT_BUS='carrier-pigeon' is not a bus"):
        bus_kind([])


async def test_open_bus_uses_the_trio_client_by_default(nats_url: str) -> None:
    from agentrt._trionats import TrioNatsBus

    async with open_bus(nats_url) as bus:
        assert isinstance(bus, TrioNatsBus)
