"""Anthropic's Messages API: ``/v1/messages`` (JSON, or SSE events when streaming) and
``/v1/models``.

What is sent: ``x-api-key`` and ``anthropic-version``; system messages joined into the
top-level ``system``; assistant tool calls as ``tool_use`` blocks and tool results as
``tool_result`` blocks in a *user* message (consecutive results share one message, as the API
requires alternating roles); tools with their full JSON Schema as ``input_schema``;
``tool_choice`` ``auto`` / ``any`` (our ``required``) / ``tool`` (a name) / ``none``;
``max_tokens`` always (the API requires it). ``response_schema`` is not sent: the Messages
API has no portable way to enforce one.

What comes back: ``tool_use`` inputs are objects (re-encoded to JSON text); streamed inputs
arrive as ``input_json_delta`` pieces, joined as they are (invalid JSON passes through to the
gate). Usage: input tokens include cache writes and reads.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, Final

import msgspec

from .._errors import ModelOverloaded
from ._convert import arguments_object, arguments_text, chosen_tool, strip_version
from ._http import HttpSession, ProviderError
from ._leak import raise_if_leaked
from ._types import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    ModelInfo,
    ToolCall,
    Usage,
)

__all__ = ["DEFAULT_MAX_TOKENS", "VERSION", "AnthropicBackend"]

VERSION: Final = "2023-06-01"
"""The ``anthropic-version`` header (the API's only stable version)."""

DEFAULT_MAX_TOKENS: Final = 4096
"""``max_tokens`` when the request sets none (the API refuses a request without one)."""

_CONTEXT: Final = re.compile(
    r"prompt is too long|context (length|window)|too many (input )?tokens", re.IGNORECASE
)
_STOP: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
_STATUS_OF: Final = {  # error types inside a stream, as the status they come with otherwise
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class _Block(msgspec.Struct):
    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    input: dict[str, Any] | str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None

    def inputs(self) -> int | None:
        if self.input_tokens is None:
            return None
        return (
            self.input_tokens
            + (self.cache_creation_input_tokens or 0)
            + (self.cache_read_input_tokens or 0)
        )


class _Error(msgspec.Struct):
    type: str = ""
    message: str = ""


class _Message(msgspec.Struct):
    model: str = ""
    content: list[_Block] = msgspec.field(default_factory=list)
    stop_reason: str | None = None
    usage: _Usage | None = None
    error: _Error | None = None


class _Delta(msgspec.Struct):
    type: str = ""
    text: str = ""
    partial_json: str = ""
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    """One SSE ``data`` payload (its ``type`` repeats the ``event:`` name)."""

    type: str
    message: _Message | None = None
    index: int = 0
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _Error | None = None


class _Model(msgspec.Struct):
    id: str
    display_name: str = ""
    created_at: str = ""


class _Models(msgspec.Struct):
    data: list[_Model] = msgspec.field(default_factory=list)


_message = msgspec.json.Decoder(_Message)
_event = msgspec.json.Decoder(_Event)
_models = msgspec.json.Decoder(_Models)
_encode = msgspec.json.Encoder().encode


def _said(error: _Error) -> ProviderError:
    words = f"{error.type}: {error.message}" if error.type else error.message
    return ProviderError(words, context_too_long=bool(_CONTEXT.search(error.message)))


def _describe(status: int, content: bytes) -> ProviderError:
    """``{"type": "error", "error": {"type", "message"}}``."""
    try:
        body = _message.decode(content)
    except msgspec.DecodeError:
        body = _Message()
    if body.error is not None:
        return _said(body.error)
    text = content.decode("utf-8", "replace").strip()[:500]
    return ProviderError(text, context_too_long=bool(_CONTEXT.search(text)))


class AnthropicBackend:
    """Anthropic's API (or a server speaking it).

    Args:
        name: the backend's name in ``agentrt.toml`` (errors say it).
        url: the base url without ``/v1`` (``https://api.anthropic.com``).
        api_key: sent as ``x-api-key``.
        timeout_s: bound on one whole call.
        stall_timeout_s: a call fails when no byte arrives for this long.
        headers: extra headers (``anthropic-beta``...); ``anthropic-version`` may be overridden.
    """

    kind = "anthropic"

    def __init__(
        self,
        name: str,
        url: str = "https://api.anthropic.com",
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        stall_timeout_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        sent = {"anthropic-version": VERSION, **(headers or {})}
        if api_key:
            sent["x-api-key"] = api_key
        self._http = HttpSession(
            name,
            strip_version(url),
            _describe,
            headers=sent,
            timeout_s=timeout_s,
            stall_timeout_s=stall_timeout_s,
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """One complete answer.

        Raises:
            ModelError: the subclass says what failed (see ``docs/models.md``).
        """
        body = self.encode_request(request, stream=False)
        content, latency = await self._http.post("/v1/messages", body, model=request.model)
        try:
            answer = _message.decode(content)
        except msgspec.DecodeError as exc:
            raise self._http.malformed(request.model, "a message", content, exc) from exc
        text = "".join(block.text for block in answer.content if block.type == "text")
        calls = tuple(
            ToolCall(id=block.id, name=block.name, arguments=arguments_text(block.input or {}))
            for block in answer.content
            if block.type == "tool_use"
        )
        usage = answer.usage or _Usage()
        response = _response(
            request, answer.model, text, calls, answer.stop_reason, usage.inputs(), usage, latency
        )
        raise_if_leaked(self.name, request, response.message)
        return response

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Text chunks as ``text_delta`` events arrive, then one chunk carrying the whole
        response (after ``message_stop``).

        Use under ``contextlib.aclosing`` when you may stop early (closes the connection).

        Raises:
            ModelError: also mid-stream (an ``error`` event such as ``overloaded_error``,
                broken ``data``, a stall).
        """
        body = self.encode_request(request, stream=True)
        async with self._http.stream("/v1/messages", body, model=request.model) as stream:
            text: list[str] = []
            blocks: dict[int, list[str]] = {}  # index -> [id, name, start input, pieces...]
            model, stop = request.model, None
            inputs: int | None = None
            usage = _Usage()
            async with aclosing(stream.events()) as events:
                async for sse in events:
                    stream.check_deadline()
                    if not sse.data.strip():
                        continue
                    try:
                        event = _event.decode(sse.data)
                    except msgspec.DecodeError as exc:
                        raise self._http.malformed(
                            request.model, "an event", sse.data, exc
                        ) from exc
                    if event.type == "error":
                        error = event.error or _Error()
                        status = _STATUS_OF.get(error.type, 500)
                        raise self._http.stream_error(request.model, status, _said(error))
                    if event.type == "message_start" and event.message is not None:
                        model = event.message.model or model
                        usage = event.message.usage or usage
                        inputs = usage.inputs()
                    elif event.type == "content_block_start" and event.content_block is not None:
                        block = event.content_block
                        if block.type == "tool_use":
                            start = arguments_text(block.input or {})
                            blocks[event.index] = [block.id, block.name, start]
                        elif block.text:
                            text.append(block.text)
                            yield ChatChunk(text=block.text)
                    elif event.type == "content_block_delta" and event.delta is not None:
                        delta = event.delta
                        if delta.type == "text_delta" and delta.text:
                            text.append(delta.text)
                            yield ChatChunk(text=delta.text)
                        elif delta.type == "input_json_delta" and event.index in blocks:
                            blocks[event.index].append(delta.partial_json)
                    elif event.type == "message_delta":
                        if event.delta is not None:
                            stop = event.delta.stop_reason or stop
                        if event.usage is not None:
                            usage = _merge(usage, event.usage)
                            inputs = usage.inputs() if event.usage.input_tokens else inputs
                    elif event.type == "message_stop":
                        calls = tuple(
                            ToolCall(
                                id=parts[0],
                                name=parts[1],
                                arguments="".join(parts[3:]) or parts[2],
                            )
                            for _, parts in sorted(blocks.items())
                        )
                        response = _response(
                            request,
                            model,
                            "".join(text),
                            calls,
                            stop,
                            inputs,
                            usage,
                            stream.latency(),
                        )
                        raise_if_leaked(self.name, request, response.message)
                        yield ChatChunk(response=response)
                        return
        raise ModelOverloaded(
            self.name,
            request.model,
            "the SSE stream ended before message_stop; the server stopped mid-answer: retry or "
            "fall back to another model",
        )

    async def list_models(self) -> list[ModelInfo]:
        """What ``/v1/models`` lists (first page)."""
        content = await self._http.get("/v1/models")
        try:
            models = _models.decode(content)
        except msgspec.DecodeError as exc:
            raise self._http.malformed("", "a /v1/models answer", content, exc) from exc
        return [
            ModelInfo(
                name=m.id, details={"display_name": m.display_name, "created_at": m.created_at}
            )
            for m in models.data
        ]

    async def aclose(self) -> None:
        await self._http.aclose()

    def encode_request(self, request: ChatRequest, *, stream: bool) -> bytes:
        """The exact ``/v1/messages`` body for ``request``.

        Raises:
            ModelRequestRejected: ``tool_choice`` names a tool that is not offered.
        """
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        if system:
            body["system"] = system
        body["messages"] = _messages(request.messages)
        named = chosen_tool(self.name, request)
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ]
            choice = {"auto": "auto", "required": "any", "none": "none"}
            body["tool_choice"] = (
                {"type": "tool", "name": named.name}
                if named
                else {"type": choice[request.tool_choice]}
            )
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream"] = True
        return _encode(body)


def _merge(usage: _Usage, update: _Usage) -> _Usage:
    """``message_delta`` usage is cumulative and may repeat only some fields."""
    return _Usage(
        input_tokens=update.input_tokens if update.input_tokens is not None else usage.input_tokens,
        output_tokens=(
            update.output_tokens if update.output_tokens is not None else usage.output_tokens
        ),
        cache_creation_input_tokens=(
            update.cache_creation_input_tokens
            if update.cache_creation_input_tokens is not None
            else usage.cache_creation_input_tokens
        ),
        cache_read_input_tokens=(
            update.cache_read_input_tokens
            if update.cache_read_input_tokens is not None
            else usage.cache_read_input_tokens
        ),
    )


def _response(
    request: ChatRequest,
    model: str,
    text: str,
    calls: tuple[ToolCall, ...],
    stop: str | None,
    inputs: int | None,
    usage: _Usage,
    latency: float,
) -> ChatResponse:
    return ChatResponse(
        message=ChatMessage(role="assistant", content=text, tool_calls=calls),
        stop_reason=_STOP.get(stop or "end_turn", stop or "stop"),
        usage=Usage(input_tokens=inputs or 0, output_tokens=usage.output_tokens or 0),
        model=model or request.model,
        latency_s=latency,
    )


def _messages(messages: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    """Our messages as Anthropic turns: tool results ride in user turns, and a turn that
    follows results of the same role joins them (roles must alternate)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        if message.role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
            _append(out, "user", block)
        elif message.role == "assistant" and message.tool_calls:
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks += [
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": arguments_object(call.arguments),
                }
                for call in message.tool_calls
            ]
            out.append({"role": "assistant", "content": blocks})
        elif out and out[-1]["role"] == message.role and isinstance(out[-1]["content"], list):
            _append(out, message.role, {"type": "text", "text": message.content})
        else:
            out.append({"role": message.role, "content": message.content})
    return out


def _append(out: list[dict[str, Any]], role: str, block: dict[str, Any]) -> None:
    if out and out[-1]["role"] == role:
        last = out[-1]
        if not isinstance(last["content"], list):
            last["content"] = [{"type": "text", "text": last["content"]}]
        last["content"].append(block)
    else:
        out.append({"role": role, "content": [block]})
