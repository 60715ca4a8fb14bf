"""The bus interface (``Transport``, ``Subscription``), and nats-py on an asyncio loop in its
own thread, seen from trio (``open_thread_bus``).

The default transport is the trio-native client (``_trionats.py``, faster: no thread
crossings); this bridge remains for what that client does not speak (TLS, and later
JetStream), and as the measured baseline in ``bench/bus.py``.

nats-py is asyncio-only and agentrt is trio. Measured options (``docs/benchmarks.md`` and the
shared notes): trio-asyncio is ~25x too slow in throughput, guest mode caps near 25% of raw, and
an asyncio loop in a dedicated thread is the best bridge *if every crossing is batched*. So:

* trio -> asyncio: operations go into a deque; one ``call_soon_threadsafe`` wakes the pump only
  when no wake-up is pending. Publishes are fire-and-forget into that deque, never awaited
  across threads.
* asyncio -> trio: deliveries and replies go into another deque; one ``run_sync_soon`` drains
  it only when no drain is pending.
* Requests use one wildcard inbox subscription; a waiting trio task is rescheduled directly
  when its reply lands (no per-request future, no nats-py ``request()``, which can swallow
  cancellation on Python 3.11).
* Each subscription feeds a bounded trio channel; when it is full the message is handed to the
  subscriber's overflow callback (which can answer "overloaded") instead of blocking the loop.

This module is also the one seam where nats-py errors become ``BusError``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import outcome
import trio

from ._errors import AgentUnavailable, BusError, PayloadTooLarge

__all__ = [
    "InboundMsg",
    "MessageHandler",
    "NatsBus",
    "OverflowHandler",
    "ReplyWaiters",
    "Subscription",
    "Transport",
    "open_thread_bus",
]

# Python hands the GIL between threads every 5 ms by default; a bridge that crosses threads
# twice per message would wait for that. 0.5 ms measured best (shared notes).
log = logging.getLogger("agentrt.bus")

_SWITCH_INTERVAL_S = 0.0005
_CONTROL_TIMEOUT_S = 10.0
_OUTBOUND_HIGH_WATER = 20_000
_NO_RESPONDERS = "503"


class InboundMsg:
    """One message delivered by the bus (subject, reply subject, bytes, headers)."""

    __slots__ = ("data", "headers", "reply", "subject")

    def __init__(
        self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None
    ) -> None:
        self.subject, self.reply, self.data, self.headers = subject, reply, data, headers

    def __repr__(self) -> str:
        return f"InboundMsg({self.subject!r}, reply={self.reply!r}, {len(self.data)} bytes)"


OverflowHandler = Callable[[InboundMsg], None]
MessageHandler = Callable[[InboundMsg], None]


class ReplyWaiters:
    """Requests waiting for their reply on a bus's one wildcard inbox, by request id.

    Both buses use it: a request publishes with reply subject ``<inbox>.<id>`` and parks; the
    reader that sees the reply reschedules the task directly (no future, no channel).

    Deadlines are enforced here, by one sweeper task per bus (``expire_forever``), instead of a
    cancel scope per request: entering and leaving a scope was a fifth of a client's CPU per
    request. The sweeper sleeps until the nearest deadline among the waiting requests; since
    default deadlines only grow, a new request rarely moves that wake-up.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._tasks: dict[int, tuple[trio.lowlevel.Task, float, str]] = {}
        self._next = math.inf
        self._sleeper: trio.CancelScope | None = None

    def new_id(self) -> int:
        return next(self._ids)

    async def wait(self, req_id: int, subject: str, deadline: float = math.inf) -> InboundMsg:
        """Park until ``deliver(req_id, ...)``, the caller's cancel scope, or ``deadline``.

        Raises:
            AgentUnavailable: the reply is NATS's "no responders" status for ``subject``.
            trio.TooSlowError: ``deadline`` (trio time) passed first.
        """
        self._tasks[req_id] = (trio.lowlevel.current_task(), deadline, subject)
        if deadline < self._next:
            self._next = deadline
            if self._sleeper is not None:
                self._sleeper.deadline = deadline

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._tasks.pop(req_id, None)
            return trio.lowlevel.Abort.SUCCEEDED

        msg: InboundMsg = await trio.lowlevel.wait_task_rescheduled(abort)
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS and not msg.data:
            raise AgentUnavailable(f"no subscriber on {subject}", recipient=subject)
        return msg

    def deliver(self, req_id: int, msg: InboundMsg) -> None:
        """Wake the request waiting for ``req_id`` (a late reply to an abandoned one is dropped)."""
        waiting = self._tasks.pop(req_id, None)
        if waiting is not None:
            trio.lowlevel.reschedule(waiting[0], outcome.Value(msg))

    def fail_all(self, error: BaseException) -> None:
        for task, _, _ in self._tasks.values():
            trio.lowlevel.reschedule(task, outcome.Error(error))
        self._tasks.clear()

    def fail_subject(self, subject: str, error: BaseException) -> None:
        """Fail the requests sent to ``subject`` (the server refused to deliver them)."""
        for req_id, (task, _, sent_to) in list(self._tasks.items()):
            if sent_to == subject:
                del self._tasks[req_id]
                trio.lowlevel.reschedule(task, outcome.Error(error))

    async def expire_forever(self) -> None:
        """Fail requests whose deadline passed with ``trio.TooSlowError``; runs until cancelled."""
        while True:
            now = trio.current_time()
            nearest = math.inf
            for req_id, (task, deadline, _) in list(self._tasks.items()):
                if deadline <= now:
                    del self._tasks[req_id]
                    trio.lowlevel.reschedule(task, outcome.Error(trio.TooSlowError()))
                elif deadline < nearest:
                    nearest = deadline
            self._next = nearest
            with trio.CancelScope(deadline=nearest) as self._sleeper:
                await trio.sleep_forever()
            self._sleeper = None


class _SubscriptionOwner(Protocol):
    async def _unsubscribe(self, sub: Subscription) -> None: ...


class Subscription:
    """Messages on one subject (optionally in a queue group), as a bounded async iterator.

    Iterate with ``async for msg in sub``. The iteration ends when the subscription is
    unsubscribed or the bus closes.
    """

    def __init__(
        self, bus: _SubscriptionOwner, sid: int, subject: str, queue: str, capacity: int,
        on_overflow: OverflowHandler | None, handler: MessageHandler | None = None,
    ) -> None:  # fmt: skip
        self.subject, self.queue, self._bus, self._sid = subject, queue, bus, sid
        self._send, self._recv = trio.open_memory_channel[InboundMsg](capacity)
        self._on_overflow = on_overflow
        self._handler = handler
        self.delivered = 0
        self.overflowed = 0

    def _deliver(self, msg: InboundMsg) -> None:
        # Runs in the bus's reader (or a run_sync_soon batch): must never raise.
        if self._handler is not None:
            self.delivered += 1
            try:
                self._handler(msg)
            except Exception:  # a bug in the handler must not take the connection down
                log.exception("message handler for %s failed on %r", self.subject, msg)
            return
        try:
            self._send.send_nowait(msg)
            self.delivered += 1
        except trio.WouldBlock:
            self.overflowed += 1
            if self._on_overflow is not None:
                try:
                    self._on_overflow(msg)
                except Exception as exc:  # a raising callback would crash trio.run
                    log.error("overflow handler for %s failed: %r", self.subject, exc)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def __aiter__(self) -> AsyncIterator[InboundMsg]:
        return self._recv.__aiter__()

    async def receive(self) -> InboundMsg:
        """Wait for the next message.

        Raises:
            trio.EndOfChannel: the subscription was closed.
        """
        return await self._recv.receive()

    async def unsubscribe(self) -> None:
        """Stop receiving; messages already queued can still be read, then iteration ends."""
        await self._bus._unsubscribe(self)


class Transport(Protocol):
    """What nodes need from a message bus; ``NatsBus`` is the real one."""

    max_payload: int

    def publish_nowait(
        self, subject: str, data: bytes, *, reply: str = "", headers: dict[str, str] | None = None
    ) -> None: ...

    async def request(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None,
        deadline: float = math.inf,
    ) -> InboundMsg: ...  # fmt: skip

    async def subscribe(
        self, subject: str, *, queue: str = "", capacity: int = 1024,
        on_overflow: OverflowHandler | None = None, handler: MessageHandler | None = None,
    ) -> Subscription: ...  # fmt: skip

    async def flush(self) -> None: ...

    async def wait_reconnected(self) -> None: ...


_Op = tuple[Any, ...]


class NatsBus:
    """A NATS connection owned by a trio program. Create it with ``open_thread_bus()``."""

    def __init__(self, trio_token: trio.lowlevel.TrioToken) -> None:
        self._token = trio_token
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Any = None
        self.max_payload = 1024 * 1024
        # trio -> asyncio
        self._out: collections.deque[_Op] = collections.deque()
        self._out_wake_pending = False
        self._pump_event: asyncio.Event | None = None
        self._out_drained: trio.Event | None = None
        # asyncio -> trio
        self._in: collections.deque[_Op] = collections.deque()
        self._in_drain_pending = False
        # correlation
        self._inbox = f"_INBOX.{os.urandom(8).hex()}"
        self._req_ids = itertools.count(1)
        self._replies = ReplyWaiters()
        self._calls: dict[int, trio.lowlevel.Task] = {}
        self._subs: dict[int, Subscription] = {}
        self._sids = itertools.count(1)
        self._broken: BusError | None = None
        self._closing = False
        self._reconnected = trio.Event()

    # ---------------------------------------------------------------- trio -> asyncio

    def _push_out(self, op: _Op) -> None:
        self._out.append(op)
        if not self._out_wake_pending and self._loop is not None:
            self._out_wake_pending = True
            assert self._pump_event is not None
            try:
                self._loop.call_soon_threadsafe(self._pump_event.set)
            except RuntimeError as exc:  # loop closed under us
                raise BusError("the NATS connection is closed") from exc

    def publish_nowait(
        self, subject: str, data: bytes, *, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        """Queue a publish; it is sent with the next batch. Never blocks.

        Raises:
            PayloadTooLarge: ``data`` exceeds the server's ``max_payload``.
            BusError: the connection is closed or broken.
        """
        if self._broken is not None:
            raise self._broken
        if len(data) > self.max_payload:
            raise PayloadTooLarge(subject, len(data), self.max_payload)
        self._push_out(("pub", subject, reply, data, headers))

    async def publish(
        self, subject: str, data: bytes, *, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        """Publish, waiting only if the outbound queue is above its high-water mark."""
        self.publish_nowait(subject, data, reply=reply, headers=headers)
        if len(self._out) > _OUTBOUND_HIGH_WATER:
            if self._out_drained is None:
                self._out_drained = trio.Event()
            await self._out_drained.wait()
        else:
            await trio.lowlevel.checkpoint()

    async def request(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None,
        deadline: float = math.inf,
    ) -> InboundMsg:  # fmt: skip
        """Publish and wait for one reply, until ``deadline`` (trio time) or the caller's scope.

        Raises:
            AgentUnavailable: the server reports no subscriber on ``subject``.
            PayloadTooLarge: ``data`` exceeds the server's ``max_payload``.
            BusError: the connection is closed or broke while waiting.
            trio.TooSlowError: ``deadline`` passed.
        """
        req_id = self._replies.new_id()
        self.publish_nowait(subject, data, reply=f"{self._inbox}.{req_id}", headers=headers)
        return await self._replies.wait(req_id, subject, deadline)

    async def subscribe(
        self, subject: str, *, queue: str = "", capacity: int = 1024,
        on_overflow: OverflowHandler | None = None, handler: MessageHandler | None = None,
    ) -> Subscription:  # fmt: skip
        """Subscribe; returns once the server has registered the interest.

        Args:
            subject: NATS subject, wildcards allowed.
            queue: queue group: each message goes to one member of the group.
            capacity: messages buffered before ``on_overflow`` is called instead.
            on_overflow: called (synchronously, must not raise) with each message that did not
                fit; the default drops it and counts it in ``Subscription.overflowed``.
            handler: if given, called synchronously with each message instead of queueing
                it (no channel, no task hop); it must not block. Iteration then yields nothing.
        """
        sid = next(self._sids)
        sub = Subscription(self, sid, subject, queue, capacity, on_overflow, handler)
        self._subs[sid] = sub
        try:
            await self._call(self._a_subscribe, sid, subject, queue)
        except BaseException:
            self._subs.pop(sid, None)
            raise
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.pop(sub._sid, None) is None:
            return
        try:
            if self._broken is None:
                await self._call(self._a_unsubscribe, sub._sid)
        finally:
            sub._send.close()

    async def flush(self) -> None:
        """Wait until the server has processed everything published so far."""
        await self._call(self._a_flush)

    async def wait_reconnected(self) -> None:
        """Return after nats-py's next reconnection (see ``TrioNatsBus.wait_reconnected``)."""
        await self._reconnected.wait()

    async def _call(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """Run a control coroutine on the asyncio side and wait for its result.

        Control calls are bounded on the asyncio side and cannot be abandoned half-way, so
        the trio side never cancels them: the state on both sides stays the same.
        """
        if self._broken is not None:
            raise self._broken
        call_id = next(self._req_ids)
        self._calls[call_id] = trio.lowlevel.current_task()
        self._push_out(("call", call_id, fn, args))
        # The asyncio side reschedules us with the call's outcome: value or raised error.
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    # ---------------------------------------------------------------- asyncio -> trio

    def _push_in(self, op: _Op) -> None:
        # Runs on the asyncio thread.
        self._in.append(op)
        if not self._in_drain_pending:
            self._in_drain_pending = True
            with contextlib.suppress(trio.RunFinishedError):  # trio is gone: nobody to tell
                self._token.run_sync_soon(self._drain_in)

    def _drain_in(self) -> None:
        # Runs on the trio thread, inside run_sync_soon: must never raise.
        self._in_drain_pending = False
        pop = self._in.popleft
        while self._in:
            op = pop()
            kind = op[0]
            if kind == "msg":
                sub = self._subs.get(op[1])
                if sub is not None:
                    sub._deliver(op[2])
            elif kind == "reply":
                self._replies.deliver(op[1], op[2])
            elif kind == "result":
                task = self._calls.pop(op[1], None)
                if task is not None:
                    trio.lowlevel.reschedule(task, op[2])
            elif kind == "drained":
                if self._out_drained is not None:
                    self._out_drained.set()
                    self._out_drained = None
            elif kind == "broken":
                self._break(op[1])
            elif kind == "reconnected":
                event, self._reconnected = self._reconnected, trio.Event()
                event.set()

    def _break(self, error: BusError) -> None:
        if self._broken is not None:
            return
        self._broken = error
        self._replies.fail_all(error)
        for task in self._calls.values():
            trio.lowlevel.reschedule(task, outcome.Error(error))
        self._calls.clear()
        for sub in self._subs.values():
            sub._send.close()
        self._subs.clear()
        if self._out_drained is not None:
            self._out_drained.set()

    # ---------------------------------------------------------------- asyncio side

    async def _a_main(self, servers: Sequence[str], options: dict[str, Any], ready: int) -> None:
        import nats.aio.client
        import nats.errors

        self._loop = asyncio.get_running_loop()
        self._pump_event = asyncio.Event()
        connected = False
        last_error: list[Exception] = []

        async def on_closed() -> None:
            if connected and not self._closing:
                self._push_in(
                    ("broken", BusError(f"the NATS connection to {', '.join(servers)} closed"))
                )

        nc = nats.aio.client.Client()
        connect_timeout = options.pop("overall_timeout")

        async def on_error(exc: Exception) -> None:
            # Reconnects are nats-py's job; errors are reported on stderr once connected.
            # Anything fatal ends in on_closed, which breaks the bus.
            if connected:
                # Disconnects are routine (nats-py reconnects); a fatal loss ends in on_closed.
                quiet = self._closing or isinstance(exc, (OSError, nats.errors.UnexpectedEOF))
                log.log(logging.INFO if quiet else logging.WARNING, "NATS: %r", exc)
                return
            if not last_error or "Authorization" not in str(last_error[0]):
                last_error[:] = [exc]  # keep the most telling error: auth beats a reset

        async def on_reconnected() -> None:
            self._push_in(("reconnected",))

        connecting = asyncio.ensure_future(
            nc.connect(
                servers=list(servers),
                closed_cb=on_closed,
                error_cb=on_error,
                reconnected_cb=on_reconnected,
                allow_reconnect=True,
                **options,
            )
        )

        try:
            # The first connect tries each server a few times and then fails (nats-py would
            # retry forever with unlimited reconnects, and cancelling it mid-handshake can be
            # swallowed); only once connected are reconnects made unlimited.
            await asyncio.wait_for(connecting, connect_timeout)
            nc.options["max_reconnect_attempts"] = -1
            connected = True
            self._nc = nc
            self.max_payload = int(nc.max_payload)
            await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        except (Exception, asyncio.CancelledError) as exc:
            cause = last_error[0] if last_error else exc
            with contextlib.suppress(Exception):
                await nc.close()
            if "Authorization" in str(cause):
                hint = "the server refused the credentials: check the NATS user and password"
            else:
                hint = "is the server running and are the credentials right?"
            err = BusError(f"cannot connect to NATS at {', '.join(servers)} ({cause}); {hint}")
            err.__cause__ = cause
            self._push_in(("result", ready, outcome.Error(err)))
            return
        self._push_in(("result", ready, outcome.Value(None)))
        pump = asyncio.ensure_future(self._a_pump())
        try:
            await pump
        finally:
            pump.cancel()

    async def _on_reply(self, msg: Any) -> None:
        req_id = int(msg.subject.rpartition(".")[2])
        self._push_in(("reply", req_id, InboundMsg(msg.subject, msg.reply, msg.data, msg.headers)))

    def _sub_callback(self, sid: int) -> Callable[[Any], Coroutine[Any, Any, None]]:
        push = self._push_in

        async def cb(msg: Any) -> None:
            push(("msg", sid, InboundMsg(msg.subject, msg.reply, msg.data, msg.headers)))

        return cb

    async def _a_pump(self) -> None:
        assert self._pump_event is not None
        event, out, nc = self._pump_event, self._out, self._nc
        while True:
            await event.wait()
            event.clear()
            self._out_wake_pending = False
            had_backlog = len(out) > _OUTBOUND_HIGH_WATER
            while out:
                op = out.popleft()
                if op[0] == "pub":
                    try:
                        await nc.publish(op[1], op[3], reply=op[2], headers=op[4])
                    except Exception as exc:
                        log.error("publish to %s failed: %r", op[1], exc)
                elif op[0] == "call":
                    task = asyncio.ensure_future(self._a_call(op[1], op[2], op[3]))
                    self._a_tasks.add(task)
                    task.add_done_callback(self._a_tasks.discard)
                elif op[0] == "stop":
                    # Awaited, not spawned: asyncio.run() cancels leftover tasks on return.
                    await self._a_call(op[1], op[2], op[3])
                    return
            if had_backlog:
                self._push_in(("drained",))

    async def _a_call(
        self, call_id: int, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]
    ) -> None:
        try:
            value = await asyncio.wait_for(fn(*args), _CONTROL_TIMEOUT_S)
            result: outcome.Outcome[Any] = outcome.Value(value)
        except Exception as exc:
            err = BusError(f"NATS operation {fn.__name__.lstrip('_a')} failed: {exc!r}")
            err.__cause__ = exc
            result = outcome.Error(err)
        self._push_in(("result", call_id, result))

    async def _a_subscribe(self, sid: int, subject: str, queue: str) -> None:
        sub = await self._nc.subscribe(
            subject, queue=queue, cb=self._sub_callback(sid), pending_msgs_limit=0,
            pending_bytes_limit=0,
        )  # fmt: skip
        self._nats_subs[sid] = sub
        await self._nc.flush()

    async def _a_unsubscribe(self, sid: int) -> None:
        sub = self._nats_subs.pop(sid, None)
        if sub is not None:
            await sub.unsubscribe()

    async def _a_flush(self) -> None:
        await self._nc.flush()

    async def _a_close(self) -> None:
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            # Closing anyway; a failed flush has nothing left to save.
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            await self._nc.close()

    _nats_subs: dict[int, Any]
    _a_tasks: set[asyncio.Future[None]]

    def _run_thread(self, servers: Sequence[str], options: dict[str, Any], ready: int) -> None:
        self._nats_subs = {}
        self._a_tasks = set()
        try:
            asyncio.run(self._a_main(servers, options, ready))
        except BaseException as exc:  # the thread must always report back to trio
            err = BusError(f"the NATS thread died: {exc!r}")
            err.__cause__ = exc
            self._push_in(("broken", err))


@asynccontextmanager
async def open_thread_bus(
    servers: str | Sequence[str],
    *,
    name: str = "agentrt",
    user: str | None = None,
    password: str | None = None,
    connect_timeout: float = 5.0,
) -> AsyncIterator[NatsBus]:
    """Connect to NATS; the connection and its thread live exactly as long as the block.

    Raises:
        BusError: the server cannot be reached within ``connect_timeout`` or refuses the
            credentials; the message names the servers.
    """
    if isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    if sys.getswitchinterval() > _SWITCH_INTERVAL_S:
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
    bus = NatsBus(trio.lowlevel.current_trio_token())
    options: dict[str, Any] = {
        "name": name,
        "connect_timeout": min(connect_timeout, 2.0),
        "overall_timeout": connect_timeout * 3,
        "max_reconnect_attempts": 2,  # for the first connect; unlimited once connected
        "reconnect_time_wait": 0.5,
    }
    if user is not None:
        options["user"], options["password"] = user, password
    ready = next(bus._req_ids)
    bus._calls[ready] = trio.lowlevel.current_task()
    thread = threading.Thread(
        target=bus._run_thread, args=(servers, options, ready), name="agentrt-nats", daemon=True
    )
    thread.start()
    connected = False
    try:
        with trio.CancelScope(shield=True):  # bounded by the connect timeout
            await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        connected = True
        async with trio.open_nursery() as sweeper:
            sweeper.start_soon(bus._replies.expire_forever)
            try:
                yield bus
            finally:
                sweeper.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if connected and bus._broken is None:
                try:
                    call_id = next(bus._req_ids)
                    bus._calls[call_id] = trio.lowlevel.current_task()
                    bus._push_out(("stop", call_id, bus._a_close, ()))

                    def abort(_: Any) -> trio.lowlevel.Abort:
                        bus._calls.pop(call_id, None)  # a late result must not wake us again
                        return trio.lowlevel.Abort.SUCCEEDED

                    with trio.move_on_after(_CONTROL_TIMEOUT_S):
                        await trio.lowlevel.wait_task_rescheduled(abort)
                except BusError:
                    pass
            bus._break(BusError("the NATS connection is closed"))
            with trio.move_on_after(_CONTROL_TIMEOUT_S):
                await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
