"""The MCP bridge against real MCP servers over stdio (no mocks).

``mcp-server-time`` checks that tools are hosted with the server's exact schemas, gated on the
calling node and answered; a small server written with the SDK's ``MCPServer`` (FastMCP in
mcp 1.x) checks that a crash mid-call fails the call with a typed error and that the bridge
restarts the server and hosts its tools again.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from agentrt import GateError, HandlerFailed, NodeConfig, open_client, open_node
from agentrt.agents import McpBridge, McpServerConfig
from mcp import ClientSession, StdioServerParameters, stdio_client

TIME = McpServerConfig(name="time", command=[sys.executable, "-m", "mcp_server_time"])

_TEST_SERVER = textwrap.dedent(
    '''
    import os

    from mcp.server.mcpserver import MCPServer

    app = MCPServer("test")


    @app.tool()
    def crash() -> str:
        """Exit the server process at once, mid-call."""
        os._exit(1)


    @app.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text


    app.run()
    '''
)


async def _listed_schemas(argv: list[str], errlog: Any) -> dict[str, dict[str, Any]]:
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    async with (
        stdio_client(params, errlog=errlog) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listing = await session.list_tools()
    return {t.name: dict(t.input_schema) for t in listing.tools}


@asynccontextmanager
async def _bridged(
    nats_url: str, cluster: str, servers: list[McpServerConfig]
) -> AsyncIterator[tuple[McpBridge, Any]]:
    def cfg(name: str) -> NodeConfig:
        return NodeConfig(cluster=cluster, name=name, servers=(nats_url,))

    async with (
        open_node(cfg("bridge")) as node,
        open_client(cfg("c")) as client,
        trio.open_nursery() as nursery,
    ):
        bridge = McpBridge(node, servers, restart_backoff_s=0.1, max_backoff_s=1.0)
        with trio.fail_after(60):
            await nursery.start(bridge.serve)
        yield bridge, client
        nursery.cancel_scope.cancel()


async def test_time_server_tools_are_hosted_with_their_schemas_and_gated(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    with (tmp_path / "stderr").open("w+") as errlog, trio.fail_after(60):
        expected = await _listed_schemas(TIME.command, errlog)
    assert {"get_current_time", "convert_time"} <= set(expected)
    async with _bridged(nats_url, cluster_name, [TIME]) as (bridge, client):
        assert bridge.restarts == {"time": 0}
        with trio.fail_after(30):
            for name in ("get_current_time", "convert_time"):
                await client.registry.wait_for(f"mcp.time.{name}")
                assert client.registry.get(f"mcp.time.{name}").spec.input_schema == expected[name]
            result = await client.call_tool("mcp.time.get_current_time", {"timezone": "UTC"})
            assert "UTC" in json.dumps(result)
            with pytest.raises(GateError) as info:
                await client.call_tool("mcp.time.get_current_time", {"timezone": 5})
            assert info.value.violations[0].pointer == "/timezone"


async def test_a_crashed_server_fails_the_call_and_is_restarted(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    script = tmp_path / "crashy.py"
    script.write_text(_TEST_SERVER)
    test = McpServerConfig(name="test", command=[sys.executable, str(script)], timeout_s=20)
    async with _bridged(nats_url, cluster_name, [test]) as (bridge, client):
        with trio.fail_after(30):
            await client.registry.wait_for("mcp.test.echo")
            assert "hi" in json.dumps(await client.call_tool("mcp.test.echo", {"text": "hi"}))
            before = bridge.restarts["test"]
            with pytest.raises(HandlerFailed) as info:
                await client.call_tool("mcp.test.crash", {})
            assert info.value.remote_type == "McpServerError"
            assert "'test'" in str(info.value)
            await bridge.wait_ready("test", before + 1)
            assert bridge.restarts["test"] == before + 1
            assert "back" in json.dumps(await client.call_tool("mcp.test.echo", {"text": "back"}))


async def test_a_server_that_cannot_start_does_not_block_the_others(
    nats_url: str, cluster_name: str
) -> None:
    broken = McpServerConfig(name="broken", command=[sys.executable, "-c", "raise SystemExit(3)"])
    async with _bridged(nats_url, cluster_name, [broken, TIME]) as (bridge, client):
        assert "broken" not in bridge.restarts
        assert bridge.tools("time")
        with trio.fail_after(30):
            await client.registry.wait_for("mcp.time.get_current_time")
            result = await client.call_tool("mcp.time.get_current_time", {"timezone": "UTC"})
            assert "UTC" in json.dumps(result)


@pytest.mark.slow
async def test_mcp_servers_listed_in_agentrt_toml_are_usable_cluster_wide_and_in_status(
    tmp_path: Path, cluster_name: str
) -> None:
    from agentrt._cli import render_mcp
    from agentrt._cluster import Supervisor
    from agentrt._config import load_config
    from rich.console import Console

    from .conftest import http_server

    async with http_server() as srv:
        (tmp_path / "agentrt.toml").write_text(
            textwrap.dedent(f"""
            [cluster]
            name = "{cluster_name}"

            [[nodes]]
            name = "bridge"

            [[nodes.mcp]]
            name = "time"
            command = ["{sys.executable}", "-m", "mcp_server_time"]

            [[nodes.mcp]]
            name = "web"
            url = "{srv.url}"
            headers = {{ "X-Test" = "1" }}
            max_concurrent = 4
        """)
        )
        sup = Supervisor(load_config(tmp_path))

        async def forever(_: Supervisor) -> None:
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run, forever)
            with trio.fail_after(90):
                await sup.wait_ready()  # the node reports ready once its MCP tools are hosted
                assert sup.client is not None
                await sup.client.registry.wait_for("mcp.time.get_current_time")
                result = await sup.client.call_tool(
                    "mcp.time.get_current_time", {"timezone": "UTC"}
                )
                echoed = await sup.client.call_tool("mcp.web.echo", {"text": "via http"})
                header = await sup.client.call_tool("mcp.web.header", {"name": "x-test"})
                [status] = [n for n in await sup.node_statuses() if n.mcp]
                cli = await trio.run_process(
                    [str(Path(sys.executable).with_name("agentrt")), "status", "-c",
                     str(tmp_path)], capture_stdout=True,
                )  # fmt: skip
            sup.stop()
    shown = [line.split() for line in cli.stdout.decode().splitlines()]
    assert ["bridge", "web", "http", "ready", "0", "11", "-"] in shown  # the CLI's MCP table
    assert "UTC" in str(result)
    assert echoed == {"text": "via http"}
    assert header == {"value": "1"}  # the configured headers go with every request
    health = {m.name: m for m in status.mcp}
    assert (health["time"].transport, health["time"].state) == ("stdio", "ready")
    assert (health["web"].transport, health["web"].state) == ("http", "ready")
    assert health["web"].tools == 11 and health["time"].tools == 2
    table = render_mcp([status])
    assert table is not None
    console = Console(width=120, record=True)
    console.print(table)
    lines = console.export_text().splitlines()
    assert any(line.split()[:6] == ["bridge", "time", "stdio", "ready", "0", "2"]
               for line in lines), lines  # fmt: skip


def test_mcp_entries_are_checked_with_the_config(tmp_path: Path) -> None:
    from agentrt import ConfigError
    from agentrt._config import load_config

    (tmp_path / "agentrt.toml").write_text(
        '[cluster]\nname = "m"\n[[nodes]]\nname = "b"\n[[nodes.mcp]]\nname = "time"\ncommand = []\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.key == "$.nodes[0].mcp[0].command"
    assert info.value.problem.startswith("give exactly one of `command` (the argv of a stdio")


def test_an_mcp_entry_with_command_and_url_is_refused(tmp_path: Path) -> None:
    from agentrt import ConfigError
    from agentrt._config import load_config

    (tmp_path / "agentrt.toml").write_text(
        '[cluster]\nname = "m"\n[[nodes]]\nname = "b"\n[[nodes.mcp]]\nname = "t"\nurl = "ftp://x"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.key == "$.nodes[0].mcp[0].url"
    assert info.value.problem == "'ftp://x' is not an http:// or https:// URL"
