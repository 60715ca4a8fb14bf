"""Ollama over its own HTTP API: ``/api/chat`` (one JSON answer, or NDJSON when streaming),
``/api/tags`` and ``/api/show``.

What is sent: each tool's **full** JSON Schema as ``parameters`` (the ``ollama`` Python client
rebuilds schemas from a few known keys and drops the rest; the gate validates against the full
schema, so the model must see the same one), ``format`` with ``response_schema``, ``options``
(``temperature``, ``num_predict``) and always ``stream`` (Ollama streams unless told not to).
Ollama has no ``tool_choice``: ``none`` offers no tools, a tool's name offers only that tool,
``required`` cannot be enforced and offers them all.

What comes back: tool-call arguments as objects (re-encoded to JSON text; a string is passed
through as it is), no call ids (made up, stable), usage from ``prompt_eval_count`` /
``eval_count``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import msgspec

from .._errors import ModelOverloaded
from ._convert import arguments_object, arguments_text, call_names, chosen_tool, stable_call_id
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

__all__ = ["OllamaBackend"]

_CONTEXT: Final = re.compile(
    r"context (length|window|size)|prompt (is )?too long|too many tokens", re.IGNORECASE
)


class _Function(msgspec.Struct):
    name: str
    arguments: dict[str, Any] | str = msgspec.field(default_factory=dict)


class _ToolCall(msgspec.Struct):
    function: _Function
    id: str = ""


class _Message(msgspec.Struct):
    role: str = "assistant"
    content: str = ""
    tool_calls: list[_ToolCall] | None = None


class _Answer(msgspec.Struct):
    """One ``/api/chat`` answer, or one NDJSON line of a streamed one."""

    model: str = ""
    message: _Message | None = None
    done: bool = False
    done_reason: str = ""
    prompt_eval_count: int = 0
    eval_count: int = 0
    error: str | None = None


class _Tag(msgspec.Struct):
    name: str
    size: int = 0
    modified_at: str = ""
    digest: str = ""
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class _Tags(msgspec.Struct):
    models: list[_Tag] = msgspec.field(default_factory=list)


class _Show(msgspec.Struct):
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    model_info: dict[str, Any] = msgspec.field(default_factory=dict)
    capabilities: list[str] = msgspec.field(default_factory=list)
    parameters: str = ""


_answer = msgspec.json.Decoder(_Answer)
_tags = msgspec.json.Decoder(_Tags)
_show = msgspec.json.Decoder(_Show)
_encode = msgspec.json.Encoder().encode


def _describe(status: int, content: bytes) -> ProviderError:
    """Ollama's error body is ``{"error": "..."}``."""
    try:
        message = str(msgspec.json.decode(content).get("error", ""))
    except (msgspec.DecodeError, AttributeError):
        message = content.decode("utf-8", "replace").strip()[:500]
    return ProviderError(message, context_too_long=bool(_CONTEXT.search(message)))


class OllamaBackend:
    """An Ollama server (``ollama serve``, default ``http://127.0.0.1:11434``).

    Args:
        name: the backend's name in ``agentrt.toml`` (errors say it).
        url: the server's base url, without ``/api``.
        api_key: sent as a bearer token, for an Ollama behind an authenticating proxy.
        timeout_s: bound on one whole call.
        stall_timeout_s: a call fails when no byte arrives for this long.
        headers: extra headers on every request.
    """

    kind = "ollama"

    def __init__(
        self,
        name: str,
        url: str = "http://127.0.0.1:11434",
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
            url,
            _describe,
            headers=sent,
            timeout_s=timeout_s,
            stall_timeout_s=stall_timeout_s,
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """One complete answer (``stream: false``).

        Raises:
            ModelError: the subclass says what failed (see ``docs/models.md``).
        """
        content, latency = await self._http.post(
            "/api/chat", self.encode_request(request, stream=False), model=request.model
        )
        answer = self._decode(request.model, content)
        response = self._response(request, answer, answer.message or _Message(), latency)
        raise_if_leaked(self.name, request, response.message)
        return response

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Text chunks as NDJSON lines arrive, then one chunk carrying the whole response.

        Use under ``contextlib.aclosing`` when you may stop early (closes the connection).

        Raises:
            ModelError: also mid-stream (an ``{"error": ...}`` line, a broken line, a stall).
        """
        body = self.encode_request(request, stream=True)
        async with self._http.stream("/api/chat", body, model=request.model) as stream:
            text: list[str] = []
            calls: list[_ToolCall] = []
            async for line in stream.response.aiter_lines():
                stream.check_deadline()
                if not line.strip():
                    continue
                answer = self._decode(request.model, line.encode())
                if answer.message is not None:
                    if answer.message.content:
                        text.append(answer.message.content)
                        yield ChatChunk(text=answer.message.content)
                    calls.extend(answer.message.tool_calls or ())
                if answer.done:
                    whole = _Message(content="".join(text), tool_calls=calls)
                    response = self._response(request, answer, whole, stream.latency())
                    raise_if_leaked(self.name, request, response.message)
                    yield ChatChunk(response=response)
                    return
        raise ModelOverloaded(
            self.name,
            request.model,
            "the NDJSON stream ended without its final line (done: true); the server stopped "
            "mid-answer: retry or fall back to another model",
        )

    async def list_models(self) -> list[ModelInfo]:
        """The models the server has pulled (``/api/tags``)."""
        content = await self._http.get("/api/tags")
        try:
            tags = _tags.decode(content)
        except msgspec.DecodeError as exc:
            raise self._http.malformed("", "an /api/tags answer", content, exc) from exc
        return [
            ModelInfo(
                name=tag.name,
                size=tag.size,
                details={**tag.details, "modified_at": tag.modified_at, "digest": tag.digest},
            )
            for tag in tags.models
        ]

    async def show(self, model: str) -> ModelInfo:
        """One model's details, ``model_info`` (context length...) and capabilities
        (``/api/show``)."""
        content, _ = await self._http.post("/api/show", _encode({"model": model}), model=model)
        try:
            shown = _show.decode(content)
        except msgspec.DecodeError as exc:
            raise self._http.malformed(model, "an /api/show answer", content, exc) from exc
        return ModelInfo(
            name=model,
            details={
                "details": shown.details,
                "model_info": shown.model_info,
                "capabilities": shown.capabilities,
                "parameters": shown.parameters,
            },
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def encode_request(self, request: ChatRequest, *, stream: bool) -> bytes:
        """The exact ``/api/chat`` body for ``request``.

        Raises:
            ModelRequestRejected: ``tool_choice`` names a tool that is not offered.
        """
        body: dict[str, Any] = {
            "model": request.model,
            "messages": _messages(request.messages),
            "stream": stream,
        }
        named = chosen_tool(self.name, request)
        tools = () if request.tool_choice == "none" else (named,) if named else request.tools
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                }
                for tool in tools
            ]
        if request.response_schema is not None:
            body["format"] = request.response_schema
        options: dict[str, Any] = {}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if options:
            body["options"] = options
        return _encode(body)

    def _decode(self, model: str, content: bytes) -> _Answer:
        try:
            answer = _answer.decode(content)
        except msgspec.DecodeError as exc:
            raise self._http.malformed(model, "an /api/chat answer", content, exc) from exc
        if answer.error is not None:
            said = ProviderError(answer.error, context_too_long=bool(_CONTEXT.search(answer.error)))
            raise self._http.stream_error(model, 500, said)
        return answer

    def _response(
        self, request: ChatRequest, answer: _Answer, message: _Message, latency: float
    ) -> ChatResponse:
        calls = tuple(
            ToolCall(
                id=call.id or stable_call_id(index, call.function.name, arguments),
                name=call.function.name,
                arguments=arguments,
            )
            for index, call in enumerate(message.tool_calls or ())
            for arguments in (arguments_text(call.function.arguments),)
        )
        reason = answer.done_reason or "stop"
        if calls and reason == "stop":
            reason = "tool_calls"
        return ChatResponse(
            message=ChatMessage(role="assistant", content=message.content, tool_calls=calls),
            stop_reason=reason,
            usage=Usage(input_tokens=answer.prompt_eval_count, output_tokens=answer.eval_count),
            model=answer.model or request.model,
            latency_s=latency,
        )


def _messages(messages: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    names = call_names(messages)
    out: list[dict[str, Any]] = []
    for message in messages:
        entry: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            entry["tool_calls"] = [
                {"function": {"name": call.name, "arguments": arguments_object(call.arguments)}}
                for call in message.tool_calls
            ]
        if message.role == "tool":
            entry["tool_name"] = message.name or names.get(message.tool_call_id, "")
        out.append(entry)
    return out
