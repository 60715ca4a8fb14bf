"""Agents and messages shared by the tests (module-level so tags register once)."""

from __future__ import annotations

import agentrt
import trio
from agentrt import AgentId, RestartPolicy


class Ping(agentrt.Message, tag="test.ping"):
    n: int = 0
    text: str = ""


class Pong(agentrt.Message, tag="test.pong"):
    n: int
    node: str
    key: str
    count: int = 0
    trace_id: str = ""


class Boom(agentrt.Message, tag="test.boom"):
    reason: str = "boom"


class Slow(agentrt.Message, tag="test.slow"):
    seconds: float


class Forward(agentrt.Message, tag="test.forward"):
    to: str
    n: int


class Unhandled(agentrt.Message, tag="test.unhandled"):
    pass


class Event(agentrt.Message, tag="test.event"):
    n: int


class Seen(agentrt.Message, tag="test.seen"):
    pass


class SeenReply(agentrt.Message, tag="test.seen_reply"):
    events: list[int]
    node: str


class Echo(agentrt.Agent):
    """Counts messages per actor; raises on Boom; sleeps on Slow."""

    restart = RestartPolicy(backoff_s=0.5, max_backoff_s=4.0, max_restarts=3, window_s=60.0)
    mailbox_size = 8
    starts = 0
    stops = 0
    concurrent = 0
    max_concurrent = 0

    async def on_start(self) -> None:
        type(self).starts += 1
        self.count = 0

    async def on_stop(self) -> None:
        type(self).stops += 1

    async def on_ping(self, msg: Ping) -> Pong:
        cls = type(self)
        cls.concurrent += 1
        cls.max_concurrent = max(cls.max_concurrent, cls.concurrent)
        try:
            await trio.lowlevel.checkpoint()
            self.count += 1
            from agentrt._actor import current_trace_id

            return Pong(n=msg.n, node=self.node_name, key=self.id.key, count=self.count,
                        trace_id=current_trace_id.get())  # fmt: skip
        finally:
            cls.concurrent -= 1

    async def on_boom(self, msg: Boom) -> None:
        raise ValueError(msg.reason)

    async def on_slow(self, msg: Slow) -> Pong:
        await trio.sleep(msg.seconds)
        return Pong(n=0, node=self.node_name, key=self.id.key)

    async def on_forward(self, msg: Forward) -> Pong:
        return await self.send(AgentId.parse(msg.to), Ping(n=msg.n), expect=Pong)


class Listener(agentrt.Agent):
    """Records topic events per actor."""

    topics = ("news",)

    async def on_start(self) -> None:
        self.events: list[int] = []

    async def on_event(self, msg: Event) -> None:
        self.events.append(msg.n)

    async def on_seen(self, msg: Seen) -> SeenReply:
        return SeenReply(events=self.events, node=self.node_name)


class Auditor(Listener):
    """A second agent type on the same topic (same handlers, its own type name)."""
