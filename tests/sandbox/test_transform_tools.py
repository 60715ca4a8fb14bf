"""The shipped transforms as gated tools, run on a node over NATS."""

from __future__ import annotations

import base64
import json

import pytest
import trio
from agentrt import GateError, HandlerFailed, NodeConfig, open_client, open_node
from agentrt.sandbox import csv2json, normalize_text, ppm2pgm


async def test_transforms_run_as_tools_through_the_gate(nats_url: str, cluster_name: str) -> None:
    tools = [csv2json, normalize_text, ppm2pgm]
    node = NodeConfig(cluster=cluster_name, name="transforms", servers=(nats_url,))
    client = NodeConfig(cluster=cluster_name, name="agent", servers=(nats_url,))
    image = b"P6\n2 1\n255\n" + bytes([255, 0, 0, 0, 0, 255])
    async with open_node(node, tools=tools), open_client(client) as c:  # specs via the bucket
        with trio.fail_after(30):
            table = await c.call_tool("transform.csv2json", {"text": 'a,b\n1,"x, y"\n'})
            assert json.loads(table["text"]) == [{"a": "1", "b": "x, y"}]
            tidy = await c.call_tool("transform.normalize_text", {"text": "a  \r\n\r\n\r\nb"})
            assert tidy == {"text": "a\n\nb\n"}
            encoded = base64.b64encode(image).decode()
            gray = await c.call_tool("transform.ppm2pgm", {"data_b64": encoded})
            assert base64.b64decode(gray["data_b64"]) == b"P5\n2 1\n255\n" + bytes([76, 29])
            # The gate refuses a call that does not fit the schema before it is sent.
            with pytest.raises(GateError) as gate:
                await c.call_tool("transform.csv2json", {"csv": "a\n1\n"})
            keywords = {v.keyword for v in gate.value.violations}
            assert keywords == {"required", "additionalProperties"}
            # A transform that rejects its input: a typed failure naming the reason.
            with pytest.raises(HandlerFailed) as bad:
                await c.call_tool("transform.csv2json", {"text": 'a,b\n"unterminated\n'})
            assert bad.value.remote_type == "TransformTrapped"
            assert "unterminated" in str(bad.value)


async def test_the_executing_node_applies_its_transform_rules(
    nats_url: str, cluster_name: str
) -> None:
    from agentrt.sandbox import Policy, TransformRules

    deny_all = Policy(transforms=TransformRules(allow=[]), path="worker.toml")
    node = NodeConfig(cluster=cluster_name, name="worker", servers=(nats_url,))
    client = NodeConfig(cluster=cluster_name, name="agent", servers=(nats_url,))
    async with (
        open_node(node, tools=[normalize_text], policy=deny_all),
        open_client(client) as c,
    ):
        with trio.fail_after(30), pytest.raises(HandlerFailed) as info:
            await c.call_tool("transform.normalize_text", {"text": "x"})
    assert info.value.remote_type == "PolicyDenied"
    assert "transforms.allow: no pattern matches (default deny)" in str(info.value)
