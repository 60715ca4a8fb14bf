"""The LLM agent end to end: scheduler, a real backend over HTTP (the Ollama double), the gate,
tools on another node over NATS; escalation small -> large counted everywhere."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from agentrt import AgentId, NodeConfig, Outcome, open_node
from agentrt._scheduler import open_scheduler
from agentrt.agents import LlmAgent, LlmReply, LlmTask

from .models.doubles import Reply, serve_double
from .test_llm_loop import TOOLS, runs
from .test_scheduler import section


class Forecaster(LlmAgent):
    agent_type = "forecaster"
    tools = ("weather.*",)
    system_prompt = "Answer with the tool's data."


def cfg(nats_url: str, cluster: str, name: str) -> NodeConfig:
    return NodeConfig(cluster=cluster, name=name, servers=(nats_url,))


async def test_a_looping_small_model_is_escalated_and_the_large_one_finishes(
    nats_url: str, cluster_name: str
) -> None:
    runs.clear()  # shared with test_llm_loop's tools
    bad = '{"town": "Oslo"}'

    def respond(path: str, body: Any) -> Reply | None:
        has_result = any(m.get("role") == "tool" and "temp_c" in m.get("content", "")
                         for m in body["messages"])  # fmt: skip
        if body["model"] == "tiny:1b":
            return Reply.tool_call("weather__get", bad, input_tokens=50, output_tokens=5)
        if has_result:
            return Reply.text("It is 21 C in Oslo.", input_tokens=200, output_tokens=8)
        return Reply.tool_call("weather__get", '{"city": "Oslo"}', input_tokens=150,
                               output_tokens=6)  # fmt: skip

    async with serve_double("ollama", responder=respond) as double:
        models = section(
            {"local": double.url},
            {"small": ["local:tiny:1b"], "large": ["local:big:70b"]},
            prices={"local:big:70b": {"input": "2", "output": "6"}},
        )
        async with (
            open_node(cfg(nats_url, cluster_name, "tools"), tools=TOOLS),
            open_scheduler(models, agents=[Forecaster]) as scheduler,
            open_node(
                cfg(nats_url, cluster_name, "agents"), [Forecaster], scheduler=scheduler
            ) as node,
        ):
            await node.registry.wait_for("weather.get")
            with trio.fail_after(20):
                reply = await node.send(
                    AgentId("forecaster", "oslo"), LlmTask(prompt="Weather in Oslo?"),
                    expect=LlmReply,
                )  # fmt: skip
            gate = node.gate.metrics
            assert gate.get("local:tiny:1b", "weather.get", Outcome.RETRIED) == 1
            assert gate.get("local:tiny:1b", "weather.get", Outcome.ESCALATED) == 1
            assert gate.get("local:big:70b", "weather.get", Outcome.VALID) == 1
            stats = {(s.tier, s.model): s for s in node.status().models}
    assert reply == LlmReply(
        text="It is 21 C in Oslo.", steps=4, tool_calls=1, failed_calls=2, escalations=1,
        model="local:big:70b", tier="large",
    )  # fmt: skip
    assert runs == [{"city": "Oslo", "days": 1}]  # the small model's calls never ran
    small, large = stats[("small", "local:tiny:1b")], stats[("large", "local:big:70b")]
    assert (small.calls, small.escalations, small.input_tokens) == (2, 1, 100)
    assert (large.calls, large.input_tokens, large.output_tokens) == (2, 350, 14)
    assert str(large.cost) == "0.000784"  # (350 * 2 + 14 * 6) / 1e6, exact
    # What the model server received: the full schema under the provider-safe name, and the
    # gate's precise error as the tool result the small model read.
    first = double.chat_requests[0].body
    tools = {t["function"]["name"]: t for t in first["tools"]}
    assert set(tools) == {"weather__get", "weather__fail"}
    tool = tools["weather__get"]
    assert tool["function"]["parameters"]["required"] == ["city"]
    assert first["messages"][0] == {"role": "system", "content": "Answer with the tool's data."}
    second = double.chat_requests[1].body["messages"]
    assert second[-1]["role"] == "tool"
    assert second[-1]["content"].startswith("error: weather.get input invalid:\n/town: ")


async def test_a_tool_call_written_as_text_goes_back_to_the_same_model(
    nats_url: str, cluster_name: str
) -> None:
    runs.clear()
    leaked = '<tool_call>{"name": "weather__get", "arguments": {"city": "Oslo"}}</tool_call>'

    def respond(path: str, body: Any) -> Reply | None:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return Reply.text("21 C")
        if last["content"].startswith("Your last reply could not be used"):
            return Reply.tool_call("weather__get", '{"city": "Oslo"}')
        return Reply.text(leaked)

    async with serve_double("ollama", responder=respond) as double:
        models = section(
            {"local": double.url}, {"small": ["local:tiny:1b"], "large": ["local:big:70b"]}
        )
        async with (
            open_node(cfg(nats_url, cluster_name, "tools"), tools=TOOLS),
            open_scheduler(models, agents=[Forecaster]) as scheduler,
            open_node(
                cfg(nats_url, cluster_name, "agents"), [Forecaster], scheduler=scheduler
            ) as node,
        ):
            await node.registry.wait_for("weather.get")
            with trio.fail_after(20):
                reply = await node.send(
                    AgentId("forecaster", "oslo"), LlmTask(prompt="Weather in Oslo?"),
                    expect=LlmReply,
                )  # fmt: skip
            stats = {(s.tier, s.model): s for s in node.status().models}
    # The scheduler did not hide the leak by asking the large model: the small one was told.
    assert [r.body["model"] for r in double.chat_requests] == ["tiny:1b"] * 3
    assert (reply.text, reply.failed_calls, reply.tool_calls, reply.tier) == ("21 C", 1, 1, "small")
    small = stats[("small", "local:tiny:1b")]
    assert (small.calls, small.errors) == (2, {"ToolCallAsText": 1})
    feedback = double.chat_requests[1].body["messages"]
    assert feedback[-2] == {"role": "assistant", "content": leaked}
    assert feedback[-1]["content"].startswith(
        "Your last reply could not be used: the model wrote a tool call to 'weather__get' as "
        "plain text"
    )
    assert runs == [{"city": "Oslo", "days": 1}]


async def test_a_stalled_model_gives_the_caller_deadline_exceeded_and_the_agent_recovers(
    nats_url: str, cluster_name: str
) -> None:
    from agentrt import DeadlineExceeded, open_client

    async with serve_double("ollama") as double:
        double.push(Reply.stall("headers"))
        double.default = Reply.text("back again")
        models = section({"local": double.url}, {"small": ["local:tiny:1b"]})
        client_cfg = NodeConfig(
            cluster=cluster_name, name="caller", servers=(nats_url,), default_deadline_s=0.5
        )
        async with (
            open_scheduler(models, agents=[Forecaster]) as scheduler,
            open_node(cfg(nats_url, cluster_name, "agents"), [Forecaster], scheduler=scheduler),
            open_client(client_cfg) as client,
        ):
            task = LlmTask(prompt="Weather?")
            with trio.fail_after(10), pytest.raises(DeadlineExceeded) as info:
                await client.send(AgentId("forecaster", "k"), task, expect=LlmReply)
            # The stalled HTTP exchange was cancelled with the actor's deadline, not left
            # hanging: the same actor answers the next task.
            with trio.fail_after(10):
                reply = await client.send(AgentId("forecaster", "k"), task, expect=LlmReply)
    assert info.value.recipient == "forecaster/k"
    assert str(info.value).startswith("no reply from forecaster/k within 0.5")
    assert reply.text == "back again"
