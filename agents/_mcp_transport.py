"""Opening one MCP connection: a stdio child process or a streamable HTTP endpoint.

Both give the SDK's pair of message streams. The server's messages are relayed through one
more stream so that the end of the connection (stdout closed, HTTP transport failed) is an
event for the bridge: the SDK's session does not say when its connection closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import httpx2
from mcp import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

if TYPE_CHECKING:
    from ._mcp import McpServerConfig

__all__ = ["open_transport"]

_SSE_READ_TIMEOUT_S = 300.0  # the GET stream may stay silent for long; pings watch liveness


@asynccontextmanager
async def open_transport(
    cfg: McpServerConfig, errlog: TextIO, on_closed: Callable[[], None]
) -> AsyncIterator[tuple[Any, Any]]:
    """Connect to the server ``cfg`` describes; ``on_closed`` runs when its side ends.

    Yields:
        The (read, write) streams a ``ClientSession`` takes.
    """
    if cfg.url:
        timeout = httpx2.Timeout(min(cfg.timeout_s, 30.0), read=_SSE_READ_TIMEOUT_S)
        http = create_mcp_http_client(headers=dict(cfg.headers), timeout=timeout)
        async with (
            http,
            streamable_http_client(cfg.url, http_client=http) as (read, write),
            _relayed(read, on_closed) as relayed,
        ):
            yield relayed, write
    else:
        params = StdioServerParameters(command=cfg.command[0], args=cfg.command[1:], env=cfg.env)
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            _relayed(read, on_closed) as relayed,
        ):
            yield relayed, write


@asynccontextmanager
async def _relayed(src: Any, on_closed: Callable[[], None]) -> AsyncIterator[Any]:
    send, receive = anyio.create_memory_object_stream[Any](0)

    async def relay() -> None:
        try:
            async with send:
                async for item in src:
                    await send.send(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            on_closed()

    async with anyio.create_task_group() as tg:
        tg.start_soon(relay)
        try:
            yield receive
        finally:
            tg.cancel_scope.cancel()
