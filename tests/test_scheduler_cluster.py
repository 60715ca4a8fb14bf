"""``agentrt up --demo`` with a ``[models]`` section: node processes build the scheduler from
agentrt.toml, an agent's ``self.models`` calls the model double over HTTP (falling back from
a failing small model to the large tier), and the models table shows the counts."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from .models.doubles import Reply, serve_double

AGENTRT = Path(sys.executable).parent / "agentrt"
UP_TIMEOUT_S = 90.0  # cold start to clean exit on a slow shared machine

APP = """\
import agentrt
from agentrt.models import ChatMessage


class Ask(agentrt.Message, tag="schedapp.ask"):
    text: str


class Answer(agentrt.Message, tag="schedapp.answer"):
    text: str
    model: str
    tier: str


class Writer(agentrt.Agent):
    tier = "small"

    async def on_ask(self, msg: Ask) -> Answer:
        reply = await self.models.chat([ChatMessage(role="user", content=msg.text)])
        return Answer(text=reply.message.content, model=self.models.model, tier=self.models.tier)


async def demo(client):
    answer = await client.send(agentrt.AgentId("Writer", "w1"), Ask(text="hello"), expect=Answer)
    return {"text": answer.text, "model": answer.model, "tier": answer.tier}
"""


@pytest.mark.slow
async def test_up_demo_with_models(tmp_path: Path) -> None:
    async with serve_double("ollama") as double:
        double.push(Reply.error(500, "runner crashed"))
        double.default = Reply.text("hi there", input_tokens=1000, output_tokens=500)
        (tmp_path / "schedapp.py").write_text(APP)
        (tmp_path / "agentrt.toml").write_text(textwrap.dedent(f"""\
            [cluster]
            name = "sched"

            [[nodes]]
            name = "writers"
            agents = ["schedapp:Writer"]

            [demo]
            job = "schedapp:demo"

            [models.backends.local]
            kind = "ollama"
            url = "{double.url}"

            [models.tiers]
            small = ["local:tiny:1b"]
            large = ["local:big:70b"]

            [models.prices."local:big:70b"]
            input = 0.5
            output = 1.5
            """))  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
        env["NO_COLOR"] = "1"
        env["COLUMNS"] = "200"
        with trio.fail_after(UP_TIMEOUT_S):
            done = await trio.run_process(
                [str(AGENTRT), "up", str(tmp_path), "--demo"], env=env, stdin=b"",
                capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
    out, err = done.stdout.decode(), done.stderr.decode()
    context = f"stdout:\n{out}\nstderr:\n{err}"
    assert done.returncode == 0, context
    start = out.index("{", out.index("result:"))
    result, _ = json.JSONDecoder().raw_decode(out, start)
    assert result == {"text": "hi there", "model": "local:big:70b", "tier": "small"}
    assert [r.body["model"] for r in double.chat_requests] == ["tiny:1b", "big:70b"]
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in out.splitlines()
            if line.strip().startswith("Writer")}  # fmt: skip
    # calls, err, fallb, escal, tok in, tok out, cost
    assert rows[("Writer", "small", "local:tiny:1b")][:7] == ["0", "1", "1", "0", "0", "0", "0"]
    assert rows[("Writer", "large", "local:big:70b")][:7] == [
        "1", "0", "0", "0", "1000", "500", "0.00125"]  # fmt: skip
