"""Quickstart agents: a coordinator on one node fans work out to greeters on another.

`agentrt up examples/quickstart --demo` runs `demo()` below against the live cluster.
"""

from __future__ import annotations

import agentrt
from agentrt import AgentId


class Hello(agentrt.Message, tag="quickstart.hello"):
    name: str


class Greeting(agentrt.Message, tag="quickstart.greeting"):
    text: str
    by: str  # which node answered: shows replicas sharing the load


class GreetAll(agentrt.Message, tag="quickstart.greet_all"):
    names: list[str]


class Report(agentrt.Message, tag="quickstart.report"):
    greetings: list[Greeting]
    total_greeted: int  # across all calls to this coordinator: actor state survives calls


class Greeter(agentrt.Agent):
    """Greets one person; the actor key is the person's name."""

    async def on_start(self) -> None:
        self.times = 0

    async def on_hello(self, msg: Hello) -> Greeting:
        self.times += 1
        suffix = "" if self.times == 1 else f" (again, x{self.times})"
        return Greeting(text=f"Hello, {msg.name}!{suffix}", by=self.node_name)


class Coordinator(agentrt.Agent):
    """Asks the greeter actor of each name, in turn, and reports."""

    async def on_start(self) -> None:
        self.total = 0

    async def on_greet_all(self, msg: GreetAll) -> Report:
        greetings = [
            await self.send(AgentId("Greeter", name), Hello(name=name), expect=Greeting)
            for name in msg.names
        ]
        self.total += len(greetings)
        return Report(greetings=greetings, total_greeted=self.total)


async def demo(client: agentrt.Node) -> Report:
    """The scripted job: one request to the coordinator, which fans out to the greeters."""
    names = ["Ada", "Grace", "Linus", "Ada"]
    return await client.send(AgentId("Coordinator"), GreetAll(names=names), expect=Report)
