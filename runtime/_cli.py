"""The ``agentrt`` command line: up, status, call, down, check, mcp serve.

Every command turns an ``AgentrtError`` into one line on stderr and a non-zero exit code
(2 for configuration errors, 1 otherwise); Ctrl-C ends with "interrupted" and code 130, never
with a traceback or an exception group.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import click
import msgspec
import trio
from rich import box
from rich.console import Console
from rich.table import Table

from ._accounting import merge_stats, models_prometheus, models_table
from ._cache import CacheMetrics, CacheOutcome
from ._cluster import (
    READY_WAIT_S,
    ClusterStatus,
    Supervisor,
    gather_node_statuses,
    node_config_from_state,
    read_state,
)
from ._config import ClusterConfig, load_config, resolve_callable, resolve_tools, tool_registry
from ._control import NodeStatus
from ._envelope import ContentType, Kind
from ._errors import AgentrtError, AgentUnavailable, BusError, ClusterNotRunning, ConfigError
from ._gate import GateMetrics, Outcome
from ._ids import AgentId
from ._node import Node, Subjects, ToolPolicy, open_client

__all__ = ["main", "render_cache", "render_mcp", "render_prometheus", "render_status"]

# Piped output (logs, CI) is not squeezed into 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def _config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-c", "--config", "config", default=None, metavar="PATH",
        help="agentrt.toml or its directory (default: current directory).",
    )(f)  # fmt: skip


def _load(path: str | None) -> ClusterConfig:
    try:
        return load_config(path or ".")
    except AgentrtError as exc:
        _fail(exc)
        raise  # unreachable: _fail exits


def render_status(cluster: ClusterStatus | None, nodes: list[NodeStatus]) -> Table:
    """One table: a row per (node, agent type) with the supervisor's and the node's counters."""
    title = f"cluster {cluster.cluster}" if cluster else "cluster"
    if cluster:
        title += f" — NATS {'embedded ' if cluster.embedded else ''}{', '.join(cluster.servers)}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1))  # fmt: skip
    # Short headers keep the table inside 80 columns; `agentrt status --json` has full names.
    columns = ("node", "pid", "state", "restarts", "up", "agent", "actors", "recv", "ok",
               "failed", "a.rst", "ovl", "malf")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("node", "state", "agent") else "right")
    procs = {p.name: p for p in cluster.processes} if cluster else {}
    by_name = {n.node: n for n in nodes}
    for name in sorted(set(procs) | set(by_name)):
        proc, node = procs.get(name), by_name.get(name)
        state = node.state if node else (proc.state if proc else "?")
        if proc and node is None and proc.state == "running":
            state = "starting"
        restarts = str(proc.restarts) if proc else "-"
        pid = str(node.pid if node else (proc.pid if proc and proc.pid else "-"))
        uptime = f"{node.uptime_s:.0f}s" if node else "-"
        agents = node.agents if node and node.agents else [None]
        for i, a in enumerate(agents):
            first = i == 0
            row = [name if first else "", pid if first else "", state if first else "",
                   restarts if first else "", uptime if first else ""]  # fmt: skip
            if a is None:
                row += ["-"] * 6
            else:
                row += [a.type, str(a.active), str(a.received), str(a.handled), str(a.failed),
                        str(a.restarts)]  # fmt: skip
            row += [str(a.overloaded) if a else "-", str(node.malformed) if node and first else ""]
            table.add_row(*row)
    gate: dict[tuple[str, str], int] = {}
    for n in nodes:
        for c in n.gate:
            gate[(c.tool, c.outcome)] = gate.get((c.tool, c.outcome), 0) + c.count
    if gate:
        by_tool: dict[str, list[str]] = {}
        for (tool_name, outcome), count in sorted(gate.items()):
            by_tool.setdefault(tool_name, []).append(f"{outcome} {count}")
        table.caption = "gate: " + "; ".join(f"{t}: {', '.join(v)}" for t, v in by_tool.items())
        table.caption_justify = "left"
    return table


def render_mcp(nodes: list[NodeStatus]) -> Table | None:
    """A row per MCP server bridged by a node: state, restarts, tools, last error (None if
    no node bridges one)."""
    rows = [(n.node, m) for n in nodes for m in n.mcp]
    if not rows:
        return None
    table = Table(title="MCP servers", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1))  # fmt: skip
    for col in ("node", "server", "via", "state", "restarts", "tools", "last error"):
        table.add_column(col, justify="right" if col in ("restarts", "tools") else "left")
    for node_name, m in sorted(rows, key=lambda r: (r[0], r[1].name)):
        table.add_row(node_name, m.name, m.transport, m.state, str(m.restarts), str(m.tools),
                      m.last_error or "-")  # fmt: skip
    return table


def render_cache(nodes: list[NodeStatus]) -> Table | None:
    """A row per tool with its result-cache counters summed over nodes, and the hit ratio
    (hits over lookups); None if no node counted anything."""
    counts: dict[str, dict[str, int]] = {}
    for n in nodes:
        for c in n.cache:
            row = counts.setdefault(c.tool, {})
            row[c.outcome] = row.get(c.outcome, 0) + c.count
    if not counts:
        return None
    table = Table(title="tool cache", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, padding=(0, 1))  # fmt: skip
    outcomes = [o.value for o in (CacheOutcome.HIT, CacheOutcome.MISS, CacheOutcome.STORE,
                                  CacheOutcome.SKIP, CacheOutcome.POISONED)]  # fmt: skip
    for col in ("tool", *outcomes, "hit ratio"):
        table.add_column(col, justify="left" if col == "tool" else "right")
    for tool_name, row in sorted(counts.items()):
        hit, miss = row.get("hit", 0), row.get("miss", 0)  # poisoned is a subset of miss
        ratio = f"{hit / (hit + miss):.0%}" if hit + miss else "-"
        table.add_row(tool_name, *(str(row.get(o, 0)) for o in outcomes), ratio)
    return table


def _run(fn: Callable[[], Awaitable[int]]) -> None:
    try:
        code = trio.run(fn)
    except KeyboardInterrupt:
        err_console.print("agentrt: interrupted")
        sys.exit(130)
    except BaseExceptionGroup as group:
        # Ctrl-C under trio arrives wrapped in nursery groups: unwrap it.
        interrupt, rest = group.split(KeyboardInterrupt)
        if interrupt is not None and rest is None:
            err_console.print("agentrt: interrupted")
            sys.exit(130)
        agentrt_errors, other = group.split(AgentrtError)
        if agentrt_errors is not None and other is None:
            _fail(_first_leaf(agentrt_errors))
        raise
    except AgentrtError as exc:
        _fail(exc)
    sys.exit(code)


def _first_leaf(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _fail(exc: BaseException) -> None:
    err_console.print(f"agentrt: error: {exc}", highlight=False, markup=False, soft_wrap=True)
    sys.exit(2 if isinstance(exc, ConfigError) else 1)


@click.group()
@click.version_option(package_name="agentrt")
def main() -> None:
    """agentrt: typed agents as actors over NATS."""


@main.command()
@click.argument("path", required=False)
@_config_option
@click.option("--demo", is_flag=True, help="Run the config's [demo] job, print the result, stop.")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              help="Log level of the node processes (logs: .agentrt/logs/).")  # fmt: skip
def up(path: str | None, config: str | None, demo: bool, log_level: str) -> None:
    """Start the cluster described by PATH (agentrt.toml or its directory).

    Starts an embedded nats-server (unless [nats] url is set), one process per node replica,
    and supervises them. With --demo, runs the [demo] job and stops; otherwise shows a live
    status view until Ctrl-C or `agentrt down`.
    """
    cfg = _load(config or path)
    if demo and cfg.demo is None:
        _fail(ConfigError(cfg.path, "$.demo", "--demo needs a [demo] table with job = 'module:fn'"))
    job = _demo if demo else _live
    _run(functools.partial(_up, Supervisor(cfg, log_level=log_level), job))


async def _up(sup: Supervisor, job: Callable[[Supervisor], Awaitable[int]]) -> int:
    """Run the cluster while ``job`` runs; the first Ctrl-C/SIGTERM drains, a second forces."""
    code = 0

    async def body(s: Supervisor) -> None:
        nonlocal code
        code = await job(s)

    async def on_signals(signals: AsyncIterator[int]) -> None:
        count = 0
        async for _ in signals:
            count += 1
            if count > 1:
                raise KeyboardInterrupt
            err_console.print("agentrt: stopping the cluster (Ctrl-C again to force)")
            sup.stop()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_signals, signals)
            await sup.run(body)
            nursery.cancel_scope.cancel()
    return code


async def _demo(s: Supervisor) -> int:
    """`up --demo`: wait for every node, run the [demo] job, print its result and the status."""
    cfg = s.cfg
    assert cfg.demo is not None and s.client is not None
    names = ", ".join(np.name for np in s.procs)
    console.print(f"agentrt: cluster [bold]{cfg.cluster.name}[/] up, nodes: {names}")
    with trio.move_on_after(READY_WAIT_S) as scope:
        await s.wait_ready()
    if scope.cancelled_caught:
        late = [np.name for np in s.procs if not np.ready.is_set()]
        err_console.print(
            f"agentrt: error: node(s) {', '.join(late)} did not become ready within "
            f"{READY_WAIT_S:.0f}s; see {s.log_dir}/<node>.log"
        )
        return 1
    job = resolve_callable(cfg, cfg.demo.job, cfg.path, "$.demo.job")
    try:
        with trio.fail_after(cfg.demo.timeout_s):
            result = await job(s.client)
    except trio.TooSlowError:
        err_console.print(f"agentrt: error: demo job did not finish in {cfg.demo.timeout_s}s")
        return 1
    except AgentrtError as exc:
        err_console.print(f"agentrt: error: demo job failed: {exc}", markup=False)
        return 1
    console.print("[bold]result:[/]")
    if isinstance(result, str):
        console.print(result, markup=False, highlight=False)
    else:
        console.print_json(msgspec.json.encode(result).decode())
    statuses = await s.node_statuses()
    console.print(render_status(s.cluster_status(), statuses))
    if (models := models_table(merge_stats(n.models for n in statuses))) is not None:
        console.print(models)
    return 0


async def _live(s: Supervisor) -> int:
    """`up` without --demo: a live status table until the cluster is stopped (cancelled)."""
    from rich.live import Live

    console.print(
        f"agentrt: cluster [bold]{s.cfg.cluster.name}[/] starting; "
        "Ctrl-C or `agentrt down` stops it"
    )
    with Live(render_status(s.cluster_status(), []), console=console,
              refresh_per_second=4) as live:  # fmt: skip
        while True:
            live.update(render_status(s.cluster_status(), await s.node_statuses()))
            await trio.sleep(1.0)


async def _with_client(
    cfg: ClusterConfig, fn: Callable[[Node], Awaitable[int]], policy: ToolPolicy | None = None
) -> int:
    state = read_state(cfg)
    try:
        config = node_config_from_state(cfg, state, f"cli-{os.getpid()}")
        async with open_client(config, registry=tool_registry(cfg), policy=policy) as c:
            return await fn(c)
    except BusError as exc:
        raise ClusterNotRunning(
            f"cluster {cfg.cluster.name!r} does not answer at {', '.join(state.servers)} "
            f"({exc}); if it was killed, run `agentrt down` to clean up, then `agentrt up`"
        ) from exc


@main.command()
@click.argument("path", required=False)
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(path: str | None, config: str | None, as_json: bool) -> None:
    """Show nodes, actors and message/error counts of the running cluster."""
    cfg = _load(config or path)

    async def run() -> int:
        async def q(client: Node) -> int:
            subjects = Subjects(cfg.cluster.name)
            cluster: ClusterStatus | None = None
            try:
                with trio.fail_after(5):
                    env = await client.bus.request(subjects.ctl("cluster"), b"")
                cluster = msgspec.msgpack.decode(env.data, type=ClusterStatus)
            except (AgentUnavailable, trio.TooSlowError):
                pass  # joined an external cluster: no supervisor, nodes answer for themselves
            expected = len(cluster.processes) if cluster else None
            nodes = await gather_node_statuses(client, subjects, expected)
            if as_json:
                out = {"cluster": cluster, "nodes": nodes}
                print(json.dumps(msgspec.to_builtins(out), indent=2))
            else:
                console.print(render_status(cluster, nodes))
                if (mcp := render_mcp(nodes)) is not None:
                    console.print(mcp)
                if (cache := render_cache(nodes)) is not None:
                    console.print(cache)
                if (models := models_table(merge_stats(n.models for n in nodes))) is not None:
                    console.print(models)
            return 0

        return await _with_client(cfg, q)

    _run(run)


@main.command()
@click.argument("agent")
@click.argument("message")
@_config_option
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the reply.")
def call(agent: str, message: str, config: str | None, timeout: float) -> None:
    """Send MESSAGE (JSON with its "type" tag) to AGENT (type/key) and print the reply as JSON.

    Example: agentrt call Greeter/alice '{"type": "quickstart.hello", "name": "Alice"}'
    """
    cfg = _load(config)
    try:
        to = AgentId.parse(agent)
    except ValueError as exc:
        _fail(AgentrtError(f"AGENT {agent!r}: {exc}"))
    try:
        payload = json.loads(message)
    except json.JSONDecodeError as exc:
        _fail(AgentrtError(f"MESSAGE is not JSON ({exc}); quote it, e.g. '{{\"type\": ...}}'"))
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        _fail(AgentrtError(
            'MESSAGE must be a JSON object with a "type" field naming the message tag, '
            'e.g. {"type": "quickstart.hello", "name": "Alice"}'
        ))  # fmt: skip

    async def run() -> int:
        async def q(client: Node) -> int:
            deadline = trio.current_time() + timeout
            env = client._envelope(
                Kind.REQUEST, payload["type"], f"client:{client.name}", str(to),
                message.encode(), deadline, ContentType.JSON,
            )  # fmt: skip
            reply = await client.request_envelope(client.agent_subject(to), env, deadline)
            if not reply.type:
                print("null")
            elif reply.content_type is ContentType.JSON:
                print(reply.payload.decode())
            else:
                print(json.dumps(msgspec.msgpack.decode(reply.payload), indent=2))
            return 0

        return await _with_client(cfg, q)

    _run(run)


@main.group()
def tools() -> None:
    """The cluster's tools: list them, show a schema, call one through the gate."""


@tools.command("list")
@_config_option
def tools_list(config: str | None) -> None:
    """List every tool of the cluster (from agentrt.toml), with the node that runs it."""
    cfg = _load(config)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("tool", "node", "pure", "description"):
        table.add_column(col)
    for node in cfg.nodes:
        for t in resolve_tools(cfg, node.name):
            table.add_row(t.name, node.name, "yes" if t.spec.pure else "", t.spec.description)
    console.print(table)


@tools.command("show")
@click.argument("name")
@_config_option
def tools_show(name: str, config: str | None) -> None:
    """Print a tool's full spec (input and output JSON Schemas, fallback) as JSON."""
    cfg = _load(config)
    t = tool_registry(cfg).get(name)
    if t is None:
        known = ", ".join(x.name for x in tool_registry(cfg)) or "none"
        _fail(AgentrtError(f"no tool named {name!r} in {cfg.path} (tools: {known})"))
        return
    print(json.dumps(msgspec.to_builtins(t.spec), indent=2))


@tools.command("call")
@click.argument("name")
@click.argument("arguments")
@_config_option
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the result.")
def tools_call(name: str, arguments: str, config: str | None, timeout: float) -> None:
    """Call tool NAME with ARGUMENTS (JSON, or sloppy model output: it is repaired, then
    validated) through the gate, and print the result as JSON."""
    cfg = _load(config)

    async def run() -> int:
        async def q(client: Node) -> int:
            with trio.fail_after(timeout):
                result = await client.call_tool(name, arguments)
            print(json.dumps(result, indent=2))
            return 0

        return await _with_client(cfg, q)

    _run(run)


@main.group()
def mcp() -> None:
    """agentrt and MCP: offer the cluster's tools to MCP clients."""


@mcp.command("serve")
@_config_option
@click.option(
    "--http",
    "http",
    default=None,
    metavar="HOST:PORT",
    help="Serve streamable HTTP at http://HOST:PORT/mcp (default: stdio).",
)
@click.option(
    "--policy",
    "policy_file",
    default=None,
    metavar="FILE",
    help="Policy file deciding which tools are offered (default: strict, none).",
)
def mcp_serve(config: str | None, http: str | None, policy_file: str | None) -> None:  # fmt: skip
    """Serve the running cluster's tools as an MCP server (stdio, or HTTP with --http).

    Every call goes through the gate and the policy; refusals are MCP error results.
    """
    from agentrt.sandbox import Policy, load_policy

    strict = Policy(description="nothing allowed", path="(strict: pass --policy FILE)")
    cfg = _load(config)
    try:
        pol = load_policy(policy_file) if policy_file else strict
    except AgentrtError as exc:
        _fail(exc)
    address: tuple[str, int] | None = None
    if http is not None:
        host, _, port = http.rpartition(":")
        if not host or not port.isdigit():
            _fail(AgentrtError(f"--http {http!r}: give HOST:PORT, e.g. 127.0.0.1:8765"))
        address = (host, int(port))

    async def run() -> int:
        from agentrt.agents import serve_mcp_http, serve_mcp_stdio

        async def q(client: Node) -> int:
            if address is None:
                await serve_mcp_stdio(client)
                return 0
            async with trio.open_nursery() as nursery:
                url = await nursery.start(serve_mcp_http, client, *address)
                err_console.print(f"agentrt: MCP server at {url}", highlight=False)
            return 0

        return await _with_client(cfg, q, policy=pol)

    _run(run)


@main.group()
def policy() -> None:
    """Node policies: check a policy file and print its effective rules."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def policy_check(file: str) -> None:
    """Validate policy FILE and print the rules it really applies (default deny included)."""
    from agentrt.sandbox import load_policy

    try:
        loaded = load_policy(file)
    except AgentrtError as exc:
        _fail(exc)
        return
    console.print("\n".join(loaded.effective()), markup=False, highlight=False)


@main.command("eval")
@click.argument("file", type=click.Path(dir_okay=False))
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def eval_(file: str, config: str | None, as_json: bool) -> None:
    """Run FILE's tasks on every tier against the running cluster's tools; recommend the
    cheapest tier per agent type (see docs/scheduler.md)."""
    from agentrt.agents._eval import evaluate, load_eval_file, render_report

    from ._scheduler import open_scheduler

    cfg = _load(config)
    try:
        spec = load_eval_file(file)
        if cfg.models is None:
            raise ConfigError(
                cfg.path, "$.models", "agentrt eval needs a [models] section (backends and "
                "tiers) to know which models each tier has",
            )  # fmt: skip
    except AgentrtError as exc:
        _fail(exc)

    async def run() -> int:
        assert cfg.models is not None
        async with open_scheduler(cfg.models) as scheduler:

            async def q(client: Node) -> int:
                report = await evaluate(
                    client, spec,
                    lambda agent, tier: scheduler.session(f"eval/{agent}", agent, pin=tier),
                    price=scheduler.accounting.cost_of,
                    on_result=None if as_json else lambda r: err_console.print(
                        f"  {r.task} on {r.tier}: {r.passed}/{r.runs} passed"),
                )  # fmt: skip
                if as_json:
                    print(msgspec.json.encode(report).decode())
                    return 0
                table, toml = render_report(report)
                console.print(table)
                console.print(toml, markup=False, highlight=False)
                return 0

            return await _with_client(cfg, q)

    _run(run)


@main.command()
@click.argument("path", required=False)
@_config_option
def metrics(path: str | None, config: str | None) -> None:
    """Print the cluster's counters in the Prometheus text format (summed over nodes)."""
    cfg = _load(config or path)

    async def run() -> int:
        async def q(client: Node) -> int:
            nodes = await gather_node_statuses(client, Subjects(cfg.cluster.name), None)
            print(render_prometheus(nodes), end="")
            return 0

        return await _with_client(cfg, q)

    _run(run)


def render_prometheus(nodes: list[NodeStatus]) -> str:
    """Gate and tool-cache counters summed over nodes, and per-node agent counters, as
    Prometheus text."""
    gate = GateMetrics()
    for n in nodes:
        for c in n.gate:
            gate.count(c.model, c.tool, Outcome(c.outcome), c.count)
    cache = CacheMetrics()
    for n in nodes:
        for cc in n.cache:
            cache.count(cc.tool, CacheOutcome(cc.outcome), cc.count)
    lines = [gate.prometheus().rstrip("\n"), cache.prometheus().rstrip("\n")]
    lines += [
        "# HELP agentrt_agent_messages_total Messages per node, agent type and result.",
        "# TYPE agentrt_agent_messages_total counter",
    ]
    for n in nodes:
        for a in n.agents:
            for result in ("received", "handled", "failed", "overloaded", "deadline_exceeded"):
                lines.append(
                    f'agentrt_agent_messages_total{{node="{n.node}",agent="{a.type}",'
                    f'result="{result}"}} {getattr(a, result)}'
                )
    if models := merge_stats(n.models for n in nodes):  # agentrt_model_*, summed over nodes
        lines.append(models_prometheus(models).rstrip("\n"))
    return "\n".join(lines) + "\n"


@main.command()
@click.argument("path", required=False)
@_config_option
def down(path: str | None, config: str | None) -> None:
    """Stop the running cluster gracefully (nodes drain first)."""
    cfg = _load(config or path)
    timeout = cfg.cluster.drain_timeout_s + 30

    async def run() -> int:
        async def q(client: Node) -> int:
            with trio.fail_after(timeout):
                await client.bus.request(Subjects(cfg.cluster.name).ctl("down"), b"")
            console.print(f"agentrt: cluster {cfg.cluster.name} stopped")
            return 0

        try:
            return await _with_client(cfg, q)
        except (ClusterNotRunning, AgentUnavailable) as exc:
            if isinstance(exc, ClusterNotRunning) and exc.__cause__ is None:
                raise
            return _clean_stale(cfg)

    _run(run)


def _clean_stale(cfg: ClusterConfig) -> int:
    from ._cluster import _alive, state_path

    state = read_state(cfg)
    for pid in (state.nats_pid,):
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
    state_path(cfg).unlink(missing_ok=True)
    console.print(f"agentrt: no supervisor answered; removed the stale state of {cfg.cluster.name}")
    return 0


@main.command()
@click.argument("path", required=False)
@_config_option
def check(path: str | None, config: str | None) -> None:
    """Validate agentrt.toml (types, agent imports, files) without starting anything."""
    cfg = _load(config or path)
    nodes = ", ".join(f"{n.name} x{n.replicas}" for n in cfg.nodes)
    console.print(f"{cfg.path}: OK — cluster {cfg.cluster.name}, nodes {nodes}")
