"""The bridge's HTTP client against a raw HTTP/1.1 server on loopback: a POST's event stream
closed after its first event is read to its end so the connection is reused, within a bound;
a stream that never ends, and the long-lived GET stream, are closed as before."""

from __future__ import annotations

import functools

import httpx2
import pytest
import trio
from agentrt.agents import _mcp_transport
from agentrt.agents._mcp_transport import http_client

_EVENT = b'event: message\ndata: {"jsonrpc": "2.0", "id": 1, "result": {}}\n\n'


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _SseServer:
    """Answers every request with an event stream: one event, then (``ends``) the end of the
    body once ``release`` is set, or (not ``ends``) nothing more until the client leaves."""

    def __init__(self, *, ends: bool) -> None:
        self.ends = ends
        self.connections = 0
        self.requests = 0
        self.release = trio.Event()
        self.left = trio.Event()  # a client closed its connection
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some()
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += await stream.receive_some()
                buf = buf[length:]
                self.requests += 1
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n" + _chunk(_EVENT)
                )
                if not self.ends:
                    while await stream.receive_some():
                        pass
                    return
                await self.release.wait()
                self.release = trio.Event()
                await stream.send_all(b"0\r\n\r\n")
        except trio.BrokenResourceError:
            return
        finally:
            self.left.set()


async def _first_event(
    http: httpx2.AsyncClient, method: str, url: str, release: trio.Event | None = None
) -> None:
    """Open a stream, read its first event, close it: what the SDK does, which keeps its
    iterator over the body alive while it closes the response. ``release`` is set once the
    event is in, so the end of the body comes after it (as from a server that writes the
    response, then ends the stream)."""
    kwargs = {"json": {}} if method == "POST" else {}
    async with http.stream(method, url, **kwargs) as response:
        events = response.aiter_raw()
        assert await events.__anext__() == _EVENT
        if release is not None:
            release.set()
    await events.aclose()


async def test_a_post_stream_closed_after_its_event_keeps_the_connection() -> None:
    server = _SseServer(ends=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        url = f"http://127.0.0.1:{server.port}/mcp"
        async with http_client({}, 10) as http:
            with trio.fail_after(10):
                for _ in range(3):
                    await _first_event(http, "POST", url, server.release)
        nursery.cancel_scope.cancel()
    assert (server.connections, server.requests) == (1, 3)


async def test_a_post_stream_that_never_ends_is_closed_after_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_mcp_transport, "_DRAIN_S", 0.001)
    server = _SseServer(ends=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with http_client({}, 10) as http:
            with trio.fail_after(10):
                await _first_event(http, "POST", f"http://127.0.0.1:{server.port}/mcp")
                await server.left.wait()
        nursery.cancel_scope.cancel()
    assert server.connections == 1


async def test_the_get_stream_is_closed_without_reading_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Were the GET stream (open for the session's whole life) read to its end, closing it
    # would wait this long: the test's fail_after would fire first.
    monkeypatch.setattr(_mcp_transport, "_DRAIN_S", 3600.0)
    server = _SseServer(ends=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with http_client({}, 10) as http:
            with trio.fail_after(10):
                await _first_event(http, "GET", f"http://127.0.0.1:{server.port}/mcp")
                await server.left.wait()
        nursery.cancel_scope.cancel()
