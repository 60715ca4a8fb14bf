"""The scheduler inside a node: ``Agent.models`` from the node's scheduler, counters in
``NodeStatus.models``, the ``agentrt status`` table and ``agentrt metrics`` lines."""

from __future__ import annotations

import io
from decimal import Decimal

import agentrt
import msgspec
import pytest
import trio
from agentrt import AgentId, ConfigError, HandlerFailed, NodeConfig, NodeStatus, open_node
from agentrt._accounting import models_table
from agentrt._cli import render_prometheus
from agentrt._scheduler import open_scheduler
from agentrt.models import ChatMessage
from agentrt.testing import InMemoryTransport
from rich.console import Console

from .models.doubles import Reply, serve_double
from .test_scheduler import section


class Question(agentrt.Message, tag="test.scheduler.question"):
    text: str


class Answer(agentrt.Message, tag="test.scheduler.answer"):
    text: str
    model: str
    tier: str


class Asker(agentrt.Agent):
    tier = "medium"

    async def on_question(self, msg: Question) -> Answer:
        reply = await self.models.chat([ChatMessage(role="user", content=msg.text)])
        if msg.text == "too hard":
            self.models.escalate("the gate failed twice")
        return Answer(text=reply.message.content, model=self.models.model, tier=self.models.tier)


def node_config(name: str = "n1") -> NodeConfig:
    return NodeConfig(cluster="sched", name=name)


async def test_an_agent_uses_its_session_and_the_node_reports_the_counts() -> None:
    async with serve_double("ollama") as d:
        d.default = Reply.text("fine", input_tokens=10, output_tokens=4)
        models = section(
            {"local": d.url},
            {"small": ["local:s"], "medium": ["local:m"], "large": ["local:l"]},
            prices={"local:m": {"input": "1", "output": "2"}},
        )
        async with (
            open_scheduler(models) as sched,
            open_node(node_config(), [Asker], bus=InMemoryTransport(), scheduler=sched) as node,
        ):
            asker = AgentId("Asker", "k1")
            with trio.fail_after(10):
                first = await node.send(asker, Question(text="too hard"), expect=Answer)
                second = await node.send(asker, Question(text="thanks"), expect=Answer)
                other = await node.send(AgentId("Asker", "k2"), Question(text="hi"), expect=Answer)
            assert (first.text, first.model, first.tier) == ("fine", "local:l", "large")
            assert (second.model, second.tier) == ("local:l", "large")  # it stuck, per actor
            assert (other.model, other.tier) == ("local:m", "medium")  # the class's tier
            status = msgspec.msgpack.decode(msgspec.msgpack.encode(node.status()), type=NodeStatus)
    rows = {(s.agent, s.tier, s.model): s for s in status.models}
    assert set(rows) == {("Asker", "medium", "local:m"), ("Asker", "large", "local:l")}
    medium = rows[("Asker", "medium", "local:m")]
    assert (medium.calls, medium.escalations, medium.input_tokens) == (2, 1, 20)
    assert medium.cost == Decimal("0.000036")  # 2 * (10 * 1 + 4 * 2) / 1e6, exact on the wire
    assert rows[("Asker", "large", "local:l")].calls == 1
    metrics = render_prometheus([status, status])  # two nodes: summed
    assert 'agentrt_model_calls_total{agent="Asker",tier="medium",model="local:m"} 4' in metrics
    assert 'agentrt_model_cost_total{agent="Asker",tier="medium",model="local:m"} 0.000072' in (
        metrics
    )
    assert 'agentrt_model_escalations_total{agent="Asker",tier="medium",model="local:m"} 2' in (
        metrics
    )
    assert (
        'agentrt_model_latency_seconds_count{agent="Asker",tier="large",model="local:l"} 2'
        in metrics
    )
    table = models_table(status.models)
    assert table is not None
    out = io.StringIO()
    Console(file=out, width=120).print(table)
    lines = out.getvalue().splitlines()
    assert lines[0].strip() == "models"
    assert lines[2].split() == ["agent", "tier", "model", "calls", "err", "fallb", "escal",
                                "tok", "in", "tok", "out", "cost", "p50", "p95"]  # fmt: skip
    assert lines[4].split()[:10] == ["Asker", "large", "local:l", "1", "0", "0", "0", "10", "4",
                                     "0"]  # fmt: skip
    assert lines[5].split()[:10] == ["Asker", "medium", "local:m", "2", "0", "0", "1", "20", "8",
                                     "0.000036"]  # fmt: skip


async def test_old_peers_status_without_models_still_decodes() -> None:
    old = {"node": "n", "pid": 1, "uptime_s": 1.0, "state": "serving", "agents": []}
    status = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=NodeStatus)
    assert status.models == []
    assert "agentrt_model_" not in render_prometheus([status])
    assert models_table(status.models) is None


async def test_models_without_a_scheduler_is_a_clear_error() -> None:
    async with open_node(node_config("bare"), [Asker], bus=InMemoryTransport()) as node:
        with trio.fail_after(10), pytest.raises(HandlerFailed) as info:
            await node.send(AgentId("Asker", "k"), Question(text="hi"))
    assert info.value.remote_type == "ConfigError"
    assert str(info.value).endswith(
        "agentrt.toml: $.models: Asker/k uses self.models, but node bare has no model "
        "scheduler; add a [models] section (backends and tiers, see docs/scheduler.md)"
    )


async def test_a_missing_api_key_variable_is_a_config_error() -> None:
    models = section({"local": "http://127.0.0.1:1"}, {"small": ["local:m"]})
    backend = msgspec.structs.replace(models.backends["local"], api_key_env="AGENTRT_TEST_KEY")
    models = msgspec.structs.replace(models, backends={"local": backend})
    with pytest.raises(ConfigError) as info:
        async with open_scheduler(models, environ={}):
            pass
    assert str(info.value) == (
        "agentrt.toml: $.models.backends.local.api_key_env: environment variable "
        "AGENTRT_TEST_KEY is not set; export it (the key of backend 'local') before starting "
        "the node"
    )
