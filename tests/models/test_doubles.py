"""The doubles themselves: the bytes each protocol puts on the wire, scripting, shutdown.

Read with plain httpx (no backend), so a backend bug cannot hide a double bug.
"""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from agentrt import ModelOverloaded
from agentrt.models import ChatMessage, ChatRequest, OpenAIBackend

from .doubles import ModelDouble, Reply, serve_double

HI = [{"role": "user", "content": "Hi"}]


async def test_ollama_streams_ndjson_by_default(ollama_double: ModelDouble) -> None:
    ollama_double.push(Reply.text("a b", output_tokens=2))
    async with httpx.AsyncClient(base_url=ollama_double.url) as client:
        response = await client.post("/api/chat", json={"model": "tiny:1b", "messages": HI})
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["transfer-encoding"] == "chunked"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["message"]["content"] for line in lines] == ["a ", "b", ""]
    assert [line["done"] for line in lines] == [False, False, True]
    assert lines[-1]["done_reason"] == "stop"
    assert (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (11, 2)


async def test_openai_sse_frames_usage_only_when_asked_and_done(
    openai_double: ModelDouble,
) -> None:
    body = {"model": "m", "messages": HI, "stream": True}
    async with httpx.AsyncClient(base_url=openai_double.url) as client:
        plain = await client.post("/v1/chat/completions", json=body)
        with_usage = await client.post(
            "/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}}
        )
    assert plain.headers["content-type"] == "text/event-stream; charset=utf-8"
    for response in (plain, with_usage):
        frames = response.text.split("\n\n")
        assert frames[-2:] == ["data: [DONE]", ""]
        assert all(frame.startswith("data: ") for frame in frames[:-1])
    plain_chunks = [json.loads(f[6:]) for f in plain.text.split("\n\n")[:-2]]
    usage_chunks = [json.loads(f[6:]) for f in with_usage.text.split("\n\n")[:-2]]
    assert all("usage" not in chunk for chunk in plain_chunks)
    assert all(chunk["usage"] is None for chunk in usage_chunks[:-1])
    assert usage_chunks[-1]["choices"] == []
    assert usage_chunks[-1]["usage"]["total_tokens"] == 12


async def test_anthropic_event_names_match_their_data(anthropic_double: ModelDouble) -> None:
    anthropic_double.push(Reply.tool_call("clock", '{"tz": "UTC"}'))
    body = {"model": "m", "max_tokens": 10, "messages": HI, "stream": True}
    async with httpx.AsyncClient(base_url=anthropic_double.url) as client:
        response = await client.post("/v1/messages", json=body)
    names = []
    for frame in response.text.split("\n\n")[:-1]:
        event, data = frame.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == event[7:]
        names.append(event[7:])
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 5,  # "" then the input in 4 pieces
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_responder_answers_per_model_after_the_queue(ollama_double: ModelDouble) -> None:
    ollama_double.push(Reply.text("queued"))
    ollama_double.responder = lambda path, body: Reply.text(f"{path} {body['model']}")
    async with httpx.AsyncClient(base_url=ollama_double.url) as client:
        answers = [
            (await client.post("/api/chat", json={"model": m, "stream": False})).json()
            for m in ("a", "b", "c")
        ]
    assert [a["message"]["content"] for a in answers] == ["queued", "/api/chat b", "/api/chat c"]
    assert [r.body["model"] for r in ollama_double.requests] == ["a", "b", "c"]


async def test_hold_keeps_a_reply_until_released(openai_double: ModelDouble) -> None:
    release = trio.Event()
    openai_double.push(Reply.text("late", hold=release))
    backend = OpenAIBackend("remote", openai_double.url)
    ask = ChatRequest(model="m", messages=(ChatMessage(role="user", content="hi"),))
    got: list[str] = []

    async def call() -> None:
        got.append((await backend.chat(ask)).message.content)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await openai_double.wait_for_requests(1)
            assert got == []
            release.set()
    await backend.aclose()
    assert got == ["late"]


async def test_stopping_the_double_ends_a_stalled_call_promptly() -> None:
    failures: list[ModelOverloaded] = []
    ask = ChatRequest(model="m", messages=(ChatMessage(role="user", content="hi"),))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery, serve_double("openai") as double:
            double.push(Reply.stall("headers"))
            backend = OpenAIBackend("remote", double.url, stall_timeout_s=60)

            async def call() -> None:
                with pytest.raises(ModelOverloaded) as caught:
                    await backend.chat(ask)
                failures.append(caught.value)

            nursery.start_soon(call)
            await double.wait_for_requests(1)
    await backend.aclose()
    assert len(failures) == 1
