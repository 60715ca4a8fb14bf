"""OllamaBackend against the Ollama double: what is sent, what comes back, every failure."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
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
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ModelBackend,
    OllamaBackend,
    ToolCall,
)

from .common import ASK, CLOCK, RICH_SCHEMA, WEATHER, collect
from .doubles import Call, ModelDouble, Reply


@pytest.fixture
async def backend(ollama_double: ModelDouble) -> AsyncIterator[OllamaBackend]:
    backend = OllamaBackend("local", ollama_double.url, stall_timeout_s=5.0)
    yield backend
    await backend.aclose()


def request(**kw: Any) -> ChatRequest:
    return ChatRequest(model=kw.pop("model", "tiny:1b"), messages=kw.pop("messages", ASK), **kw)


async def test_plain_chat_sends_exactly_this_and_reads_usage(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(Reply.text("Hello there.", input_tokens=26, output_tokens=4))
    response = await backend.chat(request(temperature=0.2, max_tokens=64))
    assert isinstance(backend, ModelBackend)
    assert response.message == ChatMessage(role="assistant", content="Hello there.")
    assert (response.stop_reason, response.model) == ("stop", "tiny:1b")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (26, 4)
    assert response.latency_s > 0
    [sent] = ollama_double.requests
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == {
        "model": "tiny:1b",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "stream": False,
        "options": {"temperature": 0.2, "num_predict": 64},
    }


async def test_the_full_tool_schema_and_format_reach_the_server(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    await backend.chat(request(tools=(WEATHER, CLOCK), response_schema=schema))
    body = ollama_double.requests[0].body
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather for a city.",
                "parameters": RICH_SCHEMA,
            },
        },
        {
            "type": "function",
            "function": {
                "name": "clock",
                "description": "The time.",
                "parameters": {"type": "object"},
            },
        },
    ]
    assert body["format"] == schema


async def test_tool_choice_none_offers_no_tools_and_a_name_offers_that_tool(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    await backend.chat(request(tools=(WEATHER, CLOCK), tool_choice="none"))
    await backend.chat(request(tools=(WEATHER, CLOCK), tool_choice="clock"))
    assert "tools" not in ollama_double.requests[0].body
    assert [t["function"]["name"] for t in ollama_double.requests[1].body["tools"]] == ["clock"]
    with pytest.raises(ModelRequestRejected) as caught:
        await backend.chat(request(tools=(CLOCK,), tool_choice="weather"))
    assert str(caught.value) == (
        "model 'tiny:1b' on backend 'local': tool_choice 'weather' names no offered tool "
        "(offered: 'clock'); use auto, required, none or the name of a tool in tools"
    )
    assert len(ollama_double.requests) == 2


async def test_streamed_chat_yields_chunks_in_order_then_the_response(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(Reply.text("One two three.", chunks=["One ", "two ", "three."]))
    chunks = await collect(backend, request())
    assert [c.text for c in chunks[:-1]] == ["One ", "two ", "three."]
    final = chunks[-1].response
    assert final is not None and chunks[-1].text == ""
    assert final.message.content == "One two three."
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 3)
    assert final.stop_reason == "stop"
    assert ollama_double.requests[0].body["stream"] is True


async def test_tool_call_gets_a_stable_id_and_the_result_goes_back(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(
        Reply.tool_call("weather", '{"city": "Oslo", "days": 2}'),
        Reply.tool_call("weather", '{"city": "Oslo", "days": 2}'),
    )
    first = await backend.chat(request(tools=(WEATHER,)))
    again = await backend.chat(request(tools=(WEATHER,)))
    [call] = first.message.tool_calls
    assert call.name == "weather"
    assert call.arguments == '{"city":"Oslo","days":2}'
    assert call.id.startswith("call_") and call.id == again.message.tool_calls[0].id
    assert first.stop_reason == "tool_calls"

    follow_up = (
        *ASK,
        first.message,
        ChatMessage(role="tool", tool_call_id=call.id, content='{"temp": 4}'),
    )
    await backend.chat(request(messages=follow_up, tools=(WEATHER,)))
    assert ollama_double.requests[2].body["messages"][2:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "weather", "arguments": {"city": "Oslo", "days": 2}}}
            ],
        },
        {"role": "tool", "content": '{"temp": 4}', "tool_name": "weather"},
    ]


async def test_streamed_tool_calls_and_invalid_arguments_pass_through(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(
        Reply.tool_calls(Call("weather", '{"city": "Oslo"}'), Call("clock", '{"tz": "UTC",}'))
    )
    chunks = await collect(backend, request(tools=(WEATHER, CLOCK)))
    final = chunks[-1].response
    assert final is not None
    assert [(c.name, c.arguments) for c in final.message.tool_calls] == [
        ("weather", '{"city":"Oslo"}'),
        ("clock", '{"tz": "UTC",}'),
    ]
    assert final.stop_reason == "tool_calls"
    assert len({c.id for c in final.message.tool_calls}) == 2


async def test_replayed_invalid_arguments_are_repaired_into_an_object(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    history = (
        *ASK,
        ChatMessage(
            role="assistant",
            tool_calls=(ToolCall(id="c1", name="clock", arguments='{"tz": "UTC",'),),
        ),
        ChatMessage(role="tool", tool_call_id="c1", name="clock", content="12:00"),
    )
    await backend.chat(request(messages=history, tools=(CLOCK,)))
    replayed = ollama_double.requests[0].body["messages"][2]["tool_calls"][0]
    assert replayed == {"function": {"name": "clock", "arguments": {"tz": "UTC"}}}


async def test_tags_and_show(backend: OllamaBackend, ollama_double: ModelDouble) -> None:
    models = await backend.list_models()
    assert [(m.name, m.size) for m in models] == [("tiny:1b", 1_000_000), ("small:3b", 2_000_000)]
    assert models[0].details["family"] == "llama"
    assert models[0].details["quantization_level"] == "Q4_K_M"
    shown = await backend.show("tiny:1b")
    assert shown.details["model_info"]["llama.context_length"] == 8192
    assert shown.details["capabilities"] == ["completion", "tools"]
    assert ollama_double.requests[1].body == {"model": "tiny:1b"}
    assert [(r.method, r.path) for r in ollama_double.requests] == [
        ("GET", "/api/tags"),
        ("POST", "/api/show"),
    ]


# -- errors -----------------------------------------------------------------------------------

PREFIX = "model 'tiny:1b' on backend 'local': "


async def test_429_with_retry_after_is_rate_limited(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(Reply.error(429, retry_after="7"))
    with pytest.raises(RateLimited) as caught:
        await backend.chat(request())
    assert caught.value.retry_after == 7.0
    assert caught.value.status == 429
    assert str(caught.value) == PREFIX + (
        "rate limited (HTTP 429): server busy, please try again.  maximum pending requests "
        "exceeded; retry after 7 s"
    )


async def test_429_without_retry_after_waits_the_default(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(Reply.error(429, "busy"))
    with pytest.raises(RateLimited) as caught:
        await backend.chat(request())
    assert caught.value.retry_after == 1.0
    assert str(caught.value) == PREFIX + (
        "rate limited (HTTP 429): busy; retry after 1 s (no retry-after header; default wait)"
    )


async def test_500_is_overloaded(backend: OllamaBackend, ollama_double: ModelDouble) -> None:
    ollama_double.push(Reply.error(500, "llama runner process has terminated: signal: killed"))
    with pytest.raises(ModelOverloaded) as caught:
        await backend.chat(request())
    assert str(caught.value) == PREFIX + (
        "the server failed or is overloaded (HTTP 500): llama runner process has terminated: "
        "signal: killed; retry later or fall back to another model"
    )


async def test_unknown_model_is_rejected_with_ollamas_words(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(Reply.error(404))
    with pytest.raises(ModelRequestRejected) as caught:
        await backend.chat(request(model="nope"))
    assert caught.value.status == 404
    assert str(caught.value) == (
        "model 'nope' on backend 'local': the server refused the request (HTTP 404): model "
        '"nope" not found, try pulling it first; fix the request or the backend\'s '
        "configuration (url, api_key, model name): retrying it unchanged will not help"
    )


async def test_context_length_error_is_context_too_long(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(Reply.error(400, "the input length exceeds the context length"))
    with pytest.raises(ContextTooLong) as caught:
        await backend.chat(request())
    assert str(caught.value) == PREFIX + (
        "the prompt does not fit the model's context window (HTTP 400): the input length "
        "exceeds the context length; shorten the conversation or use a model with a larger "
        "context"
    )


async def test_error_line_mid_stream(backend: OllamaBackend, ollama_double: ModelDouble) -> None:
    ollama_double.push(Reply.error(500, "out of memory", mid_stream=True))
    chunks: list[ChatChunk] = []
    with pytest.raises(ModelOverloaded) as caught:
        async with aclosing(backend.stream(request())) as stream:
            async for chunk in stream:
                chunks.append(chunk)
    assert [c.text for c in chunks] == ["partial "]
    assert str(caught.value) == PREFIX + (
        "the server failed or is overloaded (error in the stream): out of memory; retry later "
        "or fall back to another model"
    )


async def test_connection_refused_is_overloaded() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = OllamaBackend("local", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelOverloaded) as caught:
        await backend.chat(request())
    await backend.aclose()
    assert str(caught.value).startswith(PREFIX + f"cannot connect to http://127.0.0.1:{port} (")
    assert str(caught.value).endswith(
        "); check that the server is running and that the backend's url is right"
    )
    assert caught.value.__cause__ is not None  # the httpx error, chained, never raised


async def test_close_mid_stream_is_overloaded(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(Reply.close_mid_stream(), Reply.close_mid_stream())
    with pytest.raises(ModelOverloaded) as caught:
        await collect(backend, request())
    assert str(caught.value) == PREFIX + (
        f"the connection to {ollama_double.url} broke before the answer was complete "
        "(peer closed connection without sending complete message body (incomplete chunked "
        "read)); the server crashed or restarted: retry or fall back to another model"
    )
    with pytest.raises(ModelOverloaded):
        await backend.chat(request())


async def test_broken_ndjson_line_is_malformed(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(Reply.malformed())
    with pytest.raises(MalformedModelOutput) as caught:
        await collect(backend, request())
    assert caught.value.raw.startswith('{"model":"tiny","created_at"')
    assert str(caught.value) == PREFIX + (
        "the server sent an /api/chat answer that is not valid JSON (Input data was "
        "truncated); the server or a proxy in between is broken"
    )


async def test_truncated_json_body_is_malformed(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(Reply.malformed())
    with pytest.raises(MalformedModelOutput) as caught:
        await backend.chat(request())
    assert str(caught.value).startswith(
        PREFIX + "the server sent an /api/chat answer that is not valid JSON ("
    )


@pytest.mark.parametrize("at", ["request", "headers", "first_chunk"])
async def test_stall_is_a_timeout_not_a_hang(ollama_double: ModelDouble, at: str) -> None:
    backend = OllamaBackend("local", ollama_double.url, stall_timeout_s=0.2)
    ollama_double.push(Reply.stall(at), Reply.stall(at))  # type: ignore[arg-type]
    with trio.fail_after(10):
        with pytest.raises(ModelTimeout) as caught:
            await backend.chat(request())
        with pytest.raises(ModelTimeout):
            await collect(backend, request())
    await backend.aclose()
    assert isinstance(caught.value, TimeoutError)
    assert str(caught.value) == PREFIX + (
        f"{ollama_double.url} sent no byte for 0.2 s (stall_timeout_s=0.2, timeout_s=120): the "
        "server is stuck or overloaded; raise stall_timeout_s or use another model"
    )


async def test_whole_call_timeout(ollama_double: ModelDouble) -> None:
    backend = OllamaBackend("local", ollama_double.url, timeout_s=0.3, stall_timeout_s=60)
    ollama_double.push(Reply.stall("first_chunk"))
    with trio.fail_after(10), pytest.raises(ModelTimeout) as caught:
        await backend.chat(request())
    await backend.aclose()
    assert str(caught.value) == PREFIX + (
        "no complete answer within timeout_s=0.3 s; the model is too slow for this deadline: "
        "raise timeout_s or use a faster model"
    )


async def test_the_callers_cancel_scope_wins(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    ollama_double.push(Reply.stall("first_chunk"), Reply.stall("first_chunk"))
    with trio.move_on_after(0.2) as scope:
        await backend.chat(request())
    assert scope.cancelled_caught
    with trio.move_on_after(0.2) as scope:
        await collect(backend, request())
    assert scope.cancelled_caught
    # the stalled connections were dropped, not reused: the next call is answered normally
    with trio.fail_after(5):
        assert (await backend.chat(request())).message.content == "ok"
    assert len(ollama_double.requests) == 3


# -- leaked tool calls ------------------------------------------------------------------------


async def test_tool_call_leaked_into_text_is_malformed(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    leaked = 'Sure! {"name": "weather", "arguments": {"city": "Oslo"}}'
    ollama_double.push(Reply.text(leaked), Reply.text(leaked))
    with pytest.raises(MalformedModelOutput) as caught:
        await backend.chat(request(tools=(WEATHER,)))
    assert caught.value.raw == leaked
    assert str(caught.value) == PREFIX + (
        "the model wrote a tool call to 'weather' as plain text (JSON object in the text) "
        "instead of using the tool-call field; call tools through the tool-call field, never "
        "in the message text"
    )
    with pytest.raises(MalformedModelOutput):
        await collect(backend, request(tools=(WEATHER,)))


async def test_json_text_without_tools_is_just_text(
    backend: OllamaBackend, ollama_double: ModelDouble
) -> None:
    text = '{"name": "weather", "arguments": {"city": "Oslo"}}'
    ollama_double.push(Reply.text(text))
    assert (await backend.chat(request())).message.content == text
