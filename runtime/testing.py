"""Test helpers: an in-memory ``Transport`` with NATS subject semantics.

Unit tests of actors, supervision and deadlines run on trio's ``autojump_clock`` with this
transport: no threads, no server, virtual time. Integration tests use a real ``nats-server``.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import trio

from ._bus import InboundMsg, MessageHandler, OverflowHandler, Subscription
from ._errors import AgentUnavailable, PayloadTooLarge

__all__ = ["InMemoryTransport", "subject_matches"]


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching: ``*`` is one token, ``>`` (last) is one or more tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


class InMemoryTransport:
    """A broker in memory: share one instance between nodes to connect them.

    Queue groups deliver each message to one member, round-robin; a request with no
    subscriber fails at once like NATS "no responders".
    """

    def __init__(self, max_payload: int = 1024 * 1024) -> None:
        self.max_payload = max_payload
        self._subs: list[Subscription] = []
        self._rr: defaultdict[tuple[str, str], itertools.count[int]] = defaultdict(itertools.count)
        self._inboxes: dict[str, trio.MemorySendChannel[InboundMsg]] = {}
        self._ids = itertools.count(1)
        self.published = 0

    def publish_nowait(
        self, subject: str, data: bytes, *, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        if len(data) > self.max_payload:
            raise PayloadTooLarge(subject, len(data), self.max_payload)
        self.published += 1
        msg = InboundMsg(subject, reply, data, headers)
        inbox = self._inboxes.pop(subject, None)
        if inbox is not None:
            inbox.send_nowait(msg)
            return
        groups: defaultdict[str, list[Subscription]] = defaultdict(list)
        for sub in self._subs:
            if subject_matches(sub.subject, subject):
                if sub.queue:
                    groups[sub.queue].append(sub)
                else:
                    sub._deliver(msg)
        for queue, members in groups.items():
            pick = next(self._rr[(subject, queue)]) % len(members)
            members[pick]._deliver(msg)

    def _has_interest(self, subject: str) -> bool:
        return any(subject_matches(s.subject, subject) for s in self._subs)

    async def request(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None,
        deadline: float = math.inf,
    ) -> InboundMsg:  # fmt: skip
        if not self._has_interest(subject):
            await trio.lowlevel.checkpoint()
            raise AgentUnavailable(f"no subscriber on {subject}", recipient=subject)
        inbox = f"_INBOX.mem.{next(self._ids)}"
        send, recv = trio.open_memory_channel[InboundMsg](1)
        self._inboxes[inbox] = send
        try:
            self.publish_nowait(subject, data, reply=inbox, headers=headers)
            with trio.move_on_at(deadline):
                return await recv.receive()
            raise trio.TooSlowError

        finally:
            self._inboxes.pop(inbox, None)

    async def subscribe(
        self, subject: str, *, queue: str = "", capacity: int = 1024,
        on_overflow: OverflowHandler | None = None, handler: MessageHandler | None = None,
    ) -> Subscription:  # fmt: skip
        sub = Subscription(self, next(self._ids), subject, queue, capacity, on_overflow, handler)
        self._subs.append(sub)
        await trio.lowlevel.checkpoint()
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        sub._send.close()
        await trio.lowlevel.checkpoint()

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_reconnected(self) -> None:
        await trio.sleep_forever()  # memory never disconnects
