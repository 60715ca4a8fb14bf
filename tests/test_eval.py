"""``agentrt eval``: which tier does each task need? Pass rates, costs, recommendations."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from agentrt import ConfigError, NodeConfig, open_node
from agentrt.agents._eval import evaluate, load_eval_file
from agentrt.models import ChatMessage, ChatResponse, Usage

from .test_llm_loop import TOOLS, ScriptedSession, call, runs, text

EVAL = """
agent = "helper"
tiers = ["small", "large"]
repeats = 2

[[tasks]]
name = "weather"
prompt = "Weather in Oslo?"
tools = ["weather.*"]
expect_tool = "weather.get"
expect_args = { city = "Oslo" }

[[tasks]]
name = "greet"
prompt = "Say hello"
expect_text = "hello"
"""


def scripts(prompt: str, tier: str) -> list[ChatMessage]:
    if prompt.startswith("Weather") and tier == "small":  # the small model gets it wrong
        return [call("weather__get", '{"town": "Oslo"}'), text("no idea")]
    if prompt.startswith("Weather"):
        return [call("weather__get", '{"city": "Oslo"}'), text("21 C")]
    return [text("Hello there!")]


class PromptSession(ScriptedSession):
    """Pinned to one tier; scripted by the task's prompt; 100 in / 10 out tokens per call."""

    def __init__(self, tier: str) -> None:
        super().__init__({tier: []}, order=(tier,))

    async def chat(self, messages, **kw):  # type: ignore[no-untyped-def,override]
        if not self.seen:
            self.tiers[self.tier] = scripts(messages[0].content, self.tier)
        r = await super().chat(messages, **kw)
        return ChatResponse(
            message=r.message, stop_reason=r.stop_reason, model=r.model,
            usage=Usage(input_tokens=100, output_tokens=10),
        )  # fmt: skip


async def test_eval_recommends_the_cheapest_tier_that_passes(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    runs.clear()  # shared with test_llm_loop's tools
    path = tmp_path / "eval.toml"
    path.write_text(EVAL)
    spec = load_eval_file(path)
    asked: list[tuple[str, str]] = []

    def session_for(agent: str, tier: str) -> PromptSession:
        asked.append((agent, tier))
        return PromptSession(tier)

    prices = {"double:small-model": Decimal("0.1"), "double:large-model": Decimal("3")}

    def price(model: str, i: int, o: int) -> Decimal:
        return prices[model] * (i + o) / 1_000_000

    seen: list[tuple[str, str, int]] = []
    cfg = NodeConfig(cluster=cluster_name, name="eval", servers=(nats_url,))
    async with open_node(cfg, tools=TOOLS) as node:
        report = await evaluate(
            node, spec, session_for, price=price,
            on_result=lambda r: seen.append((r.task, r.tier, r.passed)),
        )  # fmt: skip
    assert seen == [("weather", "small", 0), ("weather", "large", 2), ("greet", "small", 2),
                    ("greet", "large", 2)]  # fmt: skip
    assert asked == [("helper", t) for t in ("small", "small", "large", "large") * 2]
    small, large = report.results[:2]
    assert (small.runs, small.failed_calls, small.steps) == (2, 2, 4)
    assert large.input_tokens == 2 * 2 * 100  # 2 repeats x 2 model calls
    assert Decimal(large.cost) == Decimal("3") * 4 * 110 / 1_000_000
    assert Decimal(report.results[2].cost) == Decimal("0.1") * 2 * 110 / 1_000_000
    assert report.task_tiers == {"weather": "large", "greet": "small"}
    assert report.agent_tiers == {"helper": "large"}
    assert runs == [{"city": "Oslo", "days": 1}] * 2  # only the large model's calls ran


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ('agent = "a"\n', "$.tasks", "no tasks: add at least one [[tasks]] entry"),
        (
            'agent = "a"\n[[tasks]]\nname = "t"\nprompt = "p"\n',
            "$.tasks[0]",
            "task 't' checks nothing: give expect_tool, expect_text or expect_regex",
        ),
        (
            '[[tasks]]\nname = "t"\nprompt = "p"\nexpect_text = "x"\n',
            "$.tasks[0].agent",
            "which agent type? set agent here or at top",
        ),
        (
            'agent = "a"\nthreshold = 1.5\n[[tasks]]\nname = "t"\nprompt = "p"\n'
            'expect_text = "x"\n',
            "$.threshold",
            "must be in (0, 1], got 1.5",
        ),
        (
            'agent = "a"\n[[tasks]]\nname = "t"\nprompt = "p"\nexpect_regex = "("\n',
            "$.tasks[0].expect_regex",
            "not a regex: missing ), unterminated subpattern at position 0",
        ),
        (
            'agent = "a"\n[[tasks]]\nname = "t"\nprompt = "p"\nexpect = "x"\n',
            "$.tasks[0]",
            "Object contains unknown field `expect`",
        ),
    ],
)
def test_eval_file_errors_name_the_key_and_the_fix(
    tmp_path: Path, body: str, key: str, problem: str
) -> None:
    path = tmp_path / "e.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_eval_file(path)
    assert (info.value.key, info.value.problem) == (key, problem)
