"""The tool registry's change signal and the tool bucket's delete markers, on a real nats-server.

A tool that stops being hosted leaves the cluster: its key gets a ``KV-Operation: DEL`` marker
(a normal publish, which the stream's ``deny_delete`` does not refuse), every follower
unregisters it, and callers get the gate's unknown-tool error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from agentrt import GateError, NodeConfig, PermissionViolation, open_client, open_node
from agentrt._bus import InboundMsg
from agentrt._kv import KvBucket
from agentrt._natsserver import NatsServer, NatsUser
from agentrt._tools import ToolRegistry, make_tool, tool
from agentrt.sandbox import nats_permissions


@tool(name="reg.square")
def square(x: int) -> int:
    """Square x."""
    return x * x


@tool(name="reg.half")
def half(x: int) -> float:
    """Half of x."""
    return x / 2


def cfg(nats_url: str, cluster: str, name: str) -> NodeConfig:
    return NodeConfig(cluster=cluster, name=name, servers=(nats_url,))


UNKNOWN = (
    "tool 'reg.square': input failed the schema gate (1 violation)\n"
    "  at /: 'tool' expects a known tool ({known}); got 'reg.square'"
)


async def test_the_registry_counts_changes_and_wakes_waiters() -> None:
    reg = ToolRegistry()
    assert reg.version == 0
    reg.register(square)
    assert reg.version == 1
    reg.register_spec(square.spec)  # same spec (a follower's echo of its own put): no change
    assert reg.version == 1
    reg.register(make_tool(square.spec.__replace__(description="Squares."), None))
    assert reg.version == 2
    assert reg.unregister("reg.square") is not None
    assert reg.unregister("reg.square") is None  # already gone: no change
    assert reg.version == 3

    woke: list[int] = []

    async def waiter(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        woke.append(await reg.wait_changed(3))

    async with trio.open_nursery() as nursery:
        await nursery.start(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []  # parked: nothing changed since version 3
        reg.register(half)
    assert woke == [4]
    assert await reg.wait_changed(3) == 4  # behind already: returns at once


async def test_a_delete_marker_is_stored_although_the_stream_denies_deletes(
    nats_url: str, cluster_name: str
) -> None:
    async with open_client(cfg(nats_url, cluster_name, "c")) as client:
        kv = KvBucket(client.bus, f"agentrt_tools_{cluster_name}")
        with trio.fail_after(10):
            assert await kv.ensure()
            info = await client.bus.request(f"$JS.API.STREAM.INFO.{kv.stream}", b"")
            assert json.loads(info.data)["config"]["deny_delete"] is True
            put = await kv.put("reg.square", b'{"name": "reg.square"}')
            marker = await kv.delete("reg.square")
            assert marker == put + 1
            assert await kv.get("reg.square") is None
            # The stream's delete API, which deny_delete is about, is still refused.
            refused = await client.bus.request(
                f"$JS.API.STREAM.MSG.DELETE.{kv.stream}", json.dumps({"seq": put}).encode()
            )
            assert "error" in json.loads(refused.data)


async def test_an_unhosted_tool_leaves_every_node_and_callers_get_unknown_tool(
    nats_url: str, cluster_name: str
) -> None:
    async with (
        open_node(cfg(nats_url, cluster_name, "host")) as host,
        open_client(cfg(nats_url, cluster_name, "c")) as client,
    ):
        with trio.fail_after(20):
            await host.host_tool(square)
            await client.registry.wait_for("reg.square")
            assert await client.call_tool("reg.square", {"x": 4}) == 16
            seen = client.registry.version
            await host.unhost_tool("reg.square")
            assert host.registry.get("reg.square") is None  # at once, on the hosting node
            while client.registry.get("reg.square") is not None:
                seen = await client.registry.wait_changed(seen)
            with pytest.raises(GateError) as info:
                await client.call_tool("reg.square", {"x": 4})
            assert str(info.value) == UNKNOWN.format(known="none")
            # A node that joins later replays the marker (counted, so it becomes ready) and
            # never learns the tool.
            async with open_client(cfg(nats_url, cluster_name, "late")) as late:
                assert late.registry.get("reg.square") is None
                with pytest.raises(GateError) as late_info:
                    await late.call_tool("reg.square", {"x": 4})
                assert str(late_info.value) == UNKNOWN.format(known="none")
            # Hosted again: back everywhere.
            await host.host_tool(square)
            await client.registry.wait_for("reg.square")
            assert await client.call_tool("reg.square", {"x": 5}) == 25


async def test_unhosting_a_tool_hosted_elsewhere_changes_nothing(
    nats_url: str, cluster_name: str
) -> None:
    async with (
        open_node(cfg(nats_url, cluster_name, "host"), tools=[square]),
        open_node(cfg(nats_url, cluster_name, "other")) as other,
    ):
        with trio.fail_after(10):
            await other.unhost_tool("reg.square")  # not hosted on `other`: no marker
            assert other.registry.get("reg.square") is not None
            assert await other.call_tool("reg.square", {"x": 3}) == 9
            kv = KvBucket(other.bus, f"agentrt_tools_{cluster_name}")
            assert await kv.get("reg.square") is not None


async def test_a_replica_still_hosting_the_tool_puts_it_back(
    nats_url: str, cluster_name: str
) -> None:
    kv_events, received = trio.open_memory_channel[str](16)

    def on_update(m: InboundMsg) -> None:  # runs in the bus reader: record, never block
        if m.subject.endswith(".reg.square"):
            kv_events.send_nowait("del" if KvBucket.is_tombstone(m.headers) else "put")

    async with (
        open_node(cfg(nats_url, cluster_name, "a")) as a,
        open_node(cfg(nats_url, cluster_name, "b")) as b,
    ):
        with trio.fail_after(20):
            await a.host_tool(square)
            await b.host_tool(square)
            kv = KvBucket(a.bus, f"agentrt_tools_{cluster_name}")
            sub, _ = await kv.watch(on_update)
            try:
                assert await received.receive() == "put"  # the replay: b's put
                await a.unhost_tool("reg.square")
                assert await received.receive() == "del"  # a's marker
                assert await received.receive() == "put"  # b puts its spec back
            finally:
                await sub.unsubscribe()
            # Whoever joins now learns the tool, and b serves it.
            async with open_client(cfg(nats_url, cluster_name, "c")) as client:
                assert client.registry.get("reg.square") is not None
                assert await client.call_tool("reg.square", {"x": 6}) == 36


async def test_the_broker_lets_a_node_mark_only_the_tools_it_hosts(
    tmp_path: Path, cluster_name: str
) -> None:
    # The marker is a write to the key's subject with a header: the permission to publish the
    # spec is all it needs, and a node still cannot mark another node's tool.
    known = ["reg.square", "reg.half"]
    pub, sub = nats_permissions(
        None, cluster=cluster_name, agents=[], hosted_tools=["reg.square"], known_tools=known
    )
    user = NatsUser("node-host", "h-secret", tuple(pub), tuple(sub), allow_responses=True)
    server = NatsServer(tmp_path / "perm", name="regperm", users=(user,))
    await trio.to_thread.run_sync(server.start)
    try:
        host_cfg = NodeConfig(cluster=cluster_name, name="host", servers=(server.url,),
                              user="node-host", password="h-secret")  # fmt: skip
        async with open_node(host_cfg, tools=[square]) as host:
            kv = KvBucket(host.bus, f"agentrt_tools_{cluster_name}")
            with trio.fail_after(10):
                await host.unhost_tool("reg.square")
                replayed, received = trio.open_memory_channel[bool](4)
                subscription, pending = await kv.watch(
                    lambda m: replayed.send_nowait(KvBucket.is_tombstone(m.headers))
                )
                assert pending == 1
                assert await received.receive() is True  # the key's last message: the marker
                await subscription.unsubscribe()
                with pytest.raises(PermissionViolation) as refused:
                    await kv.delete("reg.half")
    finally:
        server.stop()
    assert refused.value.subject == f"$KV.agentrt_tools_{cluster_name}.reg.half"


@tool(name="mcp.test.echo")
def mcp_echo(text: str) -> str:
    """Stands for a tool an MCP server lists at run time."""
    return text


async def test_a_node_bridging_an_mcp_server_may_host_and_remove_its_tools(
    tmp_path: Path, cluster_name: str
) -> None:
    # MCP tools are known only at run time: the node gets mcp.<server>.> for its servers
    # (calls, specs and their markers) and nothing of another server.
    pub, sub = nats_permissions(
        None, cluster=cluster_name, agents=[], hosted_tools=[], known_tools=[],
        mcp_servers=["test"],
    )  # fmt: skip
    bridge = NatsUser("node-bridge", "b-secret", tuple(pub), tuple(sub), allow_responses=True)
    caller = NatsUser("caller", "c-secret")  # unrestricted
    server = NatsServer(tmp_path / "perm", name="mcpperm", users=(bridge, caller))
    await trio.to_thread.run_sync(server.start)

    def node_cfg(name: str, user: str, password: str) -> NodeConfig:
        return NodeConfig(cluster=cluster_name, name=name, servers=(server.url,), user=user,
                          password=password)  # fmt: skip

    try:
        async with (
            open_node(node_cfg("bridge", "node-bridge", "b-secret")) as host,
            open_client(node_cfg("c", "caller", "c-secret")) as client,
        ):
            with trio.fail_after(10):
                await host.host_tool(mcp_echo)  # subscribe + put: both allowed
                await client.registry.wait_for("mcp.test.echo")
                assert await client.call_tool("mcp.test.echo", {"text": "hi"}) == "hi"
                seen = client.registry.version
                await host.unhost_tool("mcp.test.echo")  # the marker: allowed too
                while client.registry.get("mcp.test.echo") is not None:
                    seen = await client.registry.wait_changed(seen)
                kv = KvBucket(host.bus, f"agentrt_tools_{cluster_name}")
                with pytest.raises(PermissionViolation):
                    await kv.put("mcp.other.echo", b"{}")
    finally:
        server.stop()


@tool(name="mcp.test.wipe")
def mcp_wipe() -> str:
    """Stands for an MCP tool the caller's policy does not allow."""
    return "wiped"


async def test_a_policied_caller_reaches_the_mcp_tools_its_policy_allows_and_no_others(
    tmp_path: Path, cluster_name: str
) -> None:
    from agentrt.sandbox import Policy, ToolRules

    bridge_pub, bridge_sub = nats_permissions(
        None, cluster=cluster_name, agents=[], hosted_tools=[], known_tools=[],
        mcp_servers=["test"],
    )  # fmt: skip
    policy = Policy(tools=ToolRules(allow=["mcp.test.echo"]))
    caller_pub, caller_sub = nats_permissions(
        policy, cluster=cluster_name, agents=[], hosted_tools=[], known_tools=[],
        cluster_mcp_servers=["test"],
    )  # fmt: skip
    users = (
        NatsUser("node-bridge", "b", tuple(bridge_pub), tuple(bridge_sub), allow_responses=True),
        NatsUser("node-front", "f", tuple(caller_pub), tuple(caller_sub), allow_responses=True),
    )
    server = NatsServer(tmp_path / "perm", name="mcpcall", users=users)
    await trio.to_thread.run_sync(server.start)

    def node_cfg(name: str, user: str, password: str) -> NodeConfig:
        return NodeConfig(cluster=cluster_name, name=name, servers=(server.url,), user=user,
                          password=password)  # fmt: skip

    try:
        async with (
            open_node(node_cfg("bridge", "node-bridge", "b")) as host,
            # No policy in the node: only the broker stands between it and mcp.test.wipe.
            open_client(node_cfg("front", "node-front", "f")) as front,
        ):
            with trio.fail_after(10):
                await host.host_tool(mcp_echo)
                await host.host_tool(mcp_wipe)
                await front.registry.wait_for("mcp.test.wipe")
                assert await front.call_tool("mcp.test.echo", {"text": "hi"}) == "hi"
                with pytest.raises(PermissionViolation) as info:
                    await front.call_tool("mcp.test.wipe", {})
    finally:
        server.stop()
    assert f"agentrt.{cluster_name}.tool.mcp.test.wipe" in str(info.value)
