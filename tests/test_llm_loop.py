"""The LLM agent's tool loop: gate feedback, loop detection, escalation, step limit.

The model side is a scripted ``ChatSession`` (our own protocol, the scheduler's ``ModelSession``
shape) so each test states exactly what the model says at each step; the node, its gate, its
tools and its policy are real, on a real nats-server. End-to-end runs through the scheduler and
real backends against HTTP doubles are in ``test_llm_agent.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import agentrt
import msgspec
import pytest
import trio
from agentrt import AgentId, NodeConfig, Outcome, StepLimitExceeded, open_node, tool
from agentrt._errors import HandlerFailed, MalformedModelOutput
from agentrt.agents import LlmAgent, LlmReply, LlmTask
from agentrt.agents._llm import offered_tools, run_tool_loop
from agentrt.models import ChatMessage, ChatResponse, ToolCall, ToolDef, Usage
from agentrt.sandbox import load_policy

Step = ChatMessage | MalformedModelOutput


class ScriptedSession:
    """Answers each chat with the next scripted step of the current tier."""

    def __init__(self, tiers: dict[str, list[Step]], order: Sequence[str] = ("small", "large")):
        self.actor = "test"
        self.order = list(order)
        self.tier = self.order[0]
        self.tiers = tiers
        self.seen: list[list[ChatMessage]] = []
        self.offered: list[tuple[ToolDef, ...]] = []
        self.escalations: list[str] = []

    @property
    def model(self) -> str:
        return f"double:{self.tier}-model"

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolDef] = (),
        tool_choice: str = "auto",
        response_schema: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> ChatResponse:
        await trio.lowlevel.checkpoint()
        self.seen.append(list(messages))
        self.offered.append(tuple(tools))
        step = self.tiers[self.tier].pop(0)
        if isinstance(step, MalformedModelOutput):
            raise step
        return ChatResponse(message=step, stop_reason="stop", usage=Usage(), model=self.model)

    def escalate(self, reason: str) -> bool:
        i = self.order.index(self.tier)
        if i + 1 == len(self.order):
            return False
        self.escalations.append(reason)
        self.tier = self.order[i + 1]
        return True


def call(name: str, arguments: str, id: str = "c1") -> ChatMessage:
    return ChatMessage(
        role="assistant", tool_calls=(ToolCall(id=id, name=name, arguments=arguments),)
    )


def text(content: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=content)


runs: list[dict[str, Any]] = []


@tool(name="weather.get")
async def weather(city: str, days: int = 1) -> dict[str, Any]:
    """Current weather of a city."""
    runs.append({"city": city, "days": days})
    return {"city": city, "temp_c": 21}


@tool(name="weather.fail")
async def weather_fail(city: str) -> str:
    raise RuntimeError(f"no station near {city}")


@tool(name="admin.wipe")
async def wipe() -> str:
    runs.append({"wiped": True})
    return "wiped"


@pytest.fixture(autouse=True)
def _clear_runs() -> None:
    runs.clear()


def config(nats_url: str, cluster: str) -> NodeConfig:
    return NodeConfig(cluster=cluster, name="llm", servers=(nats_url,))


TOOLS = [weather, weather_fail, wipe]


async def test_a_valid_call_runs_once_and_its_result_goes_back_to_the_model(
    nats_url: str, cluster_name: str
) -> None:
    session = ScriptedSession(
        {"small": [call("weather__get", '{"city": "Oslo"}'), text("It is 21 C in Oslo.")]}
    )
    async with open_node(config(nats_url, cluster_name), tools=TOOLS) as node:
        messages = [ChatMessage(role="user", content="Weather in Oslo?")]
        reply = await run_tool_loop(
            node, session, messages, tools=offered_tools(node, ["weather.*"]), sender="a/1"
        )
        counts = node.gate.metrics
        assert counts.get("double:small-model", "weather.get", Outcome.VALID) == 1
    assert reply == LlmReply(
        text="It is 21 C in Oslo.", steps=2, tool_calls=1, failed_calls=0, escalations=0,
        model="double:small-model", tier="small",
    )  # fmt: skip
    assert runs == [{"city": "Oslo", "days": 1}]
    # The model saw the tool under a provider-safe name, with its full schema, and the result.
    offered = {d.name: d for d in session.offered[0]}
    assert set(offered) == {"weather__get", "weather__fail"}  # admin.wipe does not match
    assert offered["weather__get"].parameters["required"] == ["city"]
    assert offered["weather__get"].description == "Current weather of a city."
    result = session.seen[1][-1]
    assert (result.role, result.tool_call_id, result.name) == ("tool", "c1", "weather__get")
    assert msgspec.json.decode(result.content) == {"city": "Oslo", "temp_c": 21}


async def test_an_invalid_call_is_never_run_and_the_precise_error_is_fed_back(
    nats_url: str, cluster_name: str
) -> None:
    session = ScriptedSession(
        {
            "small": [
                call("weather__get", '{"town": "Oslo"}'),
                call("weather__get", '{"city": "Oslo", "days": "2"}', id="c2"),
                text("done"),
            ]
        }
    )
    async with open_node(config(nats_url, cluster_name), tools=TOOLS) as node:
        reply = await run_tool_loop(
            node, session, [ChatMessage(role="user", content="go")],
            tools=offered_tools(node, ["weather.*"]), sender="a/1",
        )  # fmt: skip
        m = node.gate.metrics
        assert m.get("double:small-model", "weather.get", Outcome.RETRIED) == 1
        assert m.get("double:small-model", "weather.get", Outcome.REPAIRED) == 1
    assert runs == [{"city": "Oslo", "days": 2}]  # only the repaired call ran
    assert (reply.failed_calls, reply.tool_calls, reply.escalations) == (1, 1, 0)
    feedback = session.seen[1][-1]
    assert feedback.role == "tool" and feedback.content == (
        "error: weather.get input invalid:\n/town: additionalProperties: want no extra "
        "properties, got \"Oslo\"\n/city: required: want property 'city', got missing\n"
        "Fix the arguments and call again."
    )


async def test_the_same_failing_call_twice_escalates_at_once(
    nats_url: str, cluster_name: str
) -> None:
    bad = '{"town": "Oslo"}'
    session = ScriptedSession(
        {
            "small": [call("weather__get", bad), call("weather__get", bad, id="c2")],
            "large": [call("weather__get", '{"city": "Oslo"}', id="c3"), text("21 C")],
        }
    )
    async with open_node(config(nats_url, cluster_name), tools=TOOLS) as node:
        reply = await run_tool_loop(
            node, session, [ChatMessage(role="user", content="go")],
            tools=offered_tools(node, ["weather.*"]), sender="a/1", escalate_after=5,
        )  # fmt: skip
        m = node.gate.metrics
        assert m.get("double:small-model", "weather.get", Outcome.RETRIED) == 1
        assert m.get("double:small-model", "weather.get", Outcome.ESCALATED) == 1
        assert m.get("double:large-model", "weather.get", Outcome.VALID) == 1
    assert (reply.text, reply.escalations, reply.failed_calls, reply.tool_calls) == (
        "21 C", 1, 2, 1,
    )  # fmt: skip
    assert (reply.model, reply.tier) == ("double:large-model", "large")
    assert session.escalations == [
        "repeated the same failing call: weather.get input invalid:\n/town: "
        'additionalProperties: want no extra properties, got "Oslo"\n/city: required: want '
        "property 'city', got missing"
    ]
    assert runs == [{"city": "Oslo", "days": 1}]


async def test_failures_in_a_row_escalate_and_at_the_top_the_step_limit_stops_the_loop(
    nats_url: str, cluster_name: str
) -> None:
    small = [call("weather__get", f'{{"town": "{c}"}}', id=c) for c in "ab"]
    large = [call("weather__get", f'{{"n": {i}}}', id=f"l{i}") for i in range(4)]
    session = ScriptedSession({"small": small, "large": large})
    async with open_node(config(nats_url, cluster_name), tools=TOOLS) as node:
        with pytest.raises(StepLimitExceeded) as info:
            await run_tool_loop(
                node, session, [ChatMessage(role="user", content="go")],
                tools=offered_tools(node, ["weather.*"]), sender="a/1", max_steps=6,
            )  # fmt: skip
    assert session.escalations[0].startswith("failed calls in a row: ")
    assert str(info.value) == (
        "a/1: no final answer after 6 model steps (last model double:large-model); last "
        "problem: weather.get input invalid:\n/n: additionalProperties: want no extra "
        "properties, got 3\n/city: required: want property 'city', got missing; raise the "
        "agent's max_steps, give it fewer tools, or move it to a larger tier"
    )
    assert runs == []


async def test_a_tool_call_written_as_text_is_fed_back_not_fatal(
    nats_url: str, cluster_name: str
) -> None:
    leaked = MalformedModelOutput(
        "double", "small-model", "the tool call was written as text",
        raw='{"name": "weather__get", "arguments": {"city": "Oslo"}}',
    )  # fmt: skip
    session = ScriptedSession(
        {"small": [leaked, call("weather__get", '{"city":"Oslo"}'), text("ok")]}
    )
    async with open_node(config(nats_url, cluster_name), tools=TOOLS) as node:
        reply = await run_tool_loop(
            node, session, [ChatMessage(role="user", content="go")],
            tools=offered_tools(node, ["weather.*"]), sender="a/1",
        )  # fmt: skip
    assert (reply.text, reply.failed_calls, reply.tool_calls) == ("ok", 1, 1)
    feedback = session.seen[1][-1]
    assert feedback == ChatMessage(
        role="user",
        content="Your last reply could not be used: the tool call was written as text. Call "
        "tools through the tool-call interface, or answer in plain text.",
    )


async def test_tool_errors_and_unknown_tools_go_back_to_the_model(
    nats_url: str, cluster_name: str
) -> None:
    session = ScriptedSession(
        {
            "small": [
                call("weather__fail", '{"city": "Oslo"}'),
                call("admin__wipe", "{}", id="c2"),
                text("sorry"),
            ]
        }
    )
    async with open_node(config(nats_url, cluster_name), tools=TOOLS) as node:
        reply = await run_tool_loop(
            node, session, [ChatMessage(role="user", content="go")],
            tools=offered_tools(node, ["weather.*"]), sender="a/1", escalate_after=5,
        )  # fmt: skip
    assert (reply.text, reply.failed_calls) == ("sorry", 2)
    failed_tool = session.seen[1][-1].content
    assert failed_tool.startswith("error: the tool failed: ")
    assert "no station near Oslo" in failed_tool
    assert session.seen[2][-1].content == (
        "error: there is no tool 'admin__wipe'; the tools are: weather__fail, weather__get"
    )
    assert runs == []


async def test_the_policy_limits_what_the_model_is_offered(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    policy_file = tmp_path / "p.toml"
    policy_file.write_text('[tools]\nallow = ["weather.get"]\n')
    policy = load_policy(policy_file)
    cfg = config(nats_url, cluster_name)
    async with open_node(cfg, tools=TOOLS, policy=policy) as node:
        offered = offered_tools(node, ["*"])
    assert list(offered) == ["weather__get"]


def test_wire_names_are_provider_safe_and_unique() -> None:
    from agentrt.agents._llm import _wire_name

    assert _wire_name("mcp.git.git_status", set()) == "mcp__git__git_status"
    long = "x." * 40 + "y"
    wire = _wire_name(long, set())
    assert len(wire) == 64 and wire.startswith("x__x__")
    taken = {"a__b"}
    assert _wire_name("a.b", taken) != "a__b"


class Helper(LlmAgent):
    agent_type = "helper"
    tools = ("weather.*",)
    system_prompt = "You are terse."


class FakeScheduler:
    def __init__(self, session: ScriptedSession) -> None:
        self._session = session
        self.asked: list[tuple[str, str]] = []

    def session(self, actor: str, agent_type: str) -> ScriptedSession:
        self.asked.append((actor, agent_type))
        return self._session


async def test_an_llm_agent_answers_a_task_over_the_bus(nats_url: str, cluster_name: str) -> None:
    session = ScriptedSession({"small": [call("weather__get", '{"city":"Oslo"}'), text("21 C")]})
    cfg = config(nats_url, cluster_name)
    async with open_node(cfg, [Helper], tools=TOOLS) as node:
        node.scheduler = FakeScheduler(session)  # type: ignore[attr-defined]
        with trio.fail_after(10):
            reply = await node.send(
                AgentId("helper", "k"), LlmTask(prompt="Oslo?"), expect=LlmReply
            )
    assert (reply.text, reply.tool_calls) == ("21 C", 1)
    assert session.seen[0][:2] == [
        ChatMessage(role="system", content="You are terse."),
        ChatMessage(role="user", content="Oslo?"),
    ]


async def test_an_llm_agent_without_models_says_how_to_configure_them(
    nats_url: str, cluster_name: str
) -> None:
    async with open_node(config(nats_url, cluster_name), [Helper], tools=TOOLS) as node:
        with trio.fail_after(10), pytest.raises(HandlerFailed) as info:
            await node.send(AgentId("helper", "k"), LlmTask(prompt="Oslo?"), expect=LlmReply)
    assert "helper/k: node llm has no model scheduler; add a [models] section" in str(info.value)


assert agentrt  # the package is imported for its side effects on message registration


async def test_fill_tool_call_runs_the_gate_ladder_and_escalates_through_the_session(
    nats_url: str, cluster_name: str
) -> None:
    from agentrt.agents._llm import fill_tool_call

    session = ScriptedSession(
        {
            # retries = 2 (the default Fallback): three invalid proposals, then escalation
            "small": [text("city is Oslo"), call("weather__get", "{}"), call("weather__get", "[]")],
            # the large model writes the call as fenced text: the gate repairs it
            "large": [text('```json\n{"city": "Oslo", "days": "3"}\n```')],
        }
    )
    prompt = [ChatMessage(role="user", content="Weather in Oslo for 3 days")]
    async with open_node(config(nats_url, cluster_name), tools=TOOLS) as node:
        result = await fill_tool_call(node, session, "weather.get", prompt, sender="a/1")
        m = node.gate.metrics
        assert m.get("double:small-model", "weather.get", Outcome.RETRIED) == 2
        assert m.get("double:small-model", "weather.get", Outcome.ESCALATED) == 1
        assert m.get("double:large-model", "weather.get", Outcome.REPAIRED) == 1
    assert (result.value, result.model, result.attempts) == (
        {"city": "Oslo", "temp_c": 21}, "double:large-model", 4,
    )  # fmt: skip
    assert runs == [{"city": "Oslo", "days": 3}]
    assert session.escalations == [
        "gate failures on weather.get: weather.get input invalid:\n/: type: want object, got []"
    ]
    # The forced tool choice and the fed-back error, as the model saw them.
    retry = session.seen[1]
    assert retry[-1].content.startswith("weather.get parse invalid:\n/: json: want a JSON object")
    assert retry[-1].content.endswith("\nCall weather__get again.")


async def test_call_checked_tool_revalidates_a_hand_built_checked_and_never_runs_it(
    nats_url: str, cluster_name: str
) -> None:
    from agentrt._errors import GateError
    from agentrt._gate import Checked

    async with open_node(config(nats_url, cluster_name), tools=TOOLS) as node:
        with pytest.raises(GateError) as info:
            await node.call_checked_tool("weather.get", Checked({"town": "Oslo"}), model="m")
        assert node.gate.metrics.get("m", "weather.get", Outcome.REJECTED) == 1
        checked = node.gate.check_call("weather.get", '{"city": "Oslo", "days": "2"}')
        assert await node.call_checked_tool("weather.get", checked, model="m") == {
            "city": "Oslo", "temp_c": 21,
        }  # fmt: skip
        assert node.gate.metrics.get("m", "weather.get", Outcome.REPAIRED) == 1
    assert info.value.render_compact() == (
        "weather.get input invalid:\n/town: additionalProperties: want no extra properties, "
        "got \"Oslo\"\n/city: required: want property 'city', got missing"
    )
    assert runs == [{"city": "Oslo", "days": 2}]
