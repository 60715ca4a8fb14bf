"""What every model backend speaks: one provider-neutral chat request and response.

Backends translate these to and from their wire protocol (Ollama ``/api/chat``, OpenAI
``/v1/chat/completions``, Anthropic ``/v1/messages``); the scheduler and the LLM agent only see
these types, so a model can move between tiers and providers without the agent noticing.

Tool schemas travel untouched: ``ToolDef.parameters`` is the full JSON Schema the tool declares
(some provider clients reduce it to a few keys; agentrt never does, because the gate validates
against the full schema and the model should be shown the same contract).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

__all__ = [
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ChatResponse",
    "ModelBackend",
    "ModelInfo",
    "ToolCall",
    "ToolDef",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]


class ToolDef(msgspec.Struct, frozen=True, kw_only=True):
    """A tool offered to the model: name, description and the tool's full input JSON Schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object"})


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call the model proposed.

    ``arguments`` is what the model wrote, as text, unparsed: the gate repairs and validates it
    (providers that send an object have it re-encoded as JSON text, so there is one path).
    ``id`` is the provider's call id (Ollama has none: the backend makes one up), needed to send
    the result back.
    """

    id: str
    name: str
    arguments: str


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One message of a conversation.

    ``tool_calls`` only on assistant messages; ``tool_call_id`` and ``name`` only on ``tool``
    messages (the result of one call, as text — JSON for structured results).
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens the provider reports for one call (0 where it reports nothing)."""

    input_tokens: int = 0
    output_tokens: int = 0


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A provider-neutral chat call.

    Attributes:
        model: the provider's model name (``llama3.2:1b``, ``gpt-4o-mini``, ``claude-...``).
        tool_choice: ``auto`` (model decides), ``required`` (must call some tool), ``none``, or
            a tool name (must call that tool).
        response_schema: ask for a JSON reply matching this schema (Ollama ``format``, OpenAI
            ``response_format``); backends that cannot enforce it ignore it.
        max_tokens: output token limit (Anthropic requires one: its backend defaults it).
    """

    model: str
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolDef, ...] = ()
    tool_choice: str = "auto"
    response_schema: dict[str, Any] | None = None
    temperature: float | None = None
    max_tokens: int | None = None


class ChatResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The model's complete answer to one ``ChatRequest``.

    Attributes:
        message: the assistant message (text and/or tool calls).
        stop_reason: normalised: ``stop``, ``tool_calls``, ``length`` or the provider's own word.
        usage: tokens in and out, as the provider reported them.
        model: the model that answered, as the provider names it.
        latency_s: wall time of the HTTP exchange, first byte sent to last byte received.
    """

    message: ChatMessage
    stop_reason: str
    usage: Usage
    model: str
    latency_s: float = 0.0


class ChatChunk(msgspec.Struct, frozen=True, kw_only=True):
    """One streamed piece: text as it arrives; the last chunk carries ``response``."""

    text: str = ""
    response: ChatResponse | None = None


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A model a backend can serve (Ollama ``/api/tags``; others report what they can)."""

    name: str
    size: int = 0
    details: dict[str, Any] = msgspec.field(default_factory=dict)


@runtime_checkable
class ModelBackend(Protocol):
    """A model provider over its real HTTP protocol.

    ``name`` is the backend's name in ``agentrt.toml`` (``local``, ``openai``...), ``kind`` the
    protocol (``ollama``, ``openai``, ``anthropic``). Every method raises a ``ModelError``
    subclass on failure (never a raw ``httpx`` exception) and honours the caller's trio cancel
    scope (deadlines are the caller's).
    """

    name: str
    kind: str

    async def chat(self, request: ChatRequest) -> ChatResponse: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...

    async def list_models(self) -> list[ModelInfo]: ...

    async def aclose(self) -> None: ...
