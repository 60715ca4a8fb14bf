"""Tool result cache benchmark: a cached call against the same call uncached, in one run.

On a real nats-server with JetStream, a tool node and a client node (two nodes in one
process, talking over NATS), for two tools of each kind:

- **add**: a trivial pure tool, so the figure is the cache's own cost: a hit is one
  JetStream direct get instead of one tool request/reply;
- **work**: a pure tool that waits 2 ms (an I/O-bound tool: a lookup, a fetch, a parse).

Cases, each p50 of sequential ``client.call_tool`` calls:

- **uncached**: the tool has no cache rule (the baseline);
- **hit**: a rule caches it and the arguments repeat (the first call filled the entry);
- **miss**: a rule caches it and every call has new arguments: the lookup misses, the tool
  runs, and its node stores the result before answering (what caching costs when it does not
  help);
- **skip**: a skip rule answers without sending anything.

Figures are printed as ratios to *uncached* of the same tool, measured in the same rounds
(cases interleaved, best round per case: noise only ever makes a figure worse). Exits 0
either way: it measures, it does not test.

Usage::

    .venv/bin/python bench/cache.py            # ~15 s
    .venv/bin/python bench/cache.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio
from agentrt import NodeConfig, open_client, open_node, tool
from agentrt._cache import ToolRule
from agentrt._natsserver import NatsServer


def _add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


async def _work(a: int, b: int = 0) -> int:
    """Add two integers, after 2 ms of waiting on something."""
    await trio.sleep(0.002)
    return a + b


TOOLS = [
    tool(_add, name="bench.plain.add", pure=True),
    tool(_add, name="bench.cached.add", pure=True),
    tool(_work, name="bench.plain.work", pure=True),
    tool(_work, name="bench.cached.work", pure=True),
]
RULES = {
    "bench.cached.*": ToolRule(cache_ttl_s=600),
    "bench.skipped.*": ToolRule(skip=True, value=0),
}


async def _p50(call: Callable[[], Awaitable[object]], n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


async def run(url: str, n: int, rounds: int) -> None:
    def cfg(name: str) -> NodeConfig:
        return NodeConfig(cluster="benchcache", name=name, servers=(url,), tool_rules=RULES)

    fresh = itertools.count(1_000)
    async with open_node(cfg("tools"), tools=TOOLS), open_client(cfg("client")) as client:
        skipped = tool(_add, name="bench.skipped.add", pure=True)
        client.registry.register_spec(skipped.spec)  # known to the gate, never run

        def case(name: str, *, new_args: bool = False) -> Callable[[], Awaitable[object]]:
            async def call() -> object:
                args = {"a": next(fresh) if new_args else 1, "b": 2}
                return await client.call_tool(name, args)

            return call

        cases: dict[str, Callable[[], Awaitable[object]]] = {}
        for kind in ("add", "work"):
            cases[f"{kind} uncached"] = case(f"bench.plain.{kind}")
            cases[f"{kind} hit"] = case(f"bench.cached.{kind}")
            cases[f"{kind} miss"] = case(f"bench.cached.{kind}", new_args=True)
        cases["add skip"] = case("bench.skipped.add")
        for call in cases.values():
            await call()  # the hit cases' entries exist from here on
        results: dict[str, list[float]] = {name: [] for name in cases}
        for r in range(rounds):
            names = list(cases)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                per_case = n // 4 if name.startswith("work") else n
                await _p50(cases[name], per_case // 10)  # warm-up
                results[name].append(await _p50(cases[name], per_case))
        outcome = {(c.tool, c.outcome): c.count for c in client.status().cache}
    best = {name: min(v) for name, v in results.items()}
    print(f"tool result cache over NATS: {n} sequential calls per case ({n // 4} for work), "
          f"{rounds} round(s)")  # fmt: skip
    for name, value in best.items():
        kind = name.split()[0]
        ratio = value / best[f"{kind} uncached"]
        per_round = ", ".join(f"{v:.0f}" for v in results[name])
        print(f"  {name:<14} p50 {value:8.1f} us   x{ratio:5.2f} of uncached   "
              f"(rounds: {per_round})")  # fmt: skip
    hits = outcome.get(("bench.cached.add", "hit"), 0)
    misses = outcome.get(("bench.cached.add", "miss"), 0)
    print(
        f"  counters, bench.cached.add: {hits} hits, {misses} misses (as expected: every "
        "repeated call hit, every new one missed)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n, rounds = (400, 1) if args.quick else (2000, 3)
    with (
        tempfile.TemporaryDirectory(prefix="agentrt-cache-") as tmp,
        NatsServer(Path(tmp), name="benchcache") as server,
    ):
        trio.run(run, server.url, n, rounds)


if __name__ == "__main__":
    main()
