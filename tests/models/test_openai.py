"""OpenAIBackend against the OpenAI double: what is sent, SSE assembly, every failure."""

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
from agentrt.models import (
    ChatMessage,
    ChatRequest,
    OpenAIBackend,
    ToolCall,
    make_backend,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .common import ASK, CLOCK, RICH_SCHEMA, WEATHER, collect
from .doubles import Call, ModelDouble, Reply, serve_double

PREFIX = "model 'gpt-test' on backend 'remote': "


@pytest.fixture
async def backend(openai_double: ModelDouble) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend("remote", openai_double.url, api_key="sk-test", stall_timeout_s=5)
    yield backend
    await backend.aclose()


def request(**kw: Any) -> ChatRequest:
    return ChatRequest(model=kw.pop("model", "gpt-test"), messages=kw.pop("messages", ASK), **kw)


async def test_plain_chat_sends_exactly_this(
    backend: OpenAIBackend, openai_double: ModelDouble
) -> None:
    openai_double.push(Reply.text("Hello.", input_tokens=9, output_tokens=2))
    response = await backend.chat(request(temperature=0.0, max_tokens=50))
    assert response.message == ChatMessage(role="assistant", content="Hello.")
    assert (response.stop_reason, response.model) == ("stop", "gpt-test")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (9, 2)
    [sent] = openai_double.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "temperature": 0.0,
        "max_tokens": 50,
        "stream": False,
    }


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", "auto"),
        ("required", "required"),
        ("none", "none"),
        ("clock", {"type": "function", "function": {"name": "clock"}}),
    ],
)
async def test_tools_tool_choice_and_response_format(
    backend: OpenAIBackend, openai_double: ModelDouble, choice: str, sent: Any
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await backend.chat(request(tools=(WEATHER, CLOCK), tool_choice=choice, response_schema=schema))
    body = openai_double.requests[0].body
    assert body["tools"][0] == {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather for a city.",
            "parameters": RICH_SCHEMA,
        },
    }
    assert body["tool_choice"] == sent
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }


async def test_streamed_chat_with_usage(backend: OpenAIBackend, openai_double: ModelDouble) -> None:
    openai_double.push(Reply.text("a b c", chunks=["a ", "b ", "c"], output_tokens=3))
    chunks = await collect(backend, request())
    assert [c.text for c in chunks[:-1]] == ["a ", "b ", "c"]
    final = chunks[-1].response
    assert final is not None
    assert final.message.content == "a b c"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 3)
    body = openai_double.requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_tool_call_round_trip(backend: OpenAIBackend, openai_double: ModelDouble) -> None:
    openai_double.push(Reply.tool_call("weather", '{"city": "Oslo"}'))
    first = await backend.chat(request(tools=(WEATHER,)))
    [call] = first.message.tool_calls
    assert call == ToolCall(id="call_d1x0", name="weather", arguments='{"city": "Oslo"}')
    assert first.stop_reason == "tool_calls" and first.message.content == ""
    follow_up = (
        *ASK,
        first.message,
        ChatMessage(role="tool", tool_call_id=call.id, name="weather", content="4 C"),
    )
    await backend.chat(request(messages=follow_up, tools=(WEATHER,)))
    assert openai_double.requests[1].body["messages"][2:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_d1x0",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_d1x0", "content": "4 C"},
    ]


async def test_streamed_tool_call_deltas_are_assembled_by_index(
    backend: OpenAIBackend, openai_double: ModelDouble
) -> None:
    openai_double.push(
        Reply.tool_calls(
            Call("weather", '{"city": "Oslo", "days": 3}'), Call("clock", '{"tz": "UTC"'),
            content="Checking.",
        )
    )  # fmt: skip
    chunks = await collect(backend, request(tools=(WEATHER, CLOCK)))
    final = chunks[-1].response
    assert final is not None
    assert final.message.content == "Checking."
    assert final.message.tool_calls == (
        ToolCall(id="call_d1x0", name="weather", arguments='{"city": "Oslo", "days": 3}'),
        ToolCall(id="call_d1x1", name="clock", arguments='{"tz": "UTC"'),
    )
    assert final.stop_reason == "tool_calls"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(arguments=st.text(min_size=1, max_size=200))
async def test_any_arguments_text_survives_unchanged(arguments: str) -> None:
    async with serve_double("openai") as double:
        backend = OpenAIBackend("remote", double.url)
        double.push(Reply.tool_call("clock", arguments), Reply.tool_call("clock", arguments))
        whole = await backend.chat(request(tools=(CLOCK,)))
        chunks = await collect(backend, request(tools=(CLOCK,)))
        await backend.aclose()
    streamed = chunks[-1].response
    assert streamed is not None
    assert whole.message.tool_calls[0].arguments == arguments
    assert streamed.message.tool_calls[0].arguments == arguments


async def test_list_models(backend: OpenAIBackend, openai_double: ModelDouble) -> None:
    models = await backend.list_models()
    assert [m.name for m in models] == ["tiny:1b", "small:3b"]
    assert models[0].details["owned_by"] == "system"
    assert openai_double.requests[0].path == "/v1/models"


async def test_make_backend(openai_double: ModelDouble) -> None:
    backend = make_backend("openai", name="remote", url=openai_double.url, api_key="k")
    assert isinstance(backend, OpenAIBackend) and backend.name == "remote"
    await backend.chat(request())
    await backend.aclose()
    assert openai_double.requests[0].headers["authorization"] == "Bearer k"
    with pytest.raises(ValueError) as caught:
        make_backend("gemini", name="x", url="http://127.0.0.1:1")
    assert str(caught.value) == (
        "backend 'x': unknown kind 'gemini'; use one of anthropic, ollama, openai"
    )


# -- errors -----------------------------------------------------------------------------------


async def test_429_retry_after_ms(backend: OpenAIBackend, openai_double: ModelDouble) -> None:
    openai_double.push(Reply.error(429, headers=[("retry-after-ms", "1500")], retry_after="2"))
    with pytest.raises(RateLimited) as caught:
        await backend.chat(request())
    assert caught.value.retry_after == 1.5
    assert str(caught.value) == PREFIX + (
        "rate limited (HTTP 429): Rate limit reached for requests; retry after 1.5 s"
    )


async def test_503_is_overloaded(backend: OpenAIBackend, openai_double: ModelDouble) -> None:
    openai_double.push(Reply.error(503))
    with pytest.raises(ModelOverloaded) as caught:
        await backend.chat(request())
    assert str(caught.value) == PREFIX + (
        "the server failed or is overloaded (HTTP 503): The server had an error while "
        "processing your request. Sorry!; retry later or fall back to another model"
    )


async def test_context_length_exceeded(backend: OpenAIBackend, openai_double: ModelDouble) -> None:
    words = (
        "This model's maximum context length is 8192 tokens. However, your messages resulted "
        "in 9000 tokens. Please reduce the length of the messages."
    )
    openai_double.push(Reply.error(400, words, code="context_length_exceeded"))
    with pytest.raises(ContextTooLong) as caught:
        await backend.chat(request())
    assert str(caught.value) == PREFIX + (
        f"the prompt does not fit the model's context window (HTTP 400): {words}; shorten the "
        "conversation or use a model with a larger context"
    )


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (
            401,
            "Incorrect API key provided: sk-wrong. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
        ),
        (404, "The model `gpt-test` does not exist or you do not have access to it."),
        (400, "Invalid schema for function 'weather'"),
    ],
)
async def test_other_4xx_are_rejected(
    backend: OpenAIBackend, openai_double: ModelDouble, status: int, words: str
) -> None:
    openai_double.push(Reply.error(status, "" if status != 400 else words))
    with pytest.raises(ModelRequestRejected) as caught:
        await backend.chat(request())
    assert caught.value.status == status
    assert str(caught.value) == PREFIX + (
        f"the server refused the request (HTTP {status}): {words}; fix the request or the "
        "backend's configuration (url, api_key, model name): retrying it unchanged will not help"
    )


async def test_error_event_mid_stream(backend: OpenAIBackend, openai_double: ModelDouble) -> None:
    openai_double.push(Reply.error(500, "upstream died", mid_stream=True))
    with pytest.raises(ModelOverloaded) as caught:
        await collect(backend, request())
    assert str(caught.value) == PREFIX + (
        "the server failed or is overloaded (error in the stream): upstream died; retry later "
        "or fall back to another model"
    )


async def test_broken_sse_data_is_malformed(
    backend: OpenAIBackend, openai_double: ModelDouble
) -> None:
    openai_double.push(Reply.malformed())
    with pytest.raises(MalformedModelOutput) as caught:
        await collect(backend, request())
    assert (
        caught.value.raw == '{"id":"chatcmpl-x","object":"chat.completion.chunk","choices":[{"ind'
    )
    assert str(caught.value) == PREFIX + (
        "the server sent a chat completion that is not valid JSON (Input data was truncated); "
        "the server or a proxy in between is broken"
    )


async def test_close_mid_stream_is_overloaded(
    backend: OpenAIBackend, openai_double: ModelDouble
) -> None:
    openai_double.push(Reply.close_mid_stream())
    with pytest.raises(ModelOverloaded) as caught:
        await collect(backend, request())
    assert str(caught.value) == PREFIX + (
        f"the connection to {openai_double.url} broke before the answer was complete "
        "(peer closed connection without sending complete message body (incomplete chunked "
        "read)); the server crashed or restarted: retry or fall back to another model"
    )


async def test_stall_is_a_timeout(openai_double: ModelDouble) -> None:
    backend = OpenAIBackend("remote", openai_double.url, stall_timeout_s=0.2)
    openai_double.push(Reply.stall("first_chunk"), Reply.stall("headers"))
    with trio.fail_after(10):
        with pytest.raises(ModelTimeout) as caught:
            await collect(backend, request())
        with pytest.raises(ModelTimeout):
            await backend.chat(request())
    await backend.aclose()
    assert str(caught.value) == PREFIX + (
        f"{openai_double.url} sent no byte for 0.2 s (stall_timeout_s=0.2, timeout_s=120): the "
        "server is stuck or overloaded; raise stall_timeout_s or use another model"
    )


async def test_leaked_tool_call_tag(backend: OpenAIBackend, openai_double: ModelDouble) -> None:
    leaked = '<tool_call>\n{"name": "clock", "arguments": {}}\n</tool_call>'
    openai_double.push(Reply.text(leaked), Reply.text(leaked))
    for streamed in (False, True):
        with pytest.raises(MalformedModelOutput) as caught:
            if streamed:
                await collect(backend, request(tools=(CLOCK,)))
            else:
                await backend.chat(request(tools=(CLOCK,)))
        assert caught.value.raw == leaked
        assert str(caught.value) == PREFIX + (
            "the model wrote a tool call to 'clock' as plain text (<tool_call> tag) instead of "
            "using the tool-call field; call tools through the tool-call field, never in the "
            "message text"
        )


async def test_a_base_url_ending_in_v1_works_too(openai_double: ModelDouble) -> None:
    backend = OpenAIBackend("remote", openai_double.url + "/v1/")
    await backend.chat(request())
    await backend.aclose()
    assert openai_double.requests[0].path == "/v1/chat/completions"
