"""Fixtures for the MCP bridge tests: a bridge node and a client node on a real nats-server, and
the SDK test server (``mcp_test_server.py``) run over streamable HTTP in a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from agentrt import Node, NodeConfig, open_client, open_node
from agentrt.agents import McpBridge, McpServerConfig

TEST_SERVER = str(Path(__file__).with_name("mcp_test_server.py"))


class HttpServer:
    """The test server in its own process, so that a test can kill, stop or restart it."""

    def __init__(self) -> None:
        self.port = 0
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> None:
        """Start it (on the same port as before, if it ran) and wait until it listens."""
        self.process = await trio.lowlevel.open_process(
            [sys.executable, TEST_SERVER, "http", str(self.port)], stdout=subprocess.PIPE
        )
        assert self.process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await self.process.stdout.receive_some(1)
                assert chunk, "the test server exited before listening"
                line += chunk
        self.port = int(line.split()[1])

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        with trio.fail_after(10):
            await self.process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@asynccontextmanager
async def http_server() -> AsyncIterator[HttpServer]:
    server = HttpServer()
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.returncode is None:
            server.resume()
            with trio.CancelScope(shield=True):
                await server.kill()


@asynccontextmanager
async def bridged(
    nats_url: str, cluster: str, servers: list[McpServerConfig]
) -> AsyncIterator[tuple[McpBridge, Node, Any]]:
    """A bridge node serving ``servers`` and a client node of the same cluster."""

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
        yield bridge, node, client
        nursery.cancel_scope.cancel()


async def wait_until(bridge: McpBridge, condition: Any) -> None:
    """Wait (on the bridge's change events, not by polling) until ``condition()`` holds; the
    caller's ``fail_after`` bounds it."""
    while not condition():
        await bridge.wait_changed()
