"""Actors of one agent type on one node: activation, mailboxes, one message at a time, restarts.

Actors are virtual: the first message for a key activates one; an actor idle for
``idle_timeout_s`` is deactivated. A handler that raises answers its caller with
``HandlerFailed``; the actor is then restarted (fresh instance, ``on_start`` again) after a
backoff, keeping the messages already queued in its mailbox, so nothing accepted is lost.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import math
from typing import TYPE_CHECKING, Protocol

import msgspec
import trio

from ._agent import Agent
from ._control import AgentStats
from ._envelope import ErrorCode, ErrorInfo
from ._errors import AgentUnavailable, Overloaded
from ._ids import AgentId

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["ActorHost", "Delivery", "Responder", "current_trace_id"]

log = logging.getLogger("agentrt.actor")

_STREAK = 16

current_trace_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "agentrt_trace_id", default=""
)


class Responder(Protocol):
    """Where the outcome of one request goes: back over the bus or to a local waiter."""

    def ok(self, value: msgspec.Struct | None) -> None: ...

    def err(self, info: ErrorInfo) -> None: ...


class Delivery:
    """One message in a mailbox, with what is needed to answer it."""

    __slots__ = ("deadline", "envelope_id", "msg", "responder", "sender", "tag", "trace_id")

    def __init__(
        self, msg: msgspec.Struct, tag: str, *, sender: str, deadline: float = math.inf,
        trace_id: str = "", envelope_id: str = "", responder: Responder | None = None,
    ) -> None:  # fmt: skip
        self.msg, self.tag, self.sender, self.deadline = msg, tag, sender, deadline
        self.trace_id, self.envelope_id, self.responder = trace_id, envelope_id, responder

    def fail(
        self, code: ErrorCode, message: str, *, remote_type: str = "", agent: str = ""
    ) -> None:
        if self.responder is not None:
            self.responder.err(
                ErrorInfo(code=code, message=message, remote_type=remote_type, agent_id=agent)
            )


class _Cell:
    __slots__ = ("busy", "id", "last_active", "recv", "send")

    def __init__(self, agent_id: AgentId, capacity: int) -> None:
        self.id = agent_id
        self.send, self.recv = trio.open_memory_channel[Delivery](capacity)
        self.busy = False
        self.last_active = trio.current_time()


class ActorHost:
    """All actors of one agent type on one node; their tasks live in the node's nursery."""

    def __init__(
        self, cls: type[Agent], node: Node, nursery: trio.Nursery, partition: int = 0
    ) -> None:
        self.cls, self._node, self._nursery, self.partition = cls, node, nursery, partition
        self.type = cls.agent_type
        self.stats = AgentStats(type=self.type)
        self._cells: dict[str, _Cell] = {}
        self._stopped_until: dict[str, float] = {}
        self._running = 0
        self._all_done = trio.Event()
        self._all_done.set()
        self._closed = False

    # -------------------------------------------------------------- delivery

    def _cell(self, key: str) -> _Cell:
        cell = self._cells.get(key)
        if cell is not None:
            return cell
        if self._closed:
            raise AgentUnavailable(
                f"node {self._node.name} is draining; {self.type}/{key} takes no new messages",
                recipient=f"{self.type}/{key}",
            )
        until = self._stopped_until.get(key)
        if until is not None:
            if trio.current_time() < until:
                raise AgentUnavailable(
                    f"{self.type}/{key} was stopped after failing "
                    f"{self.cls.restart.max_restarts} times in {self.cls.restart.window_s}s; "
                    f"it accepts messages again in {until - trio.current_time():.1f}s. "
                    "See the node log for the handler's errors",
                    recipient=f"{self.type}/{key}",
                )
            del self._stopped_until[key]
        cell = _Cell(AgentId(self.type, key), self.cls.mailbox_size)
        self._cells[key] = cell
        self.stats.activations += 1
        self.stats.active += 1
        self._running += 1
        if self._all_done.is_set():
            self._all_done = trio.Event()
        self._nursery.start_soon(self._run, cell, name=f"actor {cell.id}")
        return cell

    def deliver_nowait(self, key: str, delivery: Delivery) -> None:
        """Queue a message for ``key``, activating the actor if needed.

        Raises:
            Overloaded: the actor's mailbox is full.
            AgentUnavailable: the node is draining or the actor is stopped.
        """
        cell = self._cell(key)
        try:
            cell.send.send_nowait(delivery)
        except trio.WouldBlock:
            self.stats.overloaded += 1
            raise Overloaded(
                f"mailbox of {cell.id} is full ({self.cls.mailbox_size} messages); "
                "retry later, add replicas, or raise mailbox_size",
                recipient=str(cell.id),
            ) from None
        self.stats.received += 1

    async def deliver(self, key: str, delivery: Delivery) -> None:
        """Queue a message for ``key``, waiting for mailbox space (in-process backpressure)."""
        cell = self._cell(key)
        try:
            try:
                # Fast path: hand the message over without a scheduling round; the caller
                # parks on its reply right after, which is the only switch needed.
                cell.send.send_nowait(delivery)
            except trio.WouldBlock:
                await cell.send.send(delivery)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise AgentUnavailable(
                f"{cell.id} stopped before taking the message", recipient=str(cell.id)
            ) from None
        self.stats.received += 1

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Refuse new messages; actors finish what is queued, then stop."""
        self._closed = True
        for cell in self._cells.values():
            cell.send.close()

    async def wait_stopped(self) -> None:
        await self._all_done.wait()

    async def _run(self, cell: _Cell) -> None:
        policy = self.cls.restart
        crashes: collections.deque[float] = collections.deque()
        backoff = policy.backoff_s
        try:
            while True:
                agent = self.cls()
                agent.id, agent._node = cell.id, self._node
                crashed = False
                try:
                    await agent.on_start()
                except Exception:
                    log.exception("%s: on_start failed", cell.id)
                    crashed = True
                if not crashed:
                    crashed = await self._serve(agent, cell)
                await self._stop_instance(agent)
                if not crashed:
                    return
                now = trio.current_time()
                crashes.append(now)
                while crashes and crashes[0] < now - policy.window_s:
                    crashes.popleft()
                if len(crashes) > policy.max_restarts:
                    self._give_up(cell, now + policy.window_s)
                    return
                self.stats.restarts += 1
                await trio.sleep(backoff)
                backoff = min(backoff * 2, policy.max_backoff_s)
        finally:
            if self._cells.get(cell.id.key) is cell:
                del self._cells[cell.id.key]
            self.stats.active -= 1
            self._running -= 1
            if self._running == 0:
                self._all_done.set()

    async def _stop_instance(self, agent: Agent) -> None:
        with trio.move_on_after(self._node.config.drain_timeout_s) as scope:
            try:
                await agent.on_stop()
            except Exception:
                log.exception("%s: on_stop failed", agent.id)
        if scope.cancelled_caught:
            log.error("%s: on_stop took longer than %ss", agent.id, scope.deadline)

    async def _serve(self, agent: Agent, cell: _Cell) -> bool:
        """Handle messages until the mailbox closes (False) or a handler raises (True)."""
        streak = 0
        current: Delivery | None = None
        while True:
            # One cancel scope for many messages, its deadline set per message: entering a
            # new scope per message cost more than the rest of the handling put together.
            with trio.CancelScope() as deadline_scope:
                while True:
                    # Queued messages are taken without a scheduling round (up to _STREAK in a
                    # row): their replies then leave in one write instead of one per message.
                    try:
                        if streak < _STREAK:
                            delivery = cell.recv.receive_nowait()
                            streak += 1
                        else:
                            streak = 0
                            delivery = await cell.recv.receive()
                    except trio.WouldBlock:
                        streak = 0
                        try:
                            delivery = await cell.recv.receive()
                        except trio.EndOfChannel:
                            return False
                    except trio.EndOfChannel:
                        return False
                    cell.busy, current = True, delivery
                    try:
                        if await self._handle(agent, delivery, deadline_scope):
                            return True
                        current = None  # answered; a Cancelled above keeps it set
                    finally:
                        cell.busy = False
                        cell.last_active = trio.current_time()
            # Only a message's deadline cancels this scope. If it passed just as the handler
            # returned, the cancellation lands on the next receive and that message was
            # already answered (current is None).
            if current is not None:
                self.stats.deadline_exceeded += 1
                current.fail(
                    ErrorCode.DEADLINE, "the handler ran past the deadline", agent=str(agent.id)
                )

    async def reap_idle(self) -> None:
        """Deactivate actors idle for ``idle_timeout_s`` (checked every quarter of it).

        One sweep per node instead of a timer per actor keeps the per-message cost at one
        timestamp. A cell is closed only when it is not handling and its mailbox is empty,
        synchronously with that check, so no message can slip in between; the next message
        for the key activates a fresh actor.
        """
        idle_s = self._node.config.idle_timeout_s
        while True:
            await trio.sleep(idle_s / 4)
            cutoff = trio.current_time() - idle_s
            for key, cell in list(self._cells.items()):
                if (
                    not cell.busy
                    and cell.last_active <= cutoff
                    and cell.recv.statistics().current_buffer_used == 0
                ):
                    del self._cells[key]
                    cell.send.close()

    async def _handle(self, agent: Agent, d: Delivery, scope: trio.CancelScope) -> bool:
        handler = self.cls.handlers.get(d.tag)
        agent_id = str(agent.id)
        if handler is None:
            self.stats.no_handler += 1
            known = ", ".join(sorted(self.cls.handlers)) or "none"
            d.fail(
                ErrorCode.NO_HANDLER,
                f"{self.type} has no handler for {d.tag!r} (it handles: {known})",
                agent=agent_id,
            )
            return False
        if trio.current_time() >= d.deadline:
            self.stats.deadline_exceeded += 1
            d.fail(ErrorCode.DEADLINE, "deadline passed before the actor got to it", agent=agent_id)
            return False
        token = current_trace_id.set(d.trace_id)
        scope.deadline = d.deadline
        try:
            result = await handler.func(agent, d.msg)
        except Exception as exc:
            self.stats.failed += 1
            log.exception(
                "%s: handler %s failed on message %s from %s",
                agent_id, handler.name, d.envelope_id or "(local)", d.sender,
            )  # fmt: skip
            d.fail(
                ErrorCode.HANDLER_FAILED, str(exc) or repr(exc),
                remote_type=type(exc).__qualname__, agent=agent_id,
            )  # fmt: skip
            return True
        finally:
            scope.deadline = math.inf
            current_trace_id.reset(token)
        self.stats.handled += 1
        if d.responder is not None:
            d.responder.ok(result)
        return False

    def _give_up(self, cell: _Cell, until: float) -> None:
        self.stats.stopped += 1
        self._stopped_until[cell.id.key] = until
        if self._cells.get(cell.id.key) is cell:
            del self._cells[cell.id.key]
        cell.send.close()
        policy = self.cls.restart
        reason = (
            f"{cell.id} failed {policy.max_restarts + 1} times within {policy.window_s}s and "
            "was stopped; see the node log for the handler's errors"
        )
        log.error("%s", reason)
        while True:
            try:
                d = cell.recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            d.fail(ErrorCode.UNAVAILABLE, reason, agent=str(cell.id))
