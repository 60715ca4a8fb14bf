"""examples/assistant, run by `agentrt up --demo` as a user would, with its Ollama backend
pointed at the Ollama double: an LLM agent, a local pure tool (cached), the MCP time server,
escalation of a small model that keeps getting the arguments wrong."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from .models.doubles import Reply, serve_double

AGENTRT = Path(sys.executable).parent / "agentrt"


def respond(path: str, body: Any) -> Reply | None:
    messages = body["messages"]
    question = next(m["content"] for m in messages if m["role"] == "user")
    last = messages[-1]
    if last["role"] == "tool" and not last["content"].startswith("error"):
        if "marathon" in question:
            return Reply.text(f"A marathon is {json.loads(last['content'])} miles.")
        return Reply.text(f"In Tokyo it is {json.loads(last['content'])['datetime'][11:16]}.")
    if "marathon" in question:
        if body["model"] == "qwen2.5:0.5b":  # the small model never gets the units right
            return Reply.tool_call("units__convert", '{"value": "42.195 km", "unit": "miles"}')
        return Reply.tool_call(
            "units__convert", '{"value": 42.195, "source": "km", "target": "mi"}'
        )
    return Reply.tool_call("mcp__time__get_current_time", '{"timezone": "Asia/Tokyo"}')


@pytest.mark.slow
async def test_the_assistant_example_runs_as_documented(tmp_path: Path, repo_root: Path) -> None:
    app = tmp_path / "assistant"
    shutil.copytree(repo_root / "examples" / "assistant", app)
    async with serve_double("ollama", responder=respond) as double:
        config = app / "agentrt.toml"
        text = config.read_text().replace("http://127.0.0.1:11434", double.url)
        assert double.url in text
        config.write_text(text)
        env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
        env.update(NO_COLOR="1", COLUMNS="200")
        # `python` in [[nodes.mcp]] must mean the node's interpreter, virtualenv on PATH or not.
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
        with trio.fail_after(120):
            done = await trio.run_process(
                [str(AGENTRT), "up", str(app), "--demo"], env=env, stdin=b"",
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    result, _ = json.JSONDecoder().raw_decode(out, out.index("{", out.index("result:")))
    marathon = result["How many miles is a 42.195 km marathon?"]
    tokyo = result["What time is it now in Tokyo?"]
    assert marathon["text"] == "A marathon is 26.2187 miles."
    assert (marathon["tier"], marathon["escalations"], marathon["failed_calls"]) == ("large", 1, 2)
    assert re.fullmatch(r"In Tokyo it is \d\d:\d\d\.", tokyo["text"])
    assert (tokyo["tier"], tokyo["steps"], tokyo["tool_calls"]) == ("small", 2, 1)
    # What the small model was shown: both tools of its globs, with their full schemas.
    first = double.chat_requests[0].body
    offered = {t["function"]["name"]: t["function"]["parameters"] for t in first["tools"]}
    assert set(offered) >= {"units__convert", "mcp__time__get_current_time"}
    assert offered["units__convert"]["properties"]["source"]["enum"] == ["kg", "km", "lb", "mi"]
    models = [line.split() for line in out.splitlines() if line.strip().startswith("Assistant")]
    assert {(row[1], row[2]) for row in models} == {
        ("small", "local:qwen2.5:0.5b"), ("large", "local:qwen2.5:7b"),
    }  # fmt: skip
