"""MCP bridge benchmark: what the cluster adds to one MCP tool call.

In one run, against one small server written with the SDK (an ``echo`` tool), over stdio and
over streamable HTTP:

- **direct**: the SDK's ``ClientSession.call_tool("echo", ...)`` from this process to the
  server: the baseline, what any MCP client pays;
- **bridge, local**: ``node.call_tool("mcp.bench.echo", ...)`` on the node that hosts the
  bridge: gate (both sides) + the bridge's supervision, no NATS;
- **cluster**: the same call from another node over NATS (``client.call_tool``): node ->
  NATS -> bridge node -> server and back, what every agent of the cluster pays;
- **cluster, py**: the same cluster path to a Python tool on the bridge's node (no MCP): the
  share of NATS and the gates in the figure above;
- **bus echo**: a bare NATS request/reply between the same two nodes (``client.bus.request``
  to a subscription on the bridge's node that publishes the same bytes back): NATS alone, so
  cluster, py minus this is the nodes' tool path and both gates;
- **direct, kept alive** (HTTP only): the SDK's session over the bridge's own HTTP transport
  (``open_transport``: connections kept alive between calls). The SDK's default client opens
  a TCP connection per call (it closes each POST's event stream before its end); the bridge
  does not, so this is the baseline with the same transport, and what is left of "bridge,
  local" against it is the bridge itself.

The client node, the bridge's node and the direct SDK client share this process (one trio
loop); the MCP server and nats-server are processes of their own.

Added = cluster p50 - direct p50; target < 1 ms. Calls are sequential, and the cases are
interleaved call by call, so load bursts on this shared machine hit all of them alike; the
median of the per-call differences is printed too. Exits 0 either way: it measures, it does
not test.

Usage::

    .venv/bin/python bench/mcp.py            # 3 rounds, ~30-60 s
    .venv/bin/python bench/mcp.py --quick    # 1 round
    .venv/bin/python bench/mcp.py --profile  # cProfile of the cluster case (stdio, HTTP), top 25
"""

from __future__ import annotations

import sys
from pathlib import Path

# This script is named mcp.py, and Python puts its folder first on sys.path: remove it, so that
# `import mcp` below finds the SDK and not this file.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402
from agentrt import Node, NodeConfig, open_client, open_node, tool  # noqa: E402
from agentrt._natsserver import NatsServer  # noqa: E402
from agentrt.agents import McpBridge, McpServerConfig  # noqa: E402
from agentrt.agents._mcp_transport import open_transport  # noqa: E402
from mcp import ClientSession, StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

TARGET_ADDED_US = 1000.0

_SERVER = textwrap.dedent(
    """
    import socket, sys
    import anyio
    import mcp_types as types
    from mcp.server.lowlevel import Server

    SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}},
              "required": ["text"]}

    async def list_tools(ctx, params):
        return types.ListToolsResult(tools=[types.Tool(name="echo", input_schema=SCHEMA)])

    async def call_tool(ctx, params):
        text = (params.arguments or {}).get("text", "")
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server = Server("bench", on_list_tools=list_tools, on_call_tool=call_tool)

    if sys.argv[1] == "stdio":
        from mcp.server.stdio import stdio_server

        async def main():
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())

        anyio.run(main)
    else:
        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        config = uvicorn.Config(server.streamable_http_app(), log_level="warning")
        uvicorn.Server(config).run(sockets=[sock])
    """
)

ARGS = {"text": "hello from the benchmark"}


@tool(name="bench.echo_py")
def echo_py(text: str) -> dict[str, Any]:
    """The same answer as the MCP server's echo, from a Python tool on the bridge's node."""
    return {"content": [{"type": "text", "text": text}]}


async def _samples(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await call()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


async def _http_server(script: Path) -> tuple[trio.Process, str]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(script), "http"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            line += await proc.stdout.receive_some(1)
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/mcp"


async def _transport(
    url: str, cfg: McpServerConfig, n: int, rounds: int, profile: bool
) -> dict[str, list[list[float]]]:
    """All three cases for one transport; returns samples per case per round."""
    node_cfg = NodeConfig(cluster="benchmcp", name="bridge", servers=(url,))
    client_cfg = NodeConfig(cluster="benchmcp", name="client", servers=(url,))
    if cfg.url:
        direct_cm: Any = streamable_http_client(cfg.url)
    else:
        direct_cm = stdio_client(
            StdioServerParameters(command=cfg.command[0], args=cfg.command[1:])
        )
    async with (
        direct_cm as (read, write),
        ClientSession(read, write) as session,
        _kept_alive(cfg) as kept,
        open_node(node_cfg, tools=[echo_py]) as node,
        open_client(client_cfg) as client,
        trio.open_nursery() as nursery,
    ):
        await session.initialize()
        await session.list_tools()
        bridge = McpBridge(node, [cfg])
        with trio.fail_after(60):
            await nursery.start(bridge.serve)
            await client.registry.wait_for("mcp.bench.echo")
            await client.registry.wait_for("bench.echo_py")
        raw = b"x" * 330  # about the size of a tool call's envelope
        await node.bus.subscribe(
            "benchmcp.echo", handler=lambda m: node.bus.publish_nowait(m.reply, m.data)
        )
        cases: dict[str, Callable[[], Awaitable[object]]] = {
            "direct": lambda: session.call_tool("echo", ARGS),
            "bridge, local": lambda: node.call_tool("mcp.bench.echo", ARGS),
            "cluster": lambda: client.call_tool("mcp.bench.echo", ARGS),
            "cluster, py": lambda: client.call_tool("bench.echo_py", ARGS),
            "bus echo": lambda: client.bus.request("benchmcp.echo", raw),
        }
        if kept is not None:
            cases["direct, kept alive"] = lambda: kept.call_tool("echo", ARGS)
        for name in cases:
            await _samples(cases[name], max(n // 10, 20))  # warm-up
        results: dict[str, list[list[float]]] = {name: [] for name in cases}
        names = list(cases)
        for _ in range(rounds):
            for name in names:
                results[name].append([])
            # One call of each case in turn (rotating the order): a load burst on this shared
            # machine hits every case alike, so the per-call differences are comparable.
            for i in range(n):
                k = i % len(names)
                for name in names[k:] + names[:k]:
                    t0 = time.perf_counter_ns()
                    await cases[name]()
                    results[name][-1].append((time.perf_counter_ns() - t0) / 1000)
        if profile:
            await _profile(client, n, "HTTP" if cfg.url else "stdio")
        nursery.cancel_scope.cancel()
    return results


@asynccontextmanager
async def _kept_alive(cfg: McpServerConfig) -> AsyncIterator[ClientSession | None]:
    """The SDK session over the bridge's HTTP transport (None for stdio)."""
    if not cfg.url:
        yield None
        return
    async with (
        open_transport(cfg, sys.stderr, lambda: None) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def _profile(client: Node, n: int, transport: str) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        await client.call_tool("mcp.bench.echo", ARGS)
    prof.disable()
    print(f"\nprofile of the cluster case ({transport}), whole process (client, bridge node, "
          "SDK):")  # fmt: skip
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def _report(transport: str, results: dict[str, list[list[float]]], n: int) -> None:
    rounds = len(results["direct"])
    print(f"\n{transport}: {n} calls per case and round, cases interleaved call by call, "
          f"{rounds} round(s); best round shown, all rounds' p50 in brackets")  # fmt: skip
    best: dict[str, tuple[float, float]] = {}
    for name, per_round in results.items():
        p50s = [statistics.median(s) for s in per_round]
        i = min(range(rounds), key=lambda k: p50s[k])
        best[name] = (p50s[i], _p(per_round[i], 95))
        shown = ", ".join(f"{v:.0f}" for v in p50s)
        print(f"  {name:<18} p50 {best[name][0]:8.0f} us   p95 {best[name][1]:8.0f} us   "
              f"[{shown}]")  # fmt: skip
    base = best["direct"][0]
    for name in ("bridge, local", "cluster"):
        # The median of per-call differences (call i of a case against call i of direct,
        # made back to back) is steadier under load than a difference of two medians.
        paired = [
            statistics.median(c - d for c, d in zip(r, rd, strict=True))
            for r, rd in zip(results[name], results["direct"], strict=True)
        ]
        print(f"  {name:<18} adds {best[name][0] - base:6.0f} us p50 (best rounds), ratio "
              f"{best[name][0] / base:5.2f}x; paired median per round: "
              f"{', '.join(f'{v:.0f}' for v in paired)} us")  # fmt: skip
    if "direct, kept alive" in best:
        kept = best["direct, kept alive"][0]
        print(f"  with the bridge's transport on both sides: direct, kept alive {kept:.0f} us; "
              f"bridge, local adds {best['bridge, local'][0] - kept:.0f} us, cluster adds "
              f"{best['cluster'][0] - kept:.0f} us")  # fmt: skip
    hop, bus = best["cluster, py"][0], best["bus echo"][0]
    print(f"  where it goes: NATS + gates (cluster, py: a Python tool on the bridge's node) "
          f"{hop:.0f} us, of which NATS (bus echo) {bus:.0f} us and the nodes' tool path with "
          f"both gates {hop - bus:.0f} us; the MCP call behind it "
          f"{best['cluster'][0] - hop:.0f} us (direct: {base:.0f} us)")  # fmt: skip
    added = best["cluster"][0] - base
    verdict = "PASS" if added < TARGET_ADDED_US else "MISS"
    print(f"  added by the cluster (p50): {added:.0f} us   target < {TARGET_ADDED_US:.0f}   "
          f"{verdict}")  # fmt: skip


async def run(url: str, script: Path, n: int, rounds: int, profile: bool) -> None:
    stdio = McpServerConfig(name="bench", command=[sys.executable, str(script), "stdio"])
    _report("stdio", await _transport(url, stdio, n, rounds, profile), n)
    proc, http_url = await _http_server(script)
    try:
        http = McpServerConfig(name="bench", url=http_url)
        _report("streamable HTTP", await _transport(url, http, n, rounds, profile), n)
    finally:
        proc.kill()
        await proc.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    n, rounds = (200, 1) if args.quick else (1000, 3)
    with (
        tempfile.TemporaryDirectory(prefix="agentrt-mcp-") as tmp,
        NatsServer(Path(tmp), name="benchmcp", jetstream=True) as server,
    ):
        script = Path(tmp) / "bench_server.py"
        script.write_text(_SERVER)
        trio.run(run, server.url, script, n, rounds, args.profile)


if __name__ == "__main__":
    main()
