"""Scheduler benchmark: what ``session.chat`` (scheduler + Ollama backend) adds to one model
call, against a direct HTTP POST of the same body to the same local double, in the same run.

Cases, interleaved in rounds so load bursts on this shared machine hit all of them:

- **direct**: ``httpx.AsyncClient.post("/api/chat", content=<the exact bytes the backend
  sent>)`` with the body read and decoded (``msgspec.json.decode``): the floor for one call;
- **backend**: ``OllamaBackend.chat(request)``: request encoding, HTTP, response decoding and
  error mapping, no scheduler;
- **session**: ``session.chat(messages)``: the scheduler too (tier plan, capacity slot,
  accounting with exact cost) on top of the backend.

The double answers from the same trio run (an h11 server over loopback), so all cases share
its cost. Added latency = session - direct (p50 and p95). Target: < 1 ms p50 added.
Exits 0 either way: it measures, it does not test.

Usage::

    .venv/bin/python bench/scheduler.py            # ~10 s
    .venv/bin/python bench/scheduler.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentrt._modelconfig import ModelsSection
from agentrt._scheduler import open_scheduler
from agentrt.models import ChatMessage, ChatRequest, ToolDef

from tests.models.doubles import Reply, serve_double

TARGET_ADDED_US = 1000.0

MESSAGES = (
    ChatMessage(role="system", content="You answer in one short sentence."),
    ChatMessage(role="user", content="What is the capital of Norway?"),
)
TOOLS = (
    ToolDef(
        name="lookup",
        description="Look a city up.",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    ),
)


async def _samples(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await call()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q * 100) - 1]


async def run(n: int, rounds: int) -> None:
    async with serve_double("ollama") as double:
        double.default = Reply.text("Oslo.", input_tokens=42, output_tokens=3)
        models = msgspec.convert(
            {
                "backends": {"local": {"kind": "ollama", "url": double.url, "max_concurrent": 4}},
                "tiers": {"small": ["local:tiny:1b"]},
                "prices": {"local:tiny:1b": {"input": "0.1", "output": "0.4"}},
            },
            ModelsSection,
        )
        async with (
            open_scheduler(models) as sched,
            httpx.AsyncClient(base_url=double.url, trust_env=False) as client,
        ):
            session = sched.session("Bench/1", "Bench")
            backend = sched.backend("local")
            request = ChatRequest(model="tiny:1b", messages=MESSAGES, tools=TOOLS)
            await session.chat(MESSAGES, tools=TOOLS)  # warm the pool; capture the exact body
            body = double.chat_requests[-1].raw
            headers = {"content-type": "application/json"}

            async def direct() -> object:
                r = await client.post("/api/chat", content=body, headers=headers)
                return msgspec.json.decode(r.content)

            async def via_backend() -> object:
                return await backend.chat(request)

            async def via_session() -> object:
                return await session.chat(MESSAGES, tools=TOOLS)

            cases = {"direct": direct, "backend": via_backend, "session": via_session}
            for call in cases.values():  # warm-up
                await _samples(call, 50)
            results: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(rounds):
                for name, call in cases.items():
                    results[name] += await _samples(call, n)
            calls = sched.accounting.get("Bench", "small", "local:tiny:1b")

    base50, base95 = _p(results["direct"], 0.5), _p(results["direct"], 0.95)
    print(f"scheduler benchmark: {rounds} rounds x {n} sequential calls per case")
    print(f"{'case':<10}{'p50 us':>10}{'p95 us':>10}{'x direct p50':>14}{'added p50 us':>14}"
          f"{'added p95 us':>14}")  # fmt: skip
    for name, samples in results.items():
        p50, p95 = _p(samples, 0.5), _p(samples, 0.95)
        print(f"{name:<10}{p50:>10.0f}{p95:>10.0f}{p50 / base50:>14.2f}{p50 - base50:>14.0f}"
              f"{p95 - base95:>14.0f}")  # fmt: skip
    added = _p(results["session"], 0.5) - base50
    scheduler_only = _p(results["session"], 0.5) - _p(results["backend"], 0.5)
    verdict = "met" if added < TARGET_ADDED_US else "MISSED"
    print(f"added by scheduler + backend: {added:.0f} us p50 (target < {TARGET_ADDED_US:.0f} us: "
          f"{verdict}); scheduler alone: {scheduler_only:.0f} us")  # fmt: skip
    print(f"accounted: {calls.calls} calls, {calls.input_tokens} + {calls.output_tokens} tokens, "
          f"cost {calls.cost}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (~2 s)")
    args = parser.parse_args()
    n, rounds = (200, 2) if args.quick else (500, 5)
    trio.run(run, n, rounds)


if __name__ == "__main__":
    main()
