"""What every backend does the same way, checked on all three protocols."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import trio
from agentrt import (
    MalformedModelOutput,
    ModelError,
    ModelOverloaded,
    ModelRequestRejected,
    RateLimited,
)
from agentrt.models import ChatMessage, ChatRequest, ModelBackend, make_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .common import CLOCK, collect
from .doubles import ModelDouble, Protocol, Reply, serve_double

KINDS: list[Protocol] = ["ollama", "openai", "anthropic"]
ASK = ChatRequest(model="m1", messages=(ChatMessage(role="user", content="hi"),))


@pytest.fixture(params=KINDS)
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ModelDouble, ModelBackend]]:
    async with serve_double(request.param) as double:
        backend = make_backend(request.param, name="b", url=double.url, api_key="k")
        yield double, backend
        await backend.aclose()


async def test_is_a_model_backend(pair: tuple[ModelDouble, ModelBackend]) -> None:
    double, backend = pair
    assert isinstance(backend, ModelBackend)
    assert backend.kind == double.protocol and backend.name == "b"


async def test_http_errors_before_a_stream_are_typed(
    pair: tuple[ModelDouble, ModelBackend],
) -> None:
    double, backend = pair
    double.push(Reply.error(429, "slow down", retry_after="3"), Reply.error(404, "no such model"))
    with pytest.raises(RateLimited) as limited:
        await collect(backend, ASK)
    assert limited.value.retry_after == 3.0
    with pytest.raises(ModelRequestRejected) as rejected:
        await collect(backend, ASK)
    assert rejected.value.status == 404
    assert "(HTTP 404): " in str(rejected.value) and "no such model" in str(rejected.value)


async def test_a_cancelled_stream_drops_its_connection(
    pair: tuple[ModelDouble, ModelBackend],
) -> None:
    double, backend = pair
    double.push(Reply.stall("first_chunk"))
    with trio.move_on_after(0.2) as scope:
        await collect(backend, ASK)
    assert scope.cancelled_caught
    with trio.fail_after(5):
        final = (await collect(backend, ASK))[-1].response
    assert final is not None and final.message.content == "ok"


async def test_a_stream_left_early_is_closed(pair: tuple[ModelDouble, ModelBackend]) -> None:
    double, backend = pair
    double.push(Reply.text("one two three four"))
    stream = backend.stream(ASK)
    first = await stream.__anext__()
    await stream.aclose()  # type: ignore[attr-defined]
    assert first.text in ("one ", "")
    with trio.fail_after(5):
        assert (await backend.chat(ASK)).message.content == "ok"


@pytest.mark.parametrize("kind", KINDS)
async def test_connection_refused_on_every_backend(kind: str) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = make_backend(kind, name="b", url=f"http://127.0.0.1:{port}")
    for attempt in range(2):
        with pytest.raises(ModelOverloaded) as caught:
            if attempt:
                await collect(backend, ASK)
            else:
                await backend.list_models()
        assert str(caught.value).startswith(
            f"model '' on backend 'b': cannot connect to http://127.0.0.1:{port} ("
            if not attempt
            else f"model 'm1' on backend 'b': cannot connect to http://127.0.0.1:{port} ("
        )
        assert isinstance(caught.value, ModelError)
    await backend.aclose()


async def test_an_answer_of_the_wrong_shape_says_so() -> None:
    async with serve_double("anthropic") as double:
        double.push(Reply.raw(b'{"content": "not a list of blocks"}'))
        backend = make_backend("anthropic", name="b", url=double.url)
        with pytest.raises(MalformedModelOutput) as caught:
            await backend.chat(ASK)
        await backend.aclose()
    assert caught.value.raw == '{"content": "not a list of blocks"}'
    assert str(caught.value) == (
        "model 'm1' on backend 'b': the server sent a message in an unexpected shape (Expected "
        "`array`, got `str` - at `$.content`); the server does not speak this protocol as "
        "documented: check the backend's kind"
    )


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(arguments=st.text(min_size=1, max_size=200))
async def test_streamed_arguments_text_survives_unchanged(arguments: str) -> None:
    """OpenAI (both ways) and Anthropic (streamed) carry arguments as text: any text, valid
    JSON or not, reaches the caller byte for byte."""
    ask = ChatRequest(model="m", messages=ASK.messages, tools=(CLOCK,))
    for kind in ("openai", "anthropic"):
        async with serve_double(kind) as double:
            double.push(Reply.tool_call("clock", arguments))
            backend = make_backend(kind, name="b", url=double.url)
            final = (await collect(backend, ask))[-1].response
            await backend.aclose()
        assert final is not None
        assert final.message.tool_calls[0].arguments == arguments
