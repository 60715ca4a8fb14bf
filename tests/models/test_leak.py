"""The leaked-tool-call detector: what counts as a call written as text, and what does not."""

from __future__ import annotations

import pytest
from agentrt import MalformedModelOutput
from agentrt.models import ChatMessage, ChatRequest, ToolCall, ToolDef, find_leaked_tool_call
from agentrt.models._leak import raise_if_leaked

TOOLS = ("weather", "clock")
OBJ = "JSON object in the text"


@pytest.mark.parametrize(
    ("text", "form", "tool"),
    [
        ('{"name": "weather", "arguments": {"city": "Oslo"}}', OBJ, "weather"),
        ('{"name": "lookup", "parameters": {"q": 1}}', OBJ, "lookup"),
        ('Calling {"name": "clock", "arguments": "{}"} now', OBJ, "clock"),
        (
            '{"function": {"name": "clock", "arguments": {}}}',
            OBJ,
            "clock",
        ),
        ('[{"name": "clock", "arguments": {}}]', OBJ, "clock"),
        (
            '<tool_call>\n{"name": "clock", "arguments": {}}\n</tool_call>',
            "<tool_call> tag",
            "clock",
        ),
        ("<tool_call>clock()</tool_call>", "<tool_call> tag", ""),
        ('```json\n{"tool": "weather", "city": "Oslo"}\n```', "fenced JSON block", "weather"),
        ('```\n{"name": "clock"}\n```', "fenced JSON block", "clock"),
        ('[TOOL_CALLS][{"name": "clock", "arguments": {}}]', "[TOOL_CALLS] marker", "clock"),
        ('<|python_tag|>{"name": "weather", "parameters": {}}', "<|python_tag|> marker", "weather"),
    ],
)
def test_leaks_found(text: str, form: str, tool: str) -> None:
    leak = find_leaked_tool_call(text, TOOLS)
    assert leak is not None
    assert (leak.form, leak.tool) == (form, tool)


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Oslo is 4 C.",
        '{"city": "Oslo", "temp": 4}',  # a JSON answer, not a call
        '{"name": "Ada", "age": 36}',  # a name but no arguments
        '```json\n{"name": "not_offered"}\n```',  # fenced, but names no offered tool
        "```python\nprint('hi')\n```",
        "{ broken json",
        "",
    ],
)
def test_ordinary_text_is_not_a_leak(text: str) -> None:
    assert find_leaked_tool_call(text, TOOLS) is None


def test_raise_only_when_tools_were_offered_and_none_was_called() -> None:
    text = '{"name": "clock", "arguments": {}}'
    tools = (ToolDef(name="clock"),)
    user = (ChatMessage(role="user", content="time?"),)
    said = ChatMessage(role="assistant", content=text)
    called = ChatMessage(
        role="assistant", content=text, tool_calls=(ToolCall(id="1", name="clock", arguments=""),)
    )
    offered = ChatRequest(model="m", messages=user, tools=tools)
    raise_if_leaked("b", ChatRequest(model="m", messages=user), said)  # no tools offered
    raise_if_leaked(
        "b", ChatRequest(model="m", messages=user, tools=tools, tool_choice="none"), said
    )
    raise_if_leaked("b", offered, called)  # a real call came too
    with pytest.raises(MalformedModelOutput) as caught:
        raise_if_leaked("b", offered, said)
    assert caught.value.raw == text
    assert str(caught.value) == (
        "model 'm' on backend 'b': the model wrote a tool call to 'clock' as plain text (JSON "
        "object in the text) instead of using the tool-call field; call tools through the "
        "tool-call field, never in the message text"
    )
