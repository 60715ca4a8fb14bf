"""Opening one MCP connection: a stdio child process or a streamable HTTP endpoint.

Both give the SDK's pair of message streams. The read stream is wrapped so that the end of the
connection (stdout closed, HTTP transport failed) is an event for the bridge: the SDK's
session does not say when its connection closed.
"""

from __future__ import annotations

import sys
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
        ):
            yield _EndAware(read, on_closed), write
    else:
        params = StdioServerParameters(
            command=resolve_command(cfg.command[0]), args=cfg.command[1:], env=cfg.env
        )
        async with stdio_client(params, errlog=errlog) as (read, write):
            yield _EndAware(read, on_closed), write


def resolve_command(command: str) -> str:
    """``python`` / ``python3`` mean the interpreter running this node: a server installed
    next to agentrt (``python -m mcp_server_time``) then starts whether or not the virtualenv
    is on ``PATH``. Anything else is looked up on ``PATH`` as given."""
    return sys.executable if command in ("python", "python3") else command


class _EndAware:
    """The transport's read stream, unchanged, except that its end (EOF, or closed under the
    session) calls ``on_closed``. A wrapper rather than a relay task: no extra hop per message,
    and the per-message context (``last_context``) the SDK reads stays visible."""

    def __init__(self, src: Any, on_closed: Callable[[], None]) -> None:
        self._src, self._on_closed = src, on_closed

    @property
    def last_context(self) -> Any:
        return getattr(self._src, "last_context", None)

    def __aiter__(self) -> _EndAware:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._src.__anext__()
        except (StopAsyncIteration, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_closed()
            raise

    async def receive(self) -> Any:
        try:
            return await self._src.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_closed()
            raise

    async def aclose(self) -> None:
        await self._src.aclose()

    async def __aenter__(self) -> _EndAware:
        await self._src.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._src.__aexit__(*exc)
