"""The bridge keeps its HTTP connections to an MCP server alive between tool calls.

The SDK closes each POST's event stream as soon as the response event is in, before the end of
the body, which makes httpcore drop the connection: without the bridge's transport every call
opened a new TCP connection. A counting TCP relay between the bridge and the test server sees
how many connections were opened.
"""

from __future__ import annotations

import functools
from typing import Any

import trio
from agentrt.agents import McpServerConfig

from .conftest import bridged, http_server


class _CountingRelay:
    """Forwards every TCP connection to ``target_port`` on loopback, counting them."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.opened = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self._relay, 0, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()

    async def _relay(self, downstream: trio.SocketStream) -> None:
        self.opened += 1
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with downstream, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe, downstream, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pipe, upstream, downstream, nursery.cancel_scope)

    @staticmethod
    async def _pipe(src: Any, dst: Any, both: trio.CancelScope) -> None:
        try:
            async for data in src:
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # one side went away: the relay of this connection is over
        both.cancel()


async def test_consecutive_http_calls_reuse_the_connection(
    nats_url: str, cluster_name: str
) -> None:
    async with http_server() as srv, trio.open_nursery() as nursery:
        relay = _CountingRelay(srv.port)
        await nursery.start(relay.serve)
        cfg = McpServerConfig(name="test", url=f"http://127.0.0.1:{relay.port}/mcp", timeout_s=10)
        async with bridged(nats_url, cluster_name, [cfg]) as (_, _, client):
            with trio.fail_after(30):
                await client.registry.wait_for("mcp.test.echo")
                before = relay.opened
                for i in range(30):
                    assert await client.call_tool("mcp.test.echo", {"text": f"{i}"}) == {
                        "text": f"{i}"
                    }
                opened = relay.opened - before
        nursery.cancel_scope.cancel()
    # One connection per call before the bridge read the end of each response; now a call
    # takes a pooled one (a second one only when the previous call's is still being read).
    assert opened <= 3, f"{opened} TCP connections for 30 calls"
