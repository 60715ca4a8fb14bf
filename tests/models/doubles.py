"""HTTP doubles of the three model providers, for tests and benchmarks.

A ``ModelDouble`` is a real HTTP/1.1 server (h11 over trio sockets, keep-alive, chunked
streaming) on 127.0.0.1 and a free port, running in the test's own trio run. It speaks one
protocol byte for byte — Ollama (JSON / NDJSON), OpenAI (JSON / SSE ``data:`` + ``[DONE]``),
Anthropic (JSON / SSE ``event:`` + ``data:``) — with each provider's headers, usage fields and
error bodies. What it answers is scripted per request:

    async with serve_double("openai") as double:
        double.push(Reply.tool_call("lookup", '{"q": 1}'), Reply.error(429, retry_after="2"))
        double.responder = lambda path, body: Reply.text(body["model"])   # after the queue
        ... point a backend at double.url ...
        assert double.requests[0].body["tools"][0]["function"]["parameters"] == schema

Order of answers to a chat request: the queue (``push``), then ``responder(path, body)`` (may
return ``None`` to fall through), then ``default``. Model listings (``/api/tags``,
``/api/show``, ``/v1/models``) answer from ``models`` unless the responder returns an error,
stall or close for them.

Every request is recorded (method, path, lower-cased headers, decoded JSON body, raw bytes);
``await double.wait_for_requests(n)`` waits for the n-th without polling.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import h11
import pytest
import trio

Protocol = Literal["ollama", "openai", "anthropic"]
Kind = Literal["text", "tool_calls", "error", "stall", "close", "malformed", "raw"]
StallAt = Literal["request", "headers", "first_chunk"]

CHAT_PATHS = {
    "ollama": "/api/chat",
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
}


@dataclass(frozen=True)
class Call:
    """A tool call in a reply; ``arguments`` is the exact text (may be invalid JSON)."""

    name: str
    arguments: str = "{}"


@dataclass(frozen=True)
class Reply:
    """One scripted answer. Build it with the class methods."""

    kind: Kind
    content: str = ""
    calls: tuple[Call, ...] = ()
    status: int = 200
    message: str = ""
    code: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    input_tokens: int = 11
    output_tokens: int | None = None  # default: one per streamed piece
    chunks: tuple[str, ...] | None = None  # default: the text split after each word
    stall_at: StallAt = "headers"
    mid_stream: bool = False
    hold: trio.Event | None = None
    model: str | None = None  # the model the answer names; default: the one asked
    stop_reason: str | None = None

    @classmethod
    def text(
        cls,
        content: str,
        *,
        chunks: Iterable[str] | None = None,
        input_tokens: int = 11,
        output_tokens: int | None = None,
        hold: trio.Event | None = None,
        model: str | None = None,
        stop_reason: str | None = None,
    ) -> Reply:
        """A plain text answer (also how to script a tool call leaked into the text)."""
        pieces = tuple(chunks) if chunks is not None else None
        if pieces is not None and "".join(pieces) != content:
            raise ValueError("chunks must add up to the content")
        return cls(
            "text",
            content=content,
            chunks=pieces,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            hold=hold,
            model=model,
            stop_reason=stop_reason,
        )

    @classmethod
    def tool_call(cls, name: str, arguments: str = "{}", **kw: Any) -> Reply:
        return cls.tool_calls(Call(name, arguments), **kw)

    @classmethod
    def tool_calls(
        cls,
        *calls: Call,
        content: str = "",
        input_tokens: int = 11,
        output_tokens: int | None = None,
        hold: trio.Event | None = None,
    ) -> Reply:
        return cls(
            "tool_calls",
            content=content,
            calls=calls,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            hold=hold,
        )

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "",
        *,
        code: str = "",
        retry_after: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        mid_stream: bool = False,
        hold: trio.Event | None = None,
    ) -> Reply:
        """An error answer with the provider's real body; ``code`` is OpenAI's ``error.code``
        or Anthropic's ``error.type`` (defaults follow the status). ``mid_stream``: a streamed
        request first gets a 200 and one text piece, then the error inside the stream."""
        sent = tuple(headers)
        if retry_after is not None:
            sent += (("retry-after", retry_after),)
        return cls(
            "error",
            status=status,
            message=message,
            code=code,
            headers=sent,
            mid_stream=mid_stream,
            hold=hold,
        )

    @classmethod
    def stall(cls, at: StallAt = "headers", *, content: str = "partial answer") -> Reply:
        """Send nothing more after ``at`` (``request``: nothing at all; ``headers``; or
        ``first_chunk``) until the client hangs up or the double stops."""
        return cls("stall", stall_at=at, content=content)

    @classmethod
    def close_mid_stream(cls, content: str = "partial answer") -> Reply:
        """Send headers and part of the answer, then close the connection."""
        return cls("close", content=content)

    @classmethod
    def raw(
        cls, body: bytes, *, status: int = 200, content_type: str = "application/json"
    ) -> Reply:
        """Exactly these bytes as the body, whatever the protocol (for shapes no provider
        sends)."""
        return cls(
            "raw",
            content=body.decode("latin-1"),
            status=status,
            headers=(("content-type", content_type),),
        )

    @classmethod
    def malformed(cls, content: str = "partial answer") -> Reply:
        """Invalid JSON on the wire: a broken NDJSON line / SSE data after one good piece, or
        a truncated JSON body (with a correct Content-Length) when not streaming."""
        return cls("malformed", content=content)


@dataclass(frozen=True)
class Recorded:
    """A request as the double received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes


Responder = Callable[[str, Any], Reply | None]


@dataclass
class ModelDouble:
    """The double; see the module docstring. Start it with ``serve_double``."""

    protocol: Protocol
    default: Reply = field(default_factory=lambda: Reply.text("ok"))
    responder: Responder | None = None
    models: tuple[str, ...] = ("tiny:1b", "small:3b")
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    _queue: deque[Reply] = field(default_factory=deque)
    _waiters: list[tuple[int, trio.Event]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next chat requests, in order."""
        self._queue.extend(replies)

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == CHAT_PATHS[self.protocol]]

    async def wait_for_requests(self, count: int) -> None:
        """Return once ``count`` requests have arrived (wrap in ``trio.fail_after``)."""
        if len(self.requests) >= count:
            return
        event = trio.Event()
        self._waiters.append((count, event))
        await event.wait()

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        host, port = listeners[0].socket.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        task_status.started(self.url)
        await trio.serve_listeners(self._connection, listeners)

    # -- HTTP/1.1 -------------------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await _next_event(conn, stream)
                if not isinstance(event, h11.Request):
                    return
                raw = bytearray()
                while True:
                    part = await _next_event(conn, stream)
                    if isinstance(part, h11.Data):
                        raw += part.data
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
                if not await self._answer(conn, stream, event, bytes(raw)):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    async def _answer(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, raw: bytes
    ) -> bool:
        """Answer one request; ``False`` when the connection must end."""
        path = request.target.decode().split("?", 1)[0]
        body = json.loads(raw) if raw else None
        self.requests.append(
            Recorded(
                method=request.method.decode(),
                path=path,
                headers={k.decode().lower(): v.decode() for k, v in request.headers},
                body=body,
                raw=raw,
            )
        )
        for waiter in [w for w in self._waiters if w[0] <= len(self.requests)]:
            self._waiters.remove(waiter)
            waiter[1].set()
        wire = _WIRES[self.protocol](self, body if isinstance(body, dict) else {})
        chat = path == CHAT_PATHS[self.protocol]
        reply: Reply | None = None
        if chat and self._queue:
            reply = self._queue.popleft()
        elif self.responder is not None:
            reply = self.responder(path, body)
        if reply is None and chat:
            reply = self.default
        if reply is not None and reply.hold is not None:
            await reply.hold.wait()
        sender = _Sender(conn, stream)
        if reply is not None and reply.kind == "raw":
            await sender.whole(reply.status, list(reply.headers), reply.content.encode("latin-1"))
            return True
        if reply is not None and reply.kind in ("error", "stall", "close", "malformed"):
            return await self._trouble(sender, wire, reply, streaming=chat and wire.streaming)
        if chat:
            assert reply is not None
            if wire.streaming:
                await sender.streamed(wire.stream_headers(), wire.pieces(reply))
            else:
                await sender.whole(200, wire.json_headers(), wire.whole(reply))
            return True
        listing = wire.listing(path)
        if listing is None:
            status, headers, payload = wire.not_found(path)
            await sender.whole(status, headers, payload)
        else:
            await sender.whole(200, wire.json_headers(), listing)
        return True

    async def _trouble(
        self, sender: _Sender, wire: _Wire, reply: Reply, *, streaming: bool
    ) -> bool:
        if reply.kind == "error":
            if streaming and reply.mid_stream:
                first = Reply.text("partial ")
                await sender.streamed(
                    wire.stream_headers(), [wire.pieces(first)[0], wire.stream_error(reply)]
                )
                return True
            status, headers, payload = wire.error(reply)
            await sender.whole(status, headers + list(reply.headers), payload)
            return True
        if reply.kind == "stall":
            if reply.stall_at != "request":
                if streaming:
                    await sender.head(200, wire.stream_headers())
                    if reply.stall_at == "first_chunk":
                        await sender.chunk(wire.pieces(Reply.text(reply.content))[0])
                else:
                    payload = wire.whole(Reply.text(reply.content))
                    await sender.head(200, [*wire.json_headers(), _length(payload)])
                    if reply.stall_at == "first_chunk":
                        await sender.chunk(payload[: len(payload) // 2])
            await sender.wait_for_hangup()
            return False
        if reply.kind == "close":
            if streaming:
                await sender.head(200, wire.stream_headers())
                await sender.chunk(wire.pieces(Reply.text(reply.content))[0])
            else:
                payload = wire.whole(Reply.text(reply.content))
                await sender.head(200, [*wire.json_headers(), _length(payload)])
                await sender.chunk(payload[: len(payload) // 2])
            return False
        # malformed
        if streaming:
            await sender.streamed(
                wire.stream_headers(), [wire.pieces(Reply.text(reply.content))[0], wire.broken()]
            )
        else:
            payload = wire.whole(Reply.text(reply.content))
            await sender.whole(200, wire.json_headers(), payload[: len(payload) // 2])
        return True


@asynccontextmanager
async def serve_double(protocol: Protocol, **options: Any) -> AsyncIterator[ModelDouble]:
    """Run a ``ModelDouble`` for the duration of the block; it stops with the block."""
    double = ModelDouble(protocol, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(double.serve)
        try:
            yield double
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture
async def ollama_double() -> AsyncIterator[ModelDouble]:
    async with serve_double("ollama") as double:
        yield double


@pytest.fixture
async def openai_double() -> AsyncIterator[ModelDouble]:
    async with serve_double("openai") as double:
        yield double


@pytest.fixture
async def anthropic_double() -> AsyncIterator[ModelDouble]:
    async with serve_double("anthropic") as double:
        yield double


# -- plumbing ---------------------------------------------------------------------------------


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(65536))


def _length(payload: bytes) -> tuple[str, str]:
    return ("content-length", str(len(payload)))


class _Sender:
    def __init__(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        self.conn, self.stream = conn, stream

    def _response(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        date = ("date", email.utils.formatdate(usegmt=True))
        return self.conn.send(h11.Response(status_code=status, headers=[date, *headers])) or b""

    async def whole(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        out = self._response(status, [*headers, _length(payload)])
        out += self.conn.send(h11.Data(data=payload)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)

    async def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        await self.stream.send_all(self._response(status, headers))

    async def chunk(self, payload: bytes) -> None:
        await self.stream.send_all(self.conn.send(h11.Data(data=payload)) or b"")

    async def streamed(self, headers: list[tuple[str, str]], pieces: list[bytes]) -> None:
        await self.head(200, headers)
        for piece in pieces:
            await self.chunk(piece)
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()) or b"")

    async def wait_for_hangup(self) -> None:
        while await self.stream.receive_some(65536):
            pass


def _split(text: str) -> list[str]:
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _object_or_text(arguments: str) -> Any:
    """Ollama and Anthropic send arguments as objects; text that is not an object goes as
    the string it is (what a broken server or a streamed partial would amount to)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value if isinstance(value, dict) else arguments


class _Wire:
    """One protocol's bytes. ``body`` is the request's decoded JSON."""

    def __init__(self, double: ModelDouble, body: dict[str, Any]) -> None:
        self.double, self.body = double, body
        self.streaming = body.get("stream") is True
        self.n = next(double._ids)

    def model(self, reply: Reply) -> str:
        return reply.model or str(self.body.get("model", "unknown"))

    def text_pieces(self, reply: Reply) -> list[str]:
        return list(reply.chunks) if reply.chunks is not None else _split(reply.content)

    def out_tokens(self, reply: Reply) -> int:
        if reply.output_tokens is not None:
            return reply.output_tokens
        return max(1, len(self.text_pieces(reply)) + 3 * len(reply.calls))

    def json_headers(self) -> list[tuple[str, str]]:
        return [("content-type", "application/json")]

    def stream_headers(self) -> list[tuple[str, str]]:
        return [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("connection", "keep-alive"),
        ]

    def whole(self, reply: Reply) -> bytes:
        raise NotImplementedError

    def pieces(self, reply: Reply) -> list[bytes]:
        raise NotImplementedError

    def error(self, reply: Reply) -> tuple[int, list[tuple[str, str]], bytes]:
        raise NotImplementedError

    def stream_error(self, reply: Reply) -> bytes:
        raise NotImplementedError

    def broken(self) -> bytes:
        raise NotImplementedError

    def listing(self, path: str) -> bytes | None:
        raise NotImplementedError

    def not_found(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        return 404, self.json_headers(), _dumps({"error": f"no route {path}"}).encode()


class _Ollama(_Wire):
    """Ollama's Go server: JSON with ``charset=utf-8``, NDJSON streams, ``{"error"}``."""

    CREATED = "2026-12-04T18:00:00.000000Z"

    def __init__(self, double: ModelDouble, body: dict[str, Any]) -> None:
        super().__init__(double, body)
        self.streaming = body.get("stream", True) is not False  # Ollama streams by default

    def json_headers(self) -> list[tuple[str, str]]:
        return [("content-type", "application/json; charset=utf-8")]

    def stream_headers(self) -> list[tuple[str, str]]:
        return [("content-type", "application/x-ndjson")]

    def _calls(self, reply: Reply) -> list[dict[str, Any]]:
        return [
            {"function": {"name": c.name, "arguments": _object_or_text(c.arguments)}}
            for c in reply.calls
        ]

    def _final(self, reply: Reply, content: str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reply.calls and not self.streaming:
            message["tool_calls"] = self._calls(reply)
        return {
            "model": self.model(reply),
            "created_at": self.CREATED,
            "message": message,
            "done_reason": reply.stop_reason or "stop",
            "done": True,
            "total_duration": 912345678,
            "load_duration": 12345678,
            "prompt_eval_count": reply.input_tokens,
            "prompt_eval_duration": 2345678,
            "eval_count": self.out_tokens(reply),
            "eval_duration": 812345678,
        }

    def whole(self, reply: Reply) -> bytes:
        return _dumps(self._final(reply, reply.content)).encode()

    def _line(self, reply: Reply, message: dict[str, Any]) -> bytes:
        line = {
            "model": self.model(reply),
            "created_at": self.CREATED,
            "message": message,
            "done": False,
        }
        return (_dumps(line) + "\n").encode()

    def pieces(self, reply: Reply) -> list[bytes]:
        out = [
            self._line(reply, {"role": "assistant", "content": piece})
            for piece in self.text_pieces(reply)
        ]
        if reply.calls:
            out.append(
                self._line(
                    reply, {"role": "assistant", "content": "", "tool_calls": self._calls(reply)}
                )
            )
        out.append((_dumps(self._final(reply, "")) + "\n").encode())
        return out

    def error(self, reply: Reply) -> tuple[int, list[tuple[str, str]], bytes]:
        message = reply.message or {
            404: f'model "{self.body.get("model", "")}" not found, try pulling it first',
            429: "server busy, please try again.  maximum pending requests exceeded",
        }.get(reply.status, "an error occurred")
        return reply.status, self.json_headers(), _dumps({"error": message}).encode()

    def stream_error(self, reply: Reply) -> bytes:
        return (_dumps({"error": reply.message or "an error was encountered"}) + "\n").encode()

    def broken(self) -> bytes:
        return b'{"model":"tiny","created_at":"2026-12-04T18:00:00Z","message":{"role":"assis\n'

    def listing(self, path: str) -> bytes | None:
        if path == "/api/tags":
            models = [
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2026-12-01T10:00:00.000000000Z",
                    "size": 1_000_000 * (i + 1),
                    "digest": f"{i + 1:064x}",
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": "llama",
                        "families": ["llama"],
                        "parameter_size": name.rsplit(":", 1)[-1].upper(),
                        "quantization_level": "Q4_K_M",
                    },
                }
                for i, name in enumerate(self.double.models)
            ]
            return _dumps({"models": models}).encode()
        if path == "/api/show":
            return _dumps(
                {
                    "license": "",
                    "modelfile": "FROM tiny\n",
                    "parameters": 'stop                           "<|eot_id|>"',
                    "template": "{{ .Prompt }}",
                    "details": {"format": "gguf", "family": "llama", "parameter_size": "1B"},
                    "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
                    "capabilities": ["completion", "tools"],
                    "modified_at": "2026-12-01T10:00:00.000000000Z",
                }
            ).encode()
        return None

    def not_found(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        return 404, [("content-type", "text/plain")], b"404 page not found"


class _OpenAI(_Wire):
    """OpenAI's ``/v1/chat/completions``: SSE ``data:`` lines, ``[DONE]``, ``error`` bodies."""

    CREATED = 1_796_000_000
    ERRORS = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }

    def _id(self) -> str:
        return f"chatcmpl-double{self.n}"

    def _call_id(self, i: int) -> str:
        return f"call_d{self.n}x{i}"

    def _usage(self, reply: Reply) -> dict[str, Any]:
        out = self.out_tokens(reply)
        return {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": out,
            "total_tokens": reply.input_tokens + out,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _finish(self, reply: Reply) -> str:
        return reply.stop_reason or ("tool_calls" if reply.calls else "stop")

    def whole(self, reply: Reply) -> bytes:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.content if reply.content or not reply.calls else None,
            "refusal": None,
            "annotations": [],
        }
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": self._call_id(i),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for i, c in enumerate(reply.calls)
            ]
        return _dumps(
            {
                "id": self._id(),
                "object": "chat.completion",
                "created": self.CREATED,
                "model": self.model(reply),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": self._finish(reply),
                    }
                ],
                "usage": self._usage(reply),
                "service_tier": "default",
                "system_fingerprint": "fp_double",
            }
        ).encode()

    def _chunk(self, reply: Reply, choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id(),
            "object": "chat.completion.chunk",
            "created": self.CREATED,
            "model": self.model(reply),
            "service_tier": "default",
            "system_fingerprint": "fp_double",
            "choices": choices,
        }
        if self._include_usage():
            chunk["usage"] = usage
        return f"data: {_dumps(chunk)}\n\n".encode()

    def _include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def _delta(self, reply: Reply, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._chunk(reply, [choice])

    def pieces(self, reply: Reply) -> list[bytes]:
        out = [self._delta(reply, {"role": "assistant", "content": "", "refusal": None})]
        out += [self._delta(reply, {"content": piece}) for piece in self.text_pieces(reply)]
        for i, call in enumerate(reply.calls):
            head = {
                "index": i,
                "id": self._call_id(i),
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            out.append(self._delta(reply, {"tool_calls": [head]}))
            third = max(1, len(call.arguments) // 3)
            parts = [call.arguments[j : j + third] for j in range(0, len(call.arguments), third)]
            out += [
                self._delta(reply, {"tool_calls": [{"index": i, "function": {"arguments": p}}]})
                for p in parts
            ]
        out.append(self._delta(reply, {}, self._finish(reply)))
        if self._include_usage():
            out.append(self._chunk(reply, [], self._usage(reply)))
        out.append(b"data: [DONE]\n\n")
        return out

    def error(self, reply: Reply) -> tuple[int, list[tuple[str, str]], bytes]:
        kind, code = self.ERRORS.get(reply.status, ("server_error", None))
        message = reply.message or {
            401: "Incorrect API key provided: sk-wrong. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            404: f"The model `{self.body.get('model', '')}` does not exist or you do not have "
            "access to it.",
            429: "Rate limit reached for requests",
        }.get(reply.status, "The server had an error while processing your request. Sorry!")
        body = {
            "error": {
                "message": message,
                "type": kind,
                "param": "messages" if reply.code == "context_length_exceeded" else None,
                "code": reply.code or code,
            }
        }
        return reply.status, self.json_headers(), _dumps(body).encode()

    def stream_error(self, reply: Reply) -> bytes:
        _, _, body = self.error(reply)
        return b"data: " + body + b"\n\n"

    def broken(self) -> bytes:
        return b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","choices":[{"ind\n\n'

    def listing(self, path: str) -> bytes | None:
        if path != "/v1/models":
            return None
        data = [
            {"id": name, "object": "model", "created": self.CREATED, "owned_by": "system"}
            for name in self.double.models
        ]
        return _dumps({"object": "list", "data": data}).encode()

    def not_found(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        body = {
            "error": {
                "message": f"Invalid URL (POST {path})",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        return 404, self.json_headers(), _dumps(body).encode()


class _Anthropic(_Wire):
    """Anthropic's ``/v1/messages``: content blocks, SSE ``event:`` + ``data:``, 529."""

    ERRORS = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        529: "overloaded_error",
    }

    def json_headers(self) -> list[tuple[str, str]]:
        return [("content-type", "application/json"), ("request-id", f"req_double{self.n}")]

    def stream_headers(self) -> list[tuple[str, str]]:
        return [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("request-id", f"req_double{self.n}"),
        ]

    def _tool_id(self, i: int) -> str:
        return f"toolu_d{self.n}x{i}"

    def _stop(self, reply: Reply) -> str:
        return reply.stop_reason or ("tool_use" if reply.calls else "end_turn")

    def _usage(self, reply: Reply, output: int) -> dict[str, Any]:
        return {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output,
        }

    def whole(self, reply: Reply) -> bytes:
        content: list[dict[str, Any]] = []
        if reply.content:
            content.append({"type": "text", "text": reply.content})
        content += [
            {
                "type": "tool_use",
                "id": self._tool_id(i),
                "name": c.name,
                "input": _object_or_text(c.arguments),
            }
            for i, c in enumerate(reply.calls)
        ]
        return _dumps(
            {
                "id": f"msg_double{self.n}",
                "type": "message",
                "role": "assistant",
                "model": self.model(reply),
                "content": content,
                "stop_reason": self._stop(reply),
                "stop_sequence": None,
                "usage": self._usage(reply, self.out_tokens(reply)),
            }
        ).encode()

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {_dumps(data)}\n\n".encode()

    def pieces(self, reply: Reply) -> list[bytes]:
        message = {
            "id": f"msg_double{self.n}",
            "type": "message",
            "role": "assistant",
            "model": self.model(reply),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(reply, 1),
        }
        out = [self._event("message_start", {"type": "message_start", "message": message})]
        index = 0
        texts = self.text_pieces(reply)
        if texts:
            out.append(
                self._event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            out.append(self._event("ping", {"type": "ping"}))
            out += [
                self._event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
                for piece in texts
            ]
            out.append(
                self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
            )
            index = 1
        for i, call in enumerate(reply.calls):
            block = {"type": "tool_use", "id": self._tool_id(i), "name": call.name, "input": {}}
            out.append(
                self._event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                )
            )
            third = max(1, len(call.arguments) // 3)
            parts = [""] + [
                call.arguments[j : j + third] for j in range(0, len(call.arguments), third)
            ]
            out += [
                self._event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": part},
                    },
                )
                for part in parts
            ]
            out.append(
                self._event("content_block_stop", {"type": "content_block_stop", "index": index})
            )
            index += 1
        out.append(
            self._event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._stop(reply), "stop_sequence": None},
                    "usage": {"output_tokens": self.out_tokens(reply)},
                },
            )
        )
        out.append(self._event("message_stop", {"type": "message_stop"}))
        return out

    def _error_body(self, reply: Reply) -> dict[str, Any]:
        kind = reply.code or self.ERRORS.get(reply.status, "api_error")
        message = reply.message or {
            "authentication_error": "invalid x-api-key",
            "not_found_error": f"model: {self.body.get('model', '')}",
            "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
            "overloaded_error": "Overloaded",
        }.get(kind, "Internal server error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def error(self, reply: Reply) -> tuple[int, list[tuple[str, str]], bytes]:
        return reply.status, self.json_headers(), _dumps(self._error_body(reply)).encode()

    def stream_error(self, reply: Reply) -> bytes:
        return self._event("error", self._error_body(reply))

    def broken(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type":"content_block_delta","ind\n\n'

    def listing(self, path: str) -> bytes | None:
        if path != "/v1/models":
            return None
        data = [
            {
                "type": "model",
                "id": name,
                "display_name": name.title(),
                "created_at": "2026-10-01T00:00:00Z",
            }
            for name in self.double.models
        ]
        first = data[0]["id"] if data else None
        last = data[-1]["id"] if data else None
        return _dumps(
            {"data": data, "has_more": False, "first_id": first, "last_id": last}
        ).encode()

    def not_found(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        body = {"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}}
        return 404, self.json_headers(), _dumps(body).encode()


_WIRES: dict[str, type[_Wire]] = {"ollama": _Ollama, "openai": _OpenAI, "anthropic": _Anthropic}
