"""Gate benchmark, call part: the latency the gate adds to one agentrt tool call, both sides.

A tool call is gated twice: the sender repairs and validates the arguments (and later the
result), the receiving node validates the arguments again before running the tool (and the
result before sending it). This script measures, in one run on a real nats-server:

- **gated**: ``client.call_tool("add", {"a": 1, "b": 2})``: everything, both sides;
- **sender ungated**: the same call as a pre-encoded envelope through
  ``client.request_envelope`` (the receiving node still validates, as it always must);
- **sloppy**: ``call_tool`` with model-style text (fence, single quotes, a string for an
  integer, a trailing comma), which the sender repairs first;
- **receiver gate**: the receiving side's checks alone (``check_received`` + ``check_result``),
  timed in-process, because they cannot be switched off on a node.

Added latency of the gate = (gated - sender ungated) + receiver gate. Target: <= 50 us p50.
Requests are sequential; cases are interleaved in rounds so load bursts on this shared machine
hit all of them. Exits 0 either way: it measures, it does not test.

Usage::

    .venv/bin/python bench/gate_call.py            # ~10 s
    .venv/bin/python bench/gate_call.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import trio
from agentrt import NodeConfig, open_client, open_node, tool
from agentrt._envelope import ContentType, Kind
from agentrt._natsserver import NatsServer
from agentrt._tools import ToolRegistry

TARGET_ADDED_US = 50.0


@tool(pure=True)
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


async def _p50(call: Callable[[], Awaitable[object]], n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


def _receiver_gate_us(registry: ToolRegistry, n: int) -> float:
    from agentrt._gate import Gate

    gate = Gate(registry)
    args, result = {"a": 1, "b": 2}, 3
    t0 = time.perf_counter_ns()
    for _ in range(n):
        gate.check_received("add", args)
        gate.check_result("add", result)
    return (time.perf_counter_ns() - t0) / n / 1000


async def run(url: str, n: int, rounds: int) -> None:
    registry = ToolRegistry()
    registry.register_spec(add.spec)
    cfg = NodeConfig(cluster="benchgate", name="tools", servers=(url,))
    ccfg = NodeConfig(cluster="benchgate", name="client", servers=(url,))
    async with open_node(cfg, tools=[add]), open_client(ccfg, registry=registry) as client:
        payload = msgspec.json.encode({"a": 1, "b": 2})
        subject = client.subjects.tool("add")

        async def gated() -> object:
            return await client.call_tool("add", {"a": 1, "b": 2})

        async def ungated() -> object:
            deadline = trio.current_time() + 30
            env = client._envelope(
                Kind.REQUEST, "agentrt.tool_call", "client:bench", "add", payload, deadline,
                ContentType.JSON,
            )  # fmt: skip
            return await client.request_envelope(subject, env, deadline)

        async def sloppy() -> object:
            return await client.call_tool("add", "```json\n{'a': '1', 'b': 2,}\n```")

        assert await gated() == 3 and await sloppy() == 3
        cases: dict[str, Callable[[], Awaitable[object]]] = {
            "gated": gated, "sender ungated": ungated, "sloppy": sloppy,
        }  # fmt: skip
        results: dict[str, list[float]] = {name: [] for name in cases}
        for r in range(rounds):
            names = list(cases)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                await _p50(cases[name], n // 10)  # warm-up
                results[name].append(await _p50(cases[name], n))
        receiver = min(_receiver_gate_us(registry, n * 5) for _ in range(rounds))
    best = {name: min(v) for name, v in results.items()}
    print(f"gate on a tool call over NATS: {n} sequential calls per case, {rounds} round(s)")
    for name, value in best.items():
        per_round = ", ".join(f"{v:.0f}" for v in results[name])
        print(f"  {name:<16} p50 {value:8.1f} us   (rounds: {per_round})")
    print(f"  receiver gate    {receiver:8.2f} us per call (check_received + check_result)")
    sender = best["gated"] - best["sender ungated"]
    added = sender + receiver
    verdict = "PASS" if added <= TARGET_ADDED_US else "MISS"
    print(f"  added by the gate, valid call:  {added:6.1f} us   target <= {TARGET_ADDED_US:.0f}"
          f"   {verdict}")  # fmt: skip
    sloppy_added = best["sloppy"] - best["sender ungated"] + receiver
    print(f"  added by the gate, sloppy call: {sloppy_added:6.1f} us (repair included)")
    print("  (differences of two noisy p50s: a negative sender part means it is below the noise)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n, rounds = (500, 1) if args.quick else (2000, 3)
    with (
        tempfile.TemporaryDirectory(prefix="agentrt-gate-") as tmp,
        NatsServer(Path(tmp), name="benchgate", jetstream=False) as server,
    ):
        trio.run(run, server.url, n, rounds)


if __name__ == "__main__":
    main()
