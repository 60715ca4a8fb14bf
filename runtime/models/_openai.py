"""Any OpenAI-compatible server over ``/v1/chat/completions`` (OpenAI, llama.cpp's server,
vLLM...) and ``/v1/models``.

What is sent: ``tools`` with each tool's full JSON Schema as ``parameters``, ``tool_choice``
(``auto`` / ``required`` / ``none`` / ``{"type": "function", "function": {"name": ...}}``),
``response_format`` ``json_schema`` for ``response_schema``, ``temperature``, ``max_tokens``,
the key as ``Authorization: Bearer``; streams ask for ``stream_options.include_usage`` so the
last event carries the token counts.

What comes back: arguments are already JSON text and pass through untouched (invalid JSON
included: the gate repairs it); streamed tool calls arrive as deltas keyed by ``index`` (id and
name first, the arguments in pieces) and are assembled here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, Final

import msgspec

from .._errors import ModelOverloaded
from ._convert import arguments_text, chosen_tool, stable_call_id, strip_version
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

__all__ = ["OpenAIBackend"]

_CONTEXT: Final = re.compile(
    r"context[_ ](length|window|size)|maximum context|exceed_context_size", re.IGNORECASE
)


class _Function(msgspec.Struct):
    name: str = ""
    arguments: str | dict[str, Any] | None = None


class _ToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None
    refusal: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Error(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class _Completion(msgspec.Struct):
    """A ``chat.completion`` or one ``chat.completion.chunk`` (or an error in the stream)."""

    model: str = ""
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: _Error | str | None = None


class _Model(msgspec.Struct):
    id: str
    created: int = 0
    owned_by: str = ""


class _Models(msgspec.Struct):
    data: list[_Model] = msgspec.field(default_factory=list)


_completion = msgspec.json.Decoder(_Completion)
_models = msgspec.json.Decoder(_Models)
_encode = msgspec.json.Encoder().encode


def _said(error: _Error | str) -> ProviderError:
    if isinstance(error, str):
        return ProviderError(error, context_too_long=bool(_CONTEXT.search(error)))
    context = error.code == "context_length_exceeded" or bool(_CONTEXT.search(error.message))
    return ProviderError(error.message, context_too_long=context)


def _describe(status: int, content: bytes) -> ProviderError:
    """``{"error": {"message", "type", "param", "code"}}`` (some servers: ``{"error": "..."}``
    or ``{"detail": ...}``)."""
    try:
        body = _completion.decode(content)
    except msgspec.DecodeError:
        body = _Completion()
    if body.error is not None:
        return _said(body.error)
    text = content.decode("utf-8", "replace").strip()[:500]
    return ProviderError(text, context_too_long=bool(_CONTEXT.search(text)))


class OpenAIBackend:
    """An OpenAI-compatible server.

    Args:
        name: the backend's name in ``agentrt.toml`` (errors say it).
        url: the base url *without* ``/v1`` (``https://api.openai.com``,
            ``http://127.0.0.1:8080`` for llama.cpp).
        api_key: sent as ``Authorization: Bearer``; local servers usually need none.
        timeout_s: bound on one whole call.
        stall_timeout_s: a call fails when no byte arrives for this long.
        headers: extra headers on every request (``OpenAI-Organization``...).
    """

    kind = "openai"

    def __init__(
        self,
        name: str,
        url: str = "https://api.openai.com",
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        stall_timeout_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        sent = dict(headers or {})
        if api_key:
            sent["authorization"] = f"Bearer {api_key}"
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
        content, latency = await self._http.post("/v1/chat/completions", body, model=request.model)
        completion = self._decode(request.model, content)
        choice = completion.choices[0] if completion.choices else _Choice()
        message = choice.message or _Message()
        calls = tuple(
            _call(index, call.id or "", call.function.name if call.function else "", arguments)
            for index, call in enumerate(message.tool_calls or ())
            for arguments in (_arguments(call.function),)
        )
        response = self._response(
            request,
            completion,
            message.content or message.refusal or "",
            calls,
            choice.finish_reason,
            completion.usage,
            latency,
        )
        raise_if_leaked(self.name, request, response.message)
        return response

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Text chunks as SSE events arrive, then one chunk carrying the whole response.

        Use under ``contextlib.aclosing`` when you may stop early (closes the connection).

        Raises:
            ModelError: also mid-stream (an ``error`` event, broken ``data``, a stall).
        """
        body = self.encode_request(request, stream=True)
        async with self._http.stream("/v1/chat/completions", body, model=request.model) as stream:
            text: list[str] = []
            calls: dict[int, list[str]] = {}  # index -> [id, name, argument pieces...]
            finish: str | None = None
            usage: _Usage | None = None
            last = _Completion()
            done = False
            async with aclosing(stream.events()) as events:
                async for event in events:
                    stream.check_deadline()
                    if event.data.strip() == "[DONE]":
                        done = True
                        break
                    if not event.data.strip():
                        continue
                    last = chunk = self._decode(request.model, event.data.encode())
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        finish = choice.finish_reason or finish
                        delta = choice.delta or choice.message
                        if delta is None:
                            continue
                        if delta.content:
                            text.append(delta.content)
                            yield ChatChunk(text=delta.content)
                        for call in delta.tool_calls or ():
                            parts = calls.setdefault(call.index, ["", ""])
                            parts[0] = call.id or parts[0]
                            if call.function is not None:
                                parts[1] = call.function.name or parts[1]
                                parts.append(_arguments(call.function))
            if not done and finish is None:
                raise ModelOverloaded(
                    self.name,
                    request.model,
                    "the SSE stream ended before its last event (no finish_reason, no [DONE]); "
                    "the server stopped mid-answer: retry or fall back to another model",
                )
            assembled = tuple(
                _call(index, parts[0], parts[1], "".join(parts[2:]))
                for index, parts in sorted(calls.items())
            )
            response = self._response(
                request, last, "".join(text), assembled, finish, usage, stream.latency()
            )
            raise_if_leaked(self.name, request, response.message)
            yield ChatChunk(response=response)

    async def list_models(self) -> list[ModelInfo]:
        """What ``/v1/models`` lists (ids only: the API reports no sizes)."""
        content = await self._http.get("/v1/models")
        try:
            models = _models.decode(content)
        except msgspec.DecodeError as exc:
            raise self._http.malformed("", "a /v1/models answer", content, exc) from exc
        return [
            ModelInfo(name=m.id, details={"owned_by": m.owned_by, "created": m.created})
            for m in models.data
        ]

    async def aclose(self) -> None:
        await self._http.aclose()

    def encode_request(self, request: ChatRequest, *, stream: bool) -> bytes:
        """The exact ``/v1/chat/completions`` body for ``request``.

        Raises:
            ModelRequestRejected: ``tool_choice`` names a tool that is not offered.
        """
        body: dict[str, Any] = {
            "model": request.model,
            "messages": _messages(request.messages),
        }
        named = chosen_tool(self.name, request)
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                }
                for tool in request.tools
            ]
            body["tool_choice"] = (
                {"type": "function", "function": {"name": named.name}}
                if named
                else request.tool_choice
            )
        if request.response_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": request.response_schema},
            }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        return _encode(body)

    def _decode(self, model: str, content: bytes) -> _Completion:
        try:
            completion = _completion.decode(content)
        except msgspec.DecodeError as exc:
            raise self._http.malformed(model, "a chat completion", content, exc) from exc
        if completion.error is not None:
            said = _said(completion.error)
            code = "" if isinstance(completion.error, str) else str(completion.error.code or "")
            status = 429 if "rate_limit" in code else 400 if said.context_too_long else 500
            raise self._http.stream_error(model, status, said)
        return completion

    def _response(
        self,
        request: ChatRequest,
        completion: _Completion,
        text: str,
        calls: tuple[ToolCall, ...],
        finish: str | None,
        usage: _Usage | None,
        latency: float,
    ) -> ChatResponse:
        reason = finish or "stop"
        if calls and reason == "stop":
            reason = "tool_calls"  # some compatible servers say stop after a tool call
        usage = usage or _Usage()
        return ChatResponse(
            message=ChatMessage(role="assistant", content=text, tool_calls=calls),
            stop_reason=reason,
            usage=Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens),
            model=completion.model or request.model,
            latency_s=latency,
        )


def _call(index: int, id: str, name: str, arguments: str) -> ToolCall:
    """A call; servers that omit the id (some llama.cpp builds) get a stable one."""
    return ToolCall(id=id or stable_call_id(index, name, arguments), name=name, arguments=arguments)


def _arguments(function: _Function | None) -> str:
    if function is None or function.arguments is None:
        return ""
    return arguments_text(function.arguments)


def _messages(messages: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "tool":
            entry: dict[str, Any] = {
                "role": "tool",
                "tool_call_id": message.tool_call_id,
                "content": message.content,
            }
        elif message.tool_calls:
            entry = {
                "role": "assistant",
                "content": message.content,  # a string even when empty: llama.cpp refuses null
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for call in message.tool_calls
                ],
            }
        else:
            entry = {"role": message.role, "content": message.content}
        out.append(entry)
    return out
