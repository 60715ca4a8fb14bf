"""Per-backend concurrency limits with a queue that is fair between actors.

A backend may serve ``max_concurrent`` calls at once. Calls beyond that wait, and the wait is
round-robin *per actor*, not first-come-first-served over everyone: an actor with fifty calls
queued gets one slot, then every other waiting actor gets one, then it gets its next. One busy
actor therefore delays the others by at most one call each, instead of starving them.

A call can wait on several backends at once (the models of a tier live on different backends):
one ticket sits in each queue and the first backend to free a slot takes it out of all of
them. Waiting is bounded by the caller's cancel scope; a cancelled ticket leaves every queue,
and a slot granted to it in the same instant is handed on, so no slot leaks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import msgspec
import trio

__all__ = ["Capacity", "CapacityStats", "acquire_any"]


class CapacityStats(msgspec.Struct, frozen=True, kw_only=True):
    """One backend's queue, for status and tests.

    Attributes:
        backend: the backend's name.
        limit: its ``max_concurrent``.
        in_use: slots held now.
        waiting: calls queued now.
        max_in_use: the most slots ever held at once (never above ``limit``).
        waited: calls that had to queue before getting a slot.
    """

    backend: str
    limit: int
    in_use: int
    waiting: int
    max_in_use: int
    waited: int


class _Ticket:
    """One waiting call; may sit in several backends' queues at once."""

    __slots__ = ("actor", "event", "granted", "queues")

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.event = trio.Event()
        self.granted: Capacity | None = None
        self.queues: list[Capacity] = []


class Capacity:
    """Slots of one backend; ``release()`` hands a freed slot to the next actor in turn."""

    def __init__(self, backend: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"backend {backend!r}: max_concurrent must be at least 1")
        self.backend, self.limit = backend, limit
        self.in_use = 0
        self._max_in_use = 0
        self._waited = 0
        # actor -> its waiting tickets; dict order is the round-robin ring.
        self._ring: dict[str, deque[_Ticket]] = {}

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued (a newcomer never jumps the queue)."""
        if self.in_use < self.limit and not self._ring:
            self._take()
            return True
        return False

    def release(self) -> None:
        """Give back a slot: to the next actor's oldest waiting call, or to the pool."""
        while self._ring:
            actor = next(iter(self._ring))
            waiting = self._ring.pop(actor)
            ticket = waiting.popleft()
            if waiting:
                self._ring[actor] = waiting  # back of the ring: everyone else goes first
            if ticket.granted is None:
                for other in ticket.queues:
                    if other is not self:
                        other._remove(ticket)
                ticket.queues = []
                ticket.granted = self
                self._waited += 1
                ticket.event.set()
                return  # the slot changes hands; in_use is unchanged
        self.in_use -= 1

    def statistics(self) -> CapacityStats:
        waiting = sum(len(q) for q in self._ring.values())
        return CapacityStats(
            backend=self.backend, limit=self.limit, in_use=self.in_use, waiting=waiting,
            max_in_use=self._max_in_use, waited=self._waited,
        )  # fmt: skip

    def _take(self) -> None:
        self.in_use += 1
        self._max_in_use = max(self._max_in_use, self.in_use)

    def _enqueue(self, ticket: _Ticket) -> None:
        self._ring.setdefault(ticket.actor, deque()).append(ticket)
        ticket.queues.append(self)

    def _remove(self, ticket: _Ticket) -> None:
        waiting = self._ring.get(ticket.actor)
        if waiting is None:
            return
        try:
            waiting.remove(ticket)
        except ValueError:
            return
        if not waiting:
            del self._ring[ticket.actor]


async def acquire_any(capacities: Sequence[Capacity], actor: str) -> Capacity:
    """A slot on one of ``capacities``: the first in order with a free slot, else the first
    to free one (queued fairly per actor in each).

    The caller holds the slot until it calls ``release()`` on the returned ``Capacity``.
    Waiting ends only with a slot or with the caller's cancel scope: wrap the call in one.
    """
    for cap in capacities:
        if cap.try_acquire():
            return cap
    ticket = _Ticket(actor)
    for cap in capacities:
        cap._enqueue(ticket)
    try:
        await ticket.event.wait()
    except BaseException:  # cancelled: leave every queue, or pass on a slot granted meanwhile
        if ticket.granted is not None:
            ticket.granted.release()
        for cap in ticket.queues:
            cap._remove(ticket)
        ticket.queues = []
        raise
    assert ticket.granted is not None
    return ticket.granted
