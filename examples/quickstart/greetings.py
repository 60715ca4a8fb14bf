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
    initials: str = ""  # from the `initials` tool, called through the schema gate


@agentrt.tool(pure=True)
def initials(names: list[str], separator: str = ".") -> str:
    """Initials of the given names, e.g. ["Ada", "Grace"] -> "A.G"."""
    return separator.join(n[:1].upper() for n in names if n)


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
        # Tools are called by name through the gate: validated here and on the node running it.
        letters = await self.call_tool("initials", {"names": msg.names})
        return Report(greetings=greetings, total_greeted=self.total, initials=letters)


async def demo(client: agentrt.Node) -> dict[str, object]:
    """The scripted job: one request to the coordinator, which fans out to the greeters; then a
    tool call written the way small models write them (fenced, single quotes, a scalar where a
    list belongs), which the gate repairs before it is sent."""
    names = ["Ada", "Grace", "Linus", "Ada"]
    report = await client.send(AgentId("Coordinator"), GreetAll(names=names), expect=Report)
    sloppy = "Sure! ```json\n{'names': 'Linus', 'separator': '-',}\n```"
    repaired = await client.call_tool("initials", sloppy)
    return {"report": report, "sloppy_tool_call": sloppy, "repaired_result": repaired}
