"""The bridge against an SDK server over streamable HTTP (and, where it matters, stdio): crashes,
hangs, invalid output, tool-list changes, cancellation, outages and the concurrency limit."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pytest
import trio
from agentrt import GateError, HandlerFailed
from agentrt._kv import KvBucket
from agentrt.agents import McpServerConfig
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from .conftest import TEST_SERVER, bridged, http_server, wait_until


def _http(url: str, **kw: Any) -> McpServerConfig:
    return McpServerConfig(name="test", url=url, timeout_s=10, ping_interval_s=0.5, **kw)


def _stdio(**kw: Any) -> McpServerConfig:
    return McpServerConfig(name="test", command=[sys.executable, TEST_SERVER, "stdio"],
                           timeout_s=10, ping_interval_s=0.5, **kw)  # fmt: skip


async def test_http_tools_are_hosted_with_exact_input_and_output_schemas(
    nats_url: str, cluster_name: str
) -> None:
    async with http_server() as srv:
        async with (
            streamable_http_client(srv.url) as (read, write),
            ClientSession(read, write) as session,
        ):
            with trio.fail_after(30):
                await session.initialize()
                listed = {t.name: t for t in (await session.list_tools()).tools}
        async with bridged(nats_url, cluster_name, [_http(srv.url)]) as (bridge, _, client):
            assert bridge.tools("test") == sorted(f"mcp.test.{n}" for n in listed)
            with trio.fail_after(30):
                for name, t in listed.items():
                    spec = (await client.registry.wait_for(f"mcp.test.{name}")).spec
                    assert spec.input_schema == t.input_schema
                    assert spec.output_schema == t.output_schema
                result = await client.call_tool("mcp.test.echo", {"text": "hi"})
            assert result == {"text": "hi"}
            [health] = bridge.health()
            assert (health.name, health.transport, health.state) == ("test", "http", "ready")
            assert health.tools == len(listed)


async def test_invalid_output_is_a_typed_gate_error(nats_url: str, cluster_name: str) -> None:
    async with (
        http_server() as srv,
        bridged(nats_url, cluster_name, [_http(srv.url)]) as (_, _, client),
    ):
        with trio.fail_after(30), pytest.raises(GateError) as info:
            await client.registry.wait_for("mcp.test.bad_output")
            await client.call_tool("mcp.test.bad_output", {})
    assert info.value.stage == "output"
    assert info.value.violations[0].pointer == "/n"
    assert info.value.render_compact().startswith("mcp.test.bad_output output invalid:")


async def test_invalid_arguments_never_reach_the_server(nats_url: str, cluster_name: str) -> None:
    async with (
        http_server() as srv,
        bridged(nats_url, cluster_name, [_http(srv.url)]) as (_, _, client),
    ):
        with trio.fail_after(30):
            await client.registry.wait_for("mcp.test.echo")
            with pytest.raises(GateError):
                await client.call_tool("mcp.test.echo", {"text": "x", "extra": 1})
            calls = await client.call_tool("mcp.test.calls", {})
    assert calls == {"calls": [{"name": "calls", "arguments": {}}]}


async def test_a_killed_http_server_fails_the_call_and_is_reconnected(
    nats_url: str, cluster_name: str
) -> None:
    async with (
        http_server() as srv,
        bridged(nats_url, cluster_name, [_http(srv.url)]) as (bridge, _, client),
    ):
        with trio.fail_after(60):
            await client.registry.wait_for("mcp.test.crash")
            with pytest.raises(HandlerFailed) as info:
                await client.call_tool("mcp.test.crash", {})
            assert info.value.remote_type == "McpServerError"
            assert "MCP server 'test'" in str(info.value)
            await wait_until(bridge, lambda: bridge.health()[0].state != "ready")
            # While it is down, outage = "fail" answers at once, with the reason.
            with pytest.raises(HandlerFailed) as down:
                await client.call_tool("mcp.test.echo", {"text": "x"})
            assert "was not called" in str(down.value)
            assert bridge.health()[0].last_error
            # An outage is not a removal: the spec stays in the bucket, no delete marker.
            bucket = KvBucket(client.bus, f"agentrt_tools_{cluster_name}")
            assert await bucket.get("mcp.test.echo") is not None
            assert client.registry.get("mcp.test.echo") is not None
            await srv.kill()  # it exited already; reap it
            await srv.start()  # same port
            await bridge.wait_ready("test", 1)
            assert bridge.restarts == {"test": 1}
            assert bridge.tools("test")  # re-registered
            assert await client.call_tool("mcp.test.echo", {"text": "back"}) == {"text": "back"}


async def test_a_server_that_stops_answering_is_reconnected(
    nats_url: str, cluster_name: str
) -> None:
    async with http_server() as srv:
        cfg = _http(srv.url, ping_timeout_s=1.0)
        async with bridged(nats_url, cluster_name, [cfg]) as (bridge, _, client):
            with trio.fail_after(60):
                await client.registry.wait_for("mcp.test.echo")
                srv.pause()  # SIGSTOP: the socket accepts, nothing answers
                await wait_until(bridge, lambda: bridge.health()[0].state != "ready")
                assert "ping" in bridge.health()[0].last_error
                srv.resume()
                await bridge.wait_ready("test", 1)
                assert await client.call_tool("mcp.test.echo", {"text": "ok"}) == {"text": "ok"}


async def test_a_hung_stdio_server_is_killed_and_restarted(
    nats_url: str, cluster_name: str
) -> None:
    async with bridged(nats_url, cluster_name, [_stdio(ping_timeout_s=1.0)]) as (
        bridge, _, client,
    ):  # fmt: skip
        with trio.fail_after(60):
            await client.registry.wait_for("mcp.test.pid")
            pid = (await client.call_tool("mcp.test.pid", {}))["pid"]
            os.kill(pid, signal.SIGSTOP)  # alive, silent
            await wait_until(bridge, lambda: bridge.health()[0].state != "ready")
            assert "did not answer a ping within 1s" in bridge.health()[0].last_error
            await bridge.wait_ready("test", 1)
            new_pid = (await client.call_tool("mcp.test.pid", {}))["pid"]
    assert new_pid != pid
    with pytest.raises(ProcessLookupError):  # the hung process was killed and reaped
        os.kill(pid, 0)


async def test_outage_wait_holds_calls_until_the_server_is_back(
    nats_url: str, cluster_name: str
) -> None:
    async with http_server() as srv:
        cfg = _http(srv.url, outage="wait")
        async with bridged(nats_url, cluster_name, [cfg]) as (bridge, _, client):
            results: list[Any] = []

            async def call() -> None:
                results.append(await client.call_tool("mcp.test.echo", {"text": "waited"}))

            with trio.fail_after(60):
                await client.registry.wait_for("mcp.test.echo")
                await srv.kill()
                await wait_until(bridge, lambda: bridge.health()[0].state != "ready")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call)
                    await wait_until(bridge, lambda: bridge.calls("test") == (0, 1))
                    await srv.start()
            assert results == [{"text": "waited"}]
            assert bridge.restarts == {"test": 1}


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_tool_list_changes_are_followed(
    nats_url: str, cluster_name: str, transport: str
) -> None:
    async with http_server() as srv:
        cfg = _http(srv.url) if transport == "http" else _stdio()
        async with bridged(nats_url, cluster_name, [cfg]) as (bridge, node, client):
            with trio.fail_after(60):
                await client.registry.wait_for("mcp.test.echo")
                await client.call_tool("mcp.test.add_tool", {"name": "extra_a"})
                await client.registry.wait_for("mcp.test.extra_a")  # through the bucket
                assert await client.call_tool("mcp.test.extra_a", {"text": "new"}) == {
                    "text": "new"
                }
                seen = client.registry.version
                await client.call_tool("mcp.test.remove_tool", {"name": "extra_a"})
                await wait_until(bridge, lambda: "mcp.test.extra_a" not in bridge.tools("test"))
                while client.registry.get("mcp.test.extra_a") is not None:  # the delete marker
                    seen = await client.registry.wait_changed(seen)
                with pytest.raises(GateError) as gone:  # removed from the cluster, not unserved
                    await client.call_tool("mcp.test.extra_a", {"text": "gone"})
                assert gone.value.violations[0].keyword == "tool"
                await client.call_tool("mcp.test.retype_echo", {})
                await wait_until(
                    bridge,
                    lambda: node.registry.get("mcp.test.echo").spec.input_schema["properties"][
                        "text"
                    ]["type"] == "integer",
                )  # fmt: skip
                assert await node.call_tool("mcp.test.echo", {"text": 5}) == {"text": 5}
                with pytest.raises(GateError):
                    await node.call_tool("mcp.test.echo", {"text": "a string now fails"})


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_a_deadline_cancels_the_call_on_the_server(
    nats_url: str, cluster_name: str, transport: str
) -> None:
    async with http_server() as srv:
        cfg = _http(srv.url) if transport == "http" else _stdio()
        async with bridged(nats_url, cluster_name, [cfg]) as (bridge, _, client):
            with trio.fail_after(60):
                await client.registry.wait_for("mcp.test.hang")
                with pytest.raises(trio.TooSlowError), trio.fail_after(1):
                    await client.call_tool("mcp.test.hang", {})
                # The server saw notifications/cancelled (it waits for it, up to 20 s).
                assert await client.call_tool("mcp.test.cancelled", {"at_least": 1}) == {"n": 1}
                assert bridge.calls("test") == (0, 0)


async def test_timeout_s_fails_the_call_and_cancels_it_on_the_server(
    nats_url: str, cluster_name: str
) -> None:
    cfg = McpServerConfig(name="test", command=[sys.executable, TEST_SERVER, "stdio"],
                          timeout_s=1.0)  # fmt: skip
    async with bridged(nats_url, cluster_name, [cfg]) as (_, _, client):
        with trio.fail_after(60):
            await client.registry.wait_for("mcp.test.hang")
            with pytest.raises(HandlerFailed) as info:
                await client.call_tool("mcp.test.hang", {})
            assert str(info.value).endswith(
                "MCP server 'test': tool 'hang' did not answer within 1s (timeout_s); "
                "the call was cancelled on the server"
            )
            assert await client.call_tool("mcp.test.cancelled", {"at_least": 1}) == {"n": 1}


async def test_max_concurrent_limits_calls_in_flight(nats_url: str, cluster_name: str) -> None:
    async with (
        http_server() as srv,
        bridged(nats_url, cluster_name, [_http(srv.url, max_concurrent=1)]) as (bridge, _, client),
    ):
        with trio.fail_after(60):
            await client.registry.wait_for("mcp.test.hang")
            async with trio.open_nursery() as nursery:

                async def hang() -> None:
                    with pytest.raises(trio.TooSlowError), trio.fail_after(8):
                        await client.call_tool("mcp.test.hang", {})

                nursery.start_soon(hang)
                await wait_until(bridge, lambda: bridge.calls("test") == (1, 0))
                with pytest.raises(trio.TooSlowError), trio.fail_after(1):
                    await client.call_tool("mcp.test.echo", {"text": "queued"})
                nursery.cancel_scope.cancel()
            await wait_until(bridge, lambda: bridge.calls("test") == (0, 0))
            assert await client.call_tool("mcp.test.echo", {"text": "free"}) == {"text": "free"}


def test_a_server_needs_exactly_one_of_command_and_url() -> None:
    from agentrt import ConfigError
    from agentrt.agents import McpBridge

    both = McpServerConfig(name="x", command=["srv"], url="http://127.0.0.1:1/mcp")
    with pytest.raises(ConfigError) as info:
        McpBridge(object(), [both])
    assert str(info.value) == (
        "McpBridge: servers[0].command: give exactly one of `command` (the argv of a stdio "
        'server, e.g. ["python", "-m", "mcp_server_time"]) and `url` (a streamable HTTP '
        'endpoint, e.g. "http://127.0.0.1:8000/mcp")'
    )
