"""``agentrt eval`` against a running cluster: real node processes host the tools, the models
are served by the Ollama double over HTTP, and the command recommends a tier per agent type."""

from __future__ import annotations

import json
import textwrap
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

from .models.doubles import Reply, serve_double
from .test_cli import READY_TIMEOUT_S, background_up, cli

TOOLS = """\
import agentrt


@agentrt.tool(name="weather.get")
async def weather(city: str) -> dict:
    \"\"\"Current weather of a city.\"\"\"
    return {"city": city, "temp_c": 21}
"""

EVAL = """\
agent = "forecaster"
tiers = ["small", "large"]
repeats = 2

[[tasks]]
name = "oslo"
prompt = "Weather in Oslo?"
tools = ["weather.*"]
expect_tool = "weather.get"
expect_args = { city = "Oslo" }
expect_text = "21"

[[tasks]]
name = "hello"
prompt = "Say hello"
expect_text = "hello"
"""


def respond(path: str, body: Any) -> Reply | None:
    messages = body["messages"]
    if messages[-1]["content"] == "Say hello":
        return Reply.text("Hello!", input_tokens=10, output_tokens=2)
    if body["model"] == "tiny:1b":  # never gets the arguments right
        return Reply.tool_call("weather__get", '{"place": "Oslo"}', input_tokens=40)
    if messages[-1]["role"] == "tool":
        return Reply.text("21 C in Oslo", input_tokens=120, output_tokens=5)
    return Reply.tool_call("weather__get", '{"city": "Oslo"}', input_tokens=100, output_tokens=5)


def wait_serving(directory: Path, up: Any) -> None:
    """Poll `agentrt status --json` (an external process) under one deadline."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if up.proc.poll() is not None:
            pytest.fail(f"agentrt up exited early\n{up.describe()}")
        r = cli("status", "--json", "-c", str(directory))
        if r.returncode == 0:
            nodes = json.loads(r.stdout)["nodes"]
            if nodes and {n["state"] for n in nodes} == {"serving"}:
                return
        time.sleep(0.1)  # poll interval of an external process, not synchronisation
    pytest.fail(f"cluster not serving in {READY_TIMEOUT_S}s\n{up.describe()}")


@pytest.mark.slow
async def test_eval_measures_each_tier_and_recommends_one(tmp_path: Path) -> None:
    async with serve_double("ollama", responder=respond) as double:
        app = tmp_path / "app"
        app.mkdir()
        (app / "evaltools.py").write_text(TOOLS)
        (app / "eval.toml").write_text(EVAL)
        (app / "agentrt.toml").write_text(textwrap.dedent(f"""\
            [cluster]
            name = "evalc"

            [[nodes]]
            name = "tools"
            tools = ["evaltools:weather"]

            [models.backends.local]
            kind = "ollama"
            url = "{double.url}"

            [models.tiers]
            small = ["local:tiny:1b"]
            large = ["local:big:70b"]

            [models.prices."local:big:70b"]
            input = 3
            output = 15
            """))  # fmt: skip
        with background_up(app, tmp_path) as up:
            await trio.to_thread.run_sync(wait_serving, app, up)
            done = await trio.to_thread.run_sync(
                lambda: cli("eval", str(app / "eval.toml"), "-c", str(app), "--json")
            )
            table = await trio.to_thread.run_sync(
                lambda: cli("eval", str(app / "eval.toml"), "-c", str(app))
            )
            cli("down", "-c", str(app))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["task_tiers"] == {"oslo": "large", "hello": "small"}
    assert report["agent_tiers"] == {"forecaster": "large"}
    rows = {(r["task"], r["tier"]): r for r in report["results"]}
    assert rows[("oslo", "small")]["passed"] == 0
    assert rows[("oslo", "small")]["errors"] == ["step limit (6)"] * 2
    big = rows[("oslo", "large")]
    assert (big["passed"], big["runs"], big["input_tokens"], big["output_tokens"]) == (
        2, 2, 440, 20,
    )  # fmt: skip
    assert Decimal(big["cost"]) == Decimal("0.00162")  # (440 * 3 + 20 * 15) / 1e6, exact
    assert table.returncode == 0, table.stderr
    assert '[models.agents.forecaster]\ntier = "large"' in table.stdout
    assert "oslo" in table.stdout and "large*" in table.stdout
