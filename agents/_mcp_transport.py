"""Opening one MCP connection: a stdio child process or a streamable HTTP endpoint.

Both give the SDK's pair of message streams. The read stream is wrapped so that the end of the
connection (stdout closed, HTTP transport failed) is an event for the bridge: the SDK's
session does not say when its connection closed.

Over HTTP, the SDK closes a POST's event stream as soon as the JSON-RPC response event is in,
before the server's end of the body (the last chunk) has been read, and httpcore then closes
the TCP connection instead of pooling it: every tool call paid a new connection on both sides
(~0.5-1 ms on loopback). ``_KeepAlive`` reads that end instead, so the connection is reused.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import httpx2
import trio
from mcp import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

if TYPE_CHECKING:
    from ._mcp import McpServerConfig

__all__ = ["http_client", "open_transport"]

log = logging.getLogger("agentrt.agents.mcp")

_SSE_READ_TIMEOUT_S = 300.0  # the GET stream may stay silent for long; pings watch liveness
# An idle pooled connection is dropped after this, before common servers' own keep-alive
# timeouts (uvicorn 5 s, node 5 s): reusing one the server is closing would fail a call.
_KEEPALIVE_S = 2.0
# What a closed POST response may still take to end before its connection is given up on.
_DRAIN_S = 1.0
_DRAIN_BYTES = 64 * 1024
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


@asynccontextmanager
async def open_transport(
    cfg: McpServerConfig, errlog: TextIO, on_closed: Callable[[], None]
) -> AsyncIterator[tuple[Any, Any]]:
    """Connect to the server ``cfg`` describes; ``on_closed`` runs when its side ends.

    Yields:
        The (read, write) streams a ``ClientSession`` takes.
    """
    if cfg.url:
        http = http_client(cfg.headers, cfg.timeout_s)
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


def http_client(headers: Mapping[str, str], timeout_s: float) -> httpx2.AsyncClient:
    """What the SDK's ``create_mcp_http_client`` builds (its timeouts, httpx's defaults,
    proxies from the environment), with connections kept alive between calls."""
    timeout = httpx2.Timeout(min(timeout_s, 30.0), read=_SSE_READ_TIMEOUT_S)
    limits = httpx2.Limits(
        max_connections=100, max_keepalive_connections=20, keepalive_expiry=_KEEPALIVE_S
    )
    return _Client(headers=dict(headers), timeout=timeout, limits=limits)


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


def _socket_of(response: httpx2.Response) -> Any:
    stream = response.extensions.get("network_stream")
    return stream.get_extra_info("socket") if stream is not None else None


def _ack_now(sock: Any) -> None:
    """Acknowledge what came in at once (Linux ``TCP_QUICKACK``). A server whose sockets lack
    ``TCP_NODELAY`` (asyncio leaves it off on sockets of a listener made with proto 0, as
    gunicorn and ``uvicorn.run(sockets=...)`` make them) holds each next write of a response
    until its previous one is acknowledged, and on a kept-alive connection the client delays
    that acknowledgement by up to 40 ms: a stall per call that a new connection (whose first
    segments are acknowledged at once) never showed."""
    if sock is not None and _QUICKACK is not None:
        # OSError: not a TCP socket (a proxy's stream, a closed one): nothing to ack.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


class _Client(httpx2.AsyncClient):
    """httpx's client whose transports (direct, and each proxy from the environment) are
    wrapped in ``_KeepAlive``. Passing ``transport=`` instead would turn off the environment's
    proxies."""

    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
        return _KeepAlive(super()._init_transport(*args, **kwargs))

    def _init_proxy_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
        return _KeepAlive(super()._init_proxy_transport(*args, **kwargs))


class _KeepAlive(httpx2.AsyncBaseTransport):
    """httpx's transport, except that closing a POST response first reads what is left of it
    (an MCP server ends a request's event stream right after the response event), so its
    connection goes back to the pool. The SDK has already handed the response to the
    session when it closes the stream, so the caller does not wait for this."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "POST":
            sock = _socket_of(response)
            _ack_now(sock)
            response.stream = _DrainOnClose(response.stream, sock)
        return response

    async def __aenter__(self) -> _KeepAlive:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _DrainOnClose(httpx2.AsyncByteStream):
    """A response body whose ``aclose`` reads the rest (within ``_DRAIN_S`` and
    ``_DRAIN_BYTES``) before closing; a body that does not end in time, or fails, is closed
    with its connection, as without this wrapper."""

    def __init__(self, inner: Any, sock: Any) -> None:
        self._inner, self._sock = inner, sock

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        _ack_now(self._sock)
        try:
            with trio.move_on_after(_DRAIN_S):
                left = _DRAIN_BYTES
                async for chunk in self._inner:
                    left -= len(chunk)
                    if left < 0:
                        break
        except httpx2.TransportError as exc:  # the server cut it: nothing to reuse
            log.debug("MCP HTTP response ended with %s: %s", type(exc).__name__, exc)
        finally:
            await self._inner.aclose()
