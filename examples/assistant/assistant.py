"""An LLM assistant: a small model with tools, escalated to a larger one when it keeps failing.

`agentrt up examples/assistant --demo` asks it two questions. `agentrt eval eval.toml -c
examples/assistant` (with the cluster up) measures which tier each task needs.
"""

from __future__ import annotations

from typing import Literal

import agentrt
from agentrt import AgentId
from agentrt.agents import LlmAgent, LlmReply, LlmTask

_FACTORS = {("km", "mi"): 0.621371, ("mi", "km"): 1.609344, ("kg", "lb"): 2.204623,
            ("lb", "kg"): 0.453592}  # fmt: skip


@agentrt.tool(name="units.convert", pure=True)
def convert_units(value: float, source: Literal["km", "mi", "kg", "lb"],
                  target: Literal["km", "mi", "kg", "lb"]) -> float:  # fmt: skip
    """Convert a value between kilometres/miles or kilograms/pounds."""
    if source == target:
        return value
    factor = _FACTORS.get((source, target))
    if factor is None:
        raise ValueError(f"cannot convert {source} to {target}")
    return round(value * factor, 4)


class Assistant(LlmAgent):
    """Answers questions with the cluster's time and unit tools."""

    tools = ("mcp.time.*", "units.*")
    system_prompt = (
        "You are a precise assistant. Use the tools for times and unit conversions; "
        "answer in one sentence."
    )
    max_steps = 6


async def demo(client: agentrt.Node) -> dict[str, object]:
    """Two questions; each reply says which model answered and how many steps it took."""
    questions = [
        "How many miles is a 42.195 km marathon?",
        "What time is it now in Tokyo?",
    ]
    answers = {}
    for i, question in enumerate(questions):
        reply = await client.send(
            AgentId("Assistant", f"q{i}"), LlmTask(prompt=question), expect=LlmReply
        )
        answers[question] = reply
    return answers
