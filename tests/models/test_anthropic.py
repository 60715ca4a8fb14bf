"""AnthropicBackend against the Anthropic double: blocks, SSE events, every failure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from agentrt import (
    ContextTooLong,
    MalformedModelOutput,
    ModelOverloaded,
    ModelRequestRejected,
    ModelTimeout,
    RateLimited,
)
from agentrt.models import AnthropicBackend, ChatMessage, ChatRequest, ToolCall, make_backend

from .common import ASK, CLOCK, RICH_SCHEMA, WEATHER, collect
from .doubles import Call, ModelDouble, Reply

PREFIX = "model 'claude-test' on backend 'claude': "


@pytest.fixture
async def backend(anthropic_double: ModelDouble) -> AsyncIterator[AnthropicBackend]:
    backend = AnthropicBackend("claude", anthropic_double.url, api_key="sk-ant", stall_timeout_s=5)
    yield backend
    await backend.aclose()


def request(**kw: Any) -> ChatRequest:
    return ChatRequest(model=kw.pop("model", "claude-test"), messages=kw.pop("messages", ASK), **kw)


async def test_plain_chat_sends_exactly_this(
    backend: AnthropicBackend, anthropic_double: ModelDouble
) -> None:
    anthropic_double.push(Reply.text("Hello.", input_tokens=12, output_tokens=3))
    response = await backend.chat(request(temperature=0.5))
    assert response.message == ChatMessage(role="assistant", content="Hello.")
    assert (response.stop_reason, response.model) == ("stop", "claude-test")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (12, 3)
    [sent] = anthropic_double.requests
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == "sk-ant"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.body == {
        "model": "claude-test",
        "max_tokens": 4096,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0.5,
    }


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ("weather", {"type": "tool", "name": "weather"}),
    ],
)
async def test_tools_and_tool_choice(
    backend: AnthropicBackend, anthropic_double: ModelDouble, choice: str, sent: Any
) -> None:
    await backend.chat(request(tools=(WEATHER, CLOCK), tool_choice=choice, max_tokens=99))
    body = anthropic_double.requests[0].body
    assert body["tools"] == [
        {"name": "weather", "description": "Weather for a city.", "input_schema": RICH_SCHEMA},
        {"name": "clock", "description": "The time.", "input_schema": {"type": "object"}},
    ]
    assert body["tool_choice"] == sent
    assert body["max_tokens"] == 99


async def test_streamed_chat_events(
    backend: AnthropicBackend, anthropic_double: ModelDouble
) -> None:
    anthropic_double.push(Reply.text("x y z", chunks=["x ", "y ", "z"], output_tokens=5))
    chunks = await collect(backend, request())
    assert [c.text for c in chunks[:-1]] == ["x ", "y ", "z"]
    final = chunks[-1].response
    assert final is not None
    assert final.message.content == "x y z"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 5)
    assert final.stop_reason == "stop"
    assert anthropic_double.requests[0].body["stream"] is True


async def test_tool_use_and_tool_results_round_trip(
    backend: AnthropicBackend, anthropic_double: ModelDouble
) -> None:
    anthropic_double.push(
        Reply.tool_calls(
            Call("weather", '{"city": "Oslo"}'), Call("clock", "{}"), content="Let me check."
        )
    )
    first = await backend.chat(request(tools=(WEATHER, CLOCK)))
    assert first.message == ChatMessage(
        role="assistant",
        content="Let me check.",
        tool_calls=(
            ToolCall(id="toolu_d1x0", name="weather", arguments='{"city":"Oslo"}'),
            ToolCall(id="toolu_d1x1", name="clock", arguments="{}"),
        ),
    )
    assert first.stop_reason == "tool_calls"
    follow_up = (
        *ASK,
        first.message,
        ChatMessage(role="tool", tool_call_id="toolu_d1x0", content="4 C"),
        ChatMessage(role="tool", tool_call_id="toolu_d1x1", content="12:00"),
        ChatMessage(role="user", content="And tomorrow?"),
    )
    await backend.chat(request(messages=follow_up, tools=(WEATHER, CLOCK)))
    assert anthropic_double.requests[1].body["messages"] == [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_d1x0",
                    "name": "weather",
                    "input": {"city": "Oslo"},
                },
                {"type": "tool_use", "id": "toolu_d1x1", "name": "clock", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_d1x0", "content": "4 C"},
                {"type": "tool_result", "tool_use_id": "toolu_d1x1", "content": "12:00"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


async def test_streamed_input_json_deltas_pass_through_even_when_invalid(
    backend: AnthropicBackend, anthropic_double: ModelDouble
) -> None:
    anthropic_double.push(
        Reply.tool_calls(Call("weather", '{"city": "Oslo", "days": 2}'), Call("clock", '{"tz": '))
    )
    chunks = await collect(backend, request(tools=(WEATHER, CLOCK)))
    final = chunks[-1].response
    assert final is not None
    assert final.message.tool_calls == (
        ToolCall(id="toolu_d1x0", name="weather", arguments='{"city": "Oslo", "days": 2}'),
        ToolCall(id="toolu_d1x1", name="clock", arguments='{"tz": '),
    )
    assert final.stop_reason == "tool_calls"


async def test_list_models_and_factory(anthropic_double: ModelDouble) -> None:
    backend = make_backend("anthropic", name="claude", url=anthropic_double.url, api_key="k")
    models = await backend.list_models()
    await backend.aclose()
    assert [m.name for m in models] == ["tiny:1b", "small:3b"]
    assert anthropic_double.requests[0].headers["x-api-key"] == "k"


# -- errors -----------------------------------------------------------------------------------


async def test_529_overloaded(backend: AnthropicBackend, anthropic_double: ModelDouble) -> None:
    anthropic_double.push(Reply.error(529))
    with pytest.raises(ModelOverloaded) as caught:
        await backend.chat(request())
    assert caught.value.status == 529
    assert str(caught.value) == PREFIX + (
        "the server failed or is overloaded (HTTP 529): overloaded_error: Overloaded; retry "
        "later or fall back to another model"
    )


async def test_429_with_http_date(backend: AnthropicBackend, anthropic_double: ModelDouble) -> None:
    anthropic_double.push(Reply.error(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"))
    with pytest.raises(RateLimited) as caught:
        await backend.chat(request())
    assert caught.value.retry_after == 0.0  # a date in the past: retry now
    assert str(caught.value) == PREFIX + (
        "rate limited (HTTP 429): rate_limit_error: Number of request tokens has exceeded your "
        "per-minute rate limit; retry after 0 s"
    )


async def test_prompt_is_too_long(backend: AnthropicBackend, anthropic_double: ModelDouble) -> None:
    anthropic_double.push(Reply.error(400, "prompt is too long: 208310 tokens > 200000 maximum"))
    with pytest.raises(ContextTooLong) as caught:
        await backend.chat(request())
    assert str(caught.value) == PREFIX + (
        "the prompt does not fit the model's context window (HTTP 400): invalid_request_error: "
        "prompt is too long: 208310 tokens > 200000 maximum; shorten the conversation or use a "
        "model with a larger context"
    )


async def test_bad_key_is_rejected(
    backend: AnthropicBackend, anthropic_double: ModelDouble
) -> None:
    anthropic_double.push(Reply.error(401))
    with pytest.raises(ModelRequestRejected) as caught:
        await backend.chat(request())
    assert str(caught.value) == PREFIX + (
        "the server refused the request (HTTP 401): authentication_error: invalid x-api-key; fix "
        "the request or the backend's configuration (url, api_key, model name): retrying it "
        "unchanged will not help"
    )


async def test_overloaded_error_event_mid_stream(
    backend: AnthropicBackend, anthropic_double: ModelDouble
) -> None:
    anthropic_double.push(Reply.error(529, mid_stream=True))
    with pytest.raises(ModelOverloaded) as caught:
        await collect(backend, request())
    assert str(caught.value) == PREFIX + (
        "the server failed or is overloaded (error in the stream): overloaded_error: Overloaded; "
        "retry later or fall back to another model"
    )


async def test_rate_limit_error_event_mid_stream(
    backend: AnthropicBackend, anthropic_double: ModelDouble
) -> None:
    anthropic_double.push(Reply.error(429, "slow down", mid_stream=True))
    with pytest.raises(RateLimited) as caught:
        await collect(backend, request())
    assert caught.value.retry_after == 1.0


async def test_broken_event_data_is_malformed(
    backend: AnthropicBackend, anthropic_double: ModelDouble
) -> None:
    anthropic_double.push(Reply.malformed())
    with pytest.raises(MalformedModelOutput) as caught:
        await collect(backend, request())
    assert caught.value.raw == '{"type":"content_block_delta","ind'
    assert str(caught.value) == PREFIX + (
        "the server sent an event that is not valid JSON (Input data was truncated); the server "
        "or a proxy in between is broken"
    )


async def test_close_mid_stream(backend: AnthropicBackend, anthropic_double: ModelDouble) -> None:
    anthropic_double.push(Reply.close_mid_stream())
    with pytest.raises(ModelOverloaded) as caught:
        await collect(backend, request())
    assert str(caught.value) == PREFIX + (
        f"the connection to {anthropic_double.url} broke before the answer was complete "
        "(peer closed connection without sending complete message body (incomplete chunked "
        "read)); the server crashed or restarted: retry or fall back to another model"
    )


async def test_stall_is_a_timeout(anthropic_double: ModelDouble) -> None:
    backend = AnthropicBackend("claude", anthropic_double.url, stall_timeout_s=0.2)
    anthropic_double.push(Reply.stall("first_chunk"), Reply.stall("request"))
    with trio.fail_after(10):
        with pytest.raises(ModelTimeout) as caught:
            await collect(backend, request())
        with pytest.raises(ModelTimeout):
            await backend.chat(request())
    await backend.aclose()
    assert str(caught.value) == PREFIX + (
        f"{anthropic_double.url} sent no byte for 0.2 s (stall_timeout_s=0.2, timeout_s=120): "
        "the server is stuck or overloaded; raise stall_timeout_s or use another model"
    )


async def test_leaked_fenced_tool_call(
    backend: AnthropicBackend, anthropic_double: ModelDouble
) -> None:
    leaked = 'I will call it:\n```json\n{"tool": "weather", "city": "Oslo"}\n```'
    anthropic_double.push(Reply.text(leaked))
    with pytest.raises(MalformedModelOutput) as caught:
        await backend.chat(request(tools=(WEATHER,)))
    assert caught.value.raw == leaked
    assert str(caught.value) == PREFIX + (
        "the model wrote a tool call to 'weather' as plain text (fenced JSON block) instead of "
        "using the tool-call field; call tools through the tool-call field, never in the "
        "message text"
    )
