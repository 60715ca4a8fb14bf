"""Small conversions every backend needs between agentrt's types and a provider's JSON.

Kept apart from the backends so the three translate the same things the same way: tool-call
arguments (text on our side, sometimes an object on theirs), call ids, tool choice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Final

import json_repair
import msgspec

from .._errors import ModelRequestRejected
from ._types import ChatMessage, ChatRequest, ToolDef

__all__ = [
    "CHOICES",
    "arguments_object",
    "arguments_text",
    "call_names",
    "chosen_tool",
    "stable_call_id",
    "strip_version",
]

CHOICES: Final = ("auto", "required", "none")
"""The tool choices that are not a tool's name."""

_encode = msgspec.json.Encoder().encode


def arguments_text(value: Any) -> str:
    """A provider's arguments as the text agentrt passes on: strings untouched (even invalid
    JSON: the gate repairs it, and the model's exact words are what a repair needs), objects
    encoded as compact JSON."""
    if isinstance(value, str):
        return value
    return _encode(value).decode()


def arguments_object(text: str) -> dict[str, Any]:
    """Our argument text as the object Ollama and Anthropic require in a replayed call.

    Only history is replayed this way; text that is not an object even after a repair becomes
    ``{}`` (the provider would refuse the whole request otherwise).
    """
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        value = json_repair.repair_json(text, return_objects=True, skip_json_loads=True)
    return value if isinstance(value, dict) else {}


def stable_call_id(index: int, name: str, arguments: str) -> str:
    """An id for a provider that gives none (Ollama): the same answer always gets the same ids,
    so a replayed or cached conversation stays byte-identical."""
    digest = hashlib.sha256(f"{index}\0{name}\0{arguments}".encode()).hexdigest()
    return f"call_{digest[:16]}"


def call_names(messages: Iterable[ChatMessage]) -> dict[str, str]:
    """Call id → tool name over the conversation, for ``tool`` messages that omit ``name``."""
    return {call.id: call.name for message in messages for call in message.tool_calls}


def chosen_tool(backend: str, request: ChatRequest) -> ToolDef | None:
    """The tool ``tool_choice`` names, ``None`` for auto/required/none.

    Raises:
        ModelRequestRejected: the named tool is not among the offered tools.
    """
    if request.tool_choice in CHOICES:
        return None
    for tool in request.tools:
        if tool.name == request.tool_choice:
            return tool
    offered = ", ".join(repr(tool.name) for tool in request.tools) or "none"
    raise ModelRequestRejected(
        backend,
        request.model,
        f"tool_choice {request.tool_choice!r} names no offered tool (offered: {offered}); "
        "use auto, required, none or the name of a tool in tools",
    )


def strip_version(url: str) -> str:
    """``https://api.openai.com/v1`` → ``https://api.openai.com``: the paths we send start
    with ``/v1``, and the SDKs' habit of configuring the base url with it is common."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url
