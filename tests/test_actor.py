"""Actors on one node, on virtual time: delivery, supervision, deadlines, backpressure, drain."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
import trio.testing
from agentrt import (
    AgentId,
    AgentUnavailable,
    DeadlineExceeded,
    HandlerFailed,
    NodeConfig,
    NoHandler,
    Overloaded,
    UnexpectedReply,
    open_node,
)
from agentrt._actor import current_trace_id
from agentrt.testing import InMemoryTransport

from .helpers import Boom, Echo, Forward, Ping, Pong, Slow, Unhandled

ECHO = AgentId("Echo", "k")


@pytest.fixture(autouse=True)
def _reset_echo() -> Iterator[None]:
    Echo.starts = Echo.stops = Echo.concurrent = Echo.max_concurrent = 0
    yield


def cfg(name: str = "a", **kw: object) -> NodeConfig:
    return NodeConfig(cluster="unit", name=name, **kw)  # type: ignore[arg-type]


async def test_local_send_returns_typed_reply_without_touching_the_bus(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = InMemoryTransport()
    async with open_node(cfg(), [Echo], bus=bus) as node:
        pong = await node.send(ECHO, Ping(n=7), expect=Pong)
    assert (pong.n, pong.node, pong.key, pong.count) == (7, "a", "k", 1)
    assert bus.published == 0


async def test_send_across_nodes_goes_over_the_transport(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = InMemoryTransport()
    async with open_node(cfg("a"), [Echo], bus=bus), open_node(cfg("b"), [], bus=bus) as b:
        first = await b.send(ECHO, Ping(n=1), expect=Pong)
        second = await b.send(ECHO, Ping(n=2), expect=Pong)
    assert (first.node, first.count, second.count) == ("a", 1, 2)
    assert bus.published == 4  # two requests, two replies


async def test_unexpected_reply_type_is_a_typed_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_node(cfg(), [Echo], bus=InMemoryTransport()) as node:
        with pytest.raises(UnexpectedReply, match="answered Pong, not the expected Ping"):
            await node.send(ECHO, Ping(), expect=Ping)


async def test_handler_exception_reaches_caller_and_actor_restarts_after_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_node(cfg(), [Echo], bus=InMemoryTransport()) as node:
        assert (await node.send(ECHO, Ping(), expect=Pong)).count == 1
        with pytest.raises(HandlerFailed) as info:
            await node.send(ECHO, Boom(reason="bad input"))
        assert info.value.remote_type == "ValueError"
        assert info.value.agent_id == "Echo/k"
        assert str(info.value) == "ValueError in Echo/k: bad input"
        t0 = trio.current_time()
        pong = await node.send(ECHO, Ping(), expect=Pong)
        assert trio.current_time() - t0 == pytest.approx(0.5)  # Echo.restart.backoff_s
        assert pong.count == 1  # a fresh instance: on_start ran again
        stats = node.status().agents[0]
    assert (stats.failed, stats.restarts, stats.handled) == (1, 1, 2)
    assert Echo.starts == 2


async def test_actor_exceeding_restart_budget_is_stopped_then_recovers_after_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_node(cfg(), [Echo], bus=InMemoryTransport()) as node:
        t0 = trio.current_time()
        for _ in range(4):  # max_restarts = 3: the 4th crash in the window stops the actor
            with pytest.raises(HandlerFailed):
                await node.send(ECHO, Boom())
        assert trio.current_time() - t0 == pytest.approx(0.5 + 1.0 + 2.0)  # doubling backoff
        with pytest.raises(AgentUnavailable, match=r"Echo/k was stopped after failing 3 times"):
            await node.send(ECHO, Ping())
        # Other keys are independent actors and unaffected.
        assert (await node.send(AgentId("Echo", "other"), Ping(), expect=Pong)).count == 1
        await trio.sleep(61)
        assert (await node.send(ECHO, Ping(), expect=Pong)).count == 1
        assert node.status().agents[0].stopped == 1


async def test_messages_queued_behind_a_crash_are_still_handled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: list[object] = []
    async with open_node(cfg(), [Echo], bus=InMemoryTransport()) as node:

        async def call(msg: Ping | Boom) -> None:
            try:
                results.append(await node.send(ECHO, msg))
            except HandlerFailed as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, Boom())
            await trio.testing.wait_all_tasks_blocked()
            for n in range(3):
                nursery.start_soon(call, Ping(n=n))
                await trio.testing.wait_all_tasks_blocked()
    assert isinstance(results[0], HandlerFailed)
    assert [(r.n, r.count) for r in results[1:]] == [(0, 1), (1, 2), (2, 3)]  # type: ignore[union-attr]


async def test_default_deadline_bounds_a_call_to_a_stuck_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_node(cfg(default_deadline_s=30.0), [Echo], bus=InMemoryTransport()) as node:
        t0 = trio.current_time()
        with pytest.raises(DeadlineExceeded) as info:
            await node.send(ECHO, Slow(seconds=1000))
        assert trio.current_time() - t0 == pytest.approx(30.0)
        assert isinstance(info.value, TimeoutError)
        assert str(info.value).startswith("no reply from Echo/k within 30s (waited 30s)")
        # The handler was cancelled at the same deadline, so the actor is free again.
        assert (await node.send(ECHO, Ping(), expect=Pong)).count == 1


async def test_deadline_travels_to_the_remote_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = InMemoryTransport()
    async with open_node(cfg("a"), [Echo], bus=bus) as a, open_node(cfg("b"), [], bus=bus) as b:
        # Either the caller's scope or the remote's deadline reply ends the call first.
        with pytest.raises((DeadlineExceeded, trio.TooSlowError)), trio.fail_after(2):
            await b.send(ECHO, Slow(seconds=1000))
        # The remote actor stopped at the caller's deadline instead of running for 1000 s.
        assert (await b.send(ECHO, Ping(), expect=Pong)).count == 1
        assert trio.current_time() < 10
        assert a.status().agents[0].deadline_exceeded == 1


async def test_no_handler_names_what_the_agent_handles(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = InMemoryTransport()
    async with open_node(cfg("a"), [Echo], bus=bus), open_node(cfg("b"), [], bus=bus) as b:
        with pytest.raises(NoHandler) as info:
            await b.send(ECHO, Unhandled())
    assert "Echo has no handler for 'test.unhandled'" in str(info.value)
    assert "test.boom, test.forward, test.ping, test.slow" in str(info.value)


async def test_one_message_at_a_time_per_actor_and_keys_in_parallel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counts: dict[str, list[int]] = {"a": [], "b": []}
    async with open_node(cfg(), [Echo], bus=InMemoryTransport()) as node:

        async def call(key: str) -> None:
            counts[key].append((await node.send(AgentId("Echo", key), Ping(), expect=Pong)).count)

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(call, "a")
                nursery.start_soon(call, "b")
    assert sorted(counts["a"]) == list(range(1, 11)) == sorted(counts["b"])
    assert Echo.max_concurrent == 2  # never two messages of one actor at once; two actors did


async def test_full_mailbox_refuses_bus_messages_with_overloaded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = InMemoryTransport()
    outcomes: list[str] = []
    async with open_node(cfg("a"), [Echo], bus=bus), open_node(cfg("b"), [], bus=bus) as b:

        async def call() -> None:
            try:
                await b.send(ECHO, Slow(seconds=1))
                outcomes.append("ok")
            except Overloaded as exc:
                assert "mailbox of Echo/k is full (8 messages)" in str(exc)
                outcomes.append("overloaded")

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(call)
    # All 20 arrive before the actor takes the first: the 8 that fit the mailbox are served,
    # the rest are refused with a typed error; none is lost silently.
    assert outcomes.count("ok") == 8
    assert outcomes.count("overloaded") == 12


async def test_local_senders_wait_for_mailbox_space_instead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_node(cfg(), [Echo], bus=InMemoryTransport()) as node:
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(node.send, ECHO, Slow(seconds=1))
        assert trio.current_time() == pytest.approx(20.0)
        assert node.status().agents[0].handled == 20


async def test_idle_actor_is_deactivated_and_reactivated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_node(cfg(idle_timeout_s=5.0), [Echo], bus=InMemoryTransport()) as node:
        assert (await node.send(ECHO, Ping(), expect=Pong)).count == 1
        await trio.sleep(4.9)
        assert Echo.stops == 0  # not idle long enough yet
        await trio.sleep(5 * 0.25 + 0.01)
        assert Echo.stops == 1
        assert node.status().agents[0].active == 0
        assert (await node.send(ECHO, Ping(), expect=Pong)).count == 1
        assert node.status().agents[0].activations == 2


async def test_drain_finishes_queued_messages_then_refuses_new_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    replies: list[Pong] = []
    async with open_node(cfg(), [Echo], bus=InMemoryTransport()) as node:

        async def call() -> None:
            replies.append(await node.send(ECHO, Slow(seconds=1), expect=Pong))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            node.stop()
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(AgentUnavailable, match="draining"):
                await node.send(AgentId("Echo", "new"), Ping())
    assert len(replies) == 5
    assert Echo.stops == 1


async def test_trace_id_follows_the_call_chain(autojump_clock: trio.testing.MockClock) -> None:
    bus = InMemoryTransport()
    async with open_node(cfg("a"), [Echo], bus=bus), open_node(cfg("b"), [], bus=bus) as b:
        token = current_trace_id.set("4bf92f3577b34da6a3ce929d0e0e4736")
        try:
            pong = await b.send(ECHO, Forward(to="Echo/other", n=3), expect=Pong)
        finally:
            current_trace_id.reset(token)
    assert (pong.key, pong.n, pong.trace_id) == ("other", 3, "4bf92f3577b34da6a3ce929d0e0e4736")
