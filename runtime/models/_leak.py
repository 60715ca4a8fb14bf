"""Tool calls leaked into plain text: one detector for every backend.

Small models offered tools often *write* the call in their answer instead of using the
provider's tool-call field: a bare JSON object ``{"name": ..., "arguments": ...}``, a Hermes /
Qwen ``<tool_call>...</tool_call>`` tag, a fenced JSON block naming a tool, Mistral's
``[TOOL_CALLS]`` or Llama's ``<|python_tag|>`` marker. Such an answer looks like a final text
reply, and an agent that accepted it would hand the user a JSON blob. So a backend that offered
tools and got no tool call runs ``raise_if_leaked``: the ``ToolCallAsText`` it raises carries
the text and tells the model what to do instead (the scheduler passes it to the caller; the LLM
agent feeds it back to the model, and repeats count towards escalation).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final

from .._errors import ToolCallAsText
from ._types import ChatMessage, ChatRequest

__all__ = ["Leak", "find_leaked_tool_call", "raise_if_leaked"]

_TAG: Final = re.compile(r"<(tool_call|function_call|tool_use)>", re.IGNORECASE)
_MARKERS: Final = ("[TOOL_CALLS]", "<|python_tag|>", "<|tool_call|>")
_FENCE: Final = re.compile(r"```[ \t]*([\w-]*)[ \t]*\n(.*?)```", re.DOTALL)
_ARGUMENT_KEYS: Final = ("arguments", "parameters", "args", "input")
_MAX_SCAN: Final = 200_000  # characters; longer answers are not scanned for bare objects
_DECODER: Final = json.JSONDecoder()


class Leak:
    """A tool call found in text: how it was written and, when readable, the tool's name."""

    __slots__ = ("form", "tool")

    def __init__(self, form: str, tool: str = "") -> None:
        self.form, self.tool = form, tool

    def __repr__(self) -> str:
        return f"Leak(form={self.form!r}, tool={self.tool!r})"


def find_leaked_tool_call(text: str, tools: Iterable[str]) -> Leak | None:
    """The first tool call written as text in ``text``, or ``None``.

    ``tools`` are the offered tool names: a fenced block counts only if it names one of them
    (plenty of honest answers contain fenced JSON); a bare object counts if it has the shape
    of a call (a string ``name`` and an argument object), whatever the name.
    """
    offered = set(tools)
    tag = _TAG.search(text)
    if tag is not None:
        return Leak(f"<{tag.group(1).lower()}> tag", _name_after(text, tag.end(), offered))
    for marker in _MARKERS:
        at = text.find(marker)
        if at >= 0:
            return Leak(f"{marker} marker", _name_after(text, at + len(marker), offered))
    for fence in _FENCE.finditer(text):
        name = _call_name(_loads(fence.group(2)), offered, need_offered=True)
        if name:
            return Leak("fenced JSON block", name)
    if len(text) <= _MAX_SCAN:
        at = text.find("{")
        while at >= 0:
            try:
                value, end = _DECODER.raw_decode(text, at)
            except ValueError:
                at = text.find("{", at + 1)
                continue
            name = _call_name(value, offered, need_offered=False)
            if name:
                return Leak("JSON object in the text", name)
            at = text.find("{", end)
    return None


def raise_if_leaked(backend: str, request: ChatRequest, message: ChatMessage) -> None:
    """Raise ``ToolCallAsText`` when tools were offered, none was called, and the text
    carries a call.

    Raises:
        ToolCallAsText: (a ``MalformedModelOutput``) with ``raw`` set to the whole text.
    """
    if not request.tools or request.tool_choice == "none" or message.tool_calls:
        return
    leak = find_leaked_tool_call(message.content, (tool.name for tool in request.tools))
    if leak is None:
        return
    target = f" to {leak.tool!r}" if leak.tool else ""
    raise ToolCallAsText(
        backend,
        request.model,
        f"the model wrote a tool call{target} as plain text ({leak.form}) instead of using "
        "the tool-call field; call tools through the tool-call field, never in the message text",
        raw=message.content,
    )


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call_name(value: Any, offered: set[str], *, need_offered: bool) -> str:
    """The tool name if ``value`` is shaped like a call (or a list of calls)."""
    if isinstance(value, list):
        for item in value:
            found = _call_name(item, offered, need_offered=need_offered)
            if found:
                return found
        return ""
    if not isinstance(value, dict):
        return ""
    function = value.get("function")
    if isinstance(function, dict):
        return _call_name(function, offered, need_offered=need_offered)
    calls = value.get("tool_calls")
    if isinstance(calls, list):
        return _call_name(calls, offered, need_offered=need_offered)
    name = value.get("name", value.get("tool"))
    if not isinstance(name, str) or not name:
        return ""
    if need_offered:
        return name if name in offered else ""
    if any(isinstance(value.get(key), dict) for key in _ARGUMENT_KEYS):
        return name
    if isinstance(value.get("arguments"), str):  # OpenAI's shape: arguments as JSON text
        return name
    return ""


def _name_after(text: str, start: int, offered: set[str]) -> str:
    """Best effort: the tool named by the JSON right after a tag or marker."""
    at = text.find("{", start)
    if at < 0:
        at = text.find("[", start)
    if at < 0:
        return ""
    try:
        value, _ = _DECODER.raw_decode(text, at)
    except ValueError:
        return ""
    return _call_name(value, offered, need_offered=False) or _call_name(
        value, offered, need_offered=True
    )
