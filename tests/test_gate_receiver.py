"""Real MCP tool schemas on a node: generated calls run, broken ones are refused unexecuted.

The gate's promise is about the *receiving* node: whatever bytes arrive on a tool's subject,
an invalid call never runs. Instances come from hypothesis-jsonschema for the real input
schemas of ``mcp-server-time``/``git``/``fetch``; each valid instance and each mutation of it
(a required property removed, a property given a value of the wrong JSON type) is published
raw onto the tool's subject, bypassing the sender's gate.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
import trio
from agentrt import NodeConfig, ToolSpec, open_node
from agentrt._connect import open_bus
from agentrt._envelope import (
    ContentType,
    Envelope,
    ErrorCode,
    Kind,
    decode_envelope,
    decode_error,
    encode,
)
from agentrt._natsserver import NatsServer
from agentrt._tools import Tool, make_tool
from hypothesis import HealthCheck, given, settings

from . import mcp_schemas
from .test_schema import _strategy

WRONG = {"string": 12345, "integer": "12", "number": "x", "boolean": "yes", "array": {"a": 1},
         "object": [1], "null": 0}  # fmt: skip


def examples(schema: dict[str, Any], n: int) -> list[Any]:
    found: list[Any] = []

    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(_strategy(schema))
    def collect(instance: Any) -> None:
        found.append(instance)

    collect()
    return found


def mutations(schema: dict[str, Any], instance: dict[str, Any]) -> list[tuple[dict, str, str]]:
    """(broken instance, pointer, keyword) for each way of breaking it we know the answer to."""
    out: list[tuple[dict[str, Any], str, str]] = []
    for prop in schema.get("required", []):
        broken = copy.deepcopy(instance)
        broken.pop(prop, None)
        out.append((broken, f"/{prop}", "required"))
    for prop, sub in schema.get("properties", {}).items():
        kind = sub.get("type")
        if prop in instance and isinstance(kind, str) and kind in WRONG:
            broken = copy.deepcopy(instance)
            broken[prop] = WRONG[kind]
            out.append((broken, f"/{prop}", "type"))
    return out


def counting_tool(name: str, schema: dict[str, Any], calls: list[Any]) -> Tool:
    async def run(args: dict[str, Any]) -> Any:
        calls.append(args)
        return {"ok": True}

    return make_tool(ToolSpec(name=name, input_schema=schema), run)


@pytest.mark.slow
@pytest.mark.parametrize("server", mcp_schemas.SERVERS)
def test_receiver_runs_valid_calls_and_refuses_every_mutation_unexecuted(
    server: str, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    schemas = mcp_schemas.tool_schemas(server, tmp_path_factory.mktemp("mcp"))
    cases = {name: examples(schema, 15) for name, schema in schemas.items()}
    calls: list[Any] = []
    tools = [counting_tool(f"mcp.{server}.{n}", s, calls) for n, s in schemas.items()]

    async def check() -> tuple[int, int]:
        cfg = NodeConfig(cluster=f"recv-{server}", name="tools", servers=(nats_server.url,))
        valid = refused = 0
        async with open_node(cfg, tools=tools) as node, open_bus(nats_server.url) as raw:

            async def send(tool: str, args: Any) -> Envelope:
                env = Envelope(id="t", kind=Kind.REQUEST, type="agentrt.tool_call",
                               sender="rogue", recipient=tool, payload=msgspec.json.encode(args),
                               content_type=ContentType.JSON)  # fmt: skip
                with trio.fail_after(10):
                    reply = await raw.request(node.subjects.tool(tool), encode(env))
                return decode_envelope(reply.data)

            for name, instances in cases.items():
                tool = f"mcp.{server}.{name}"
                for instance in instances:
                    before = len(calls)
                    reply = await send(tool, instance)
                    assert reply.kind is Kind.REPLY, decode_error(reply)
                    assert len(calls) == before + 1
                    valid += 1
                    if not isinstance(instance, dict):
                        continue
                    for broken, pointer, keyword in mutations(schemas[name], instance):
                        reply = await send(tool, broken)
                        assert reply.kind is Kind.ERROR, (tool, broken)
                        err = decode_error(reply)
                        assert err.code is ErrorCode.GATE_REJECTED
                        assert (pointer, keyword) in {
                            (v.pointer, v.keyword) for v in err.violations
                        }
                        assert len(calls) == before + 1  # never executed
                        refused += 1
        return valid, refused

    valid, refused = trio.run(check)
    assert valid == sum(len(v) for v in cases.values())
    assert refused > 0
