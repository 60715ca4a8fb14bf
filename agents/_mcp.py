"""The MCP bridge: every tool of every configured MCP server becomes a gated agentrt tool.

Each server runs as a child process spoken to over stdio with the official ``mcp`` SDK client.
Its tools are hosted on the node as ``mcp.<server>.<tool>`` with the server's own input schema,
so every node in the cluster validates calls to them before anything reaches the server.

Each server has its own supervised task, and the SDK's anyio task groups live inside it (anyio
runs on trio): a server that crashes or closes its stdout takes down only its own session. The
supervisor then unhosts its tools (callers get ``AgentUnavailable`` instead of a hang), waits a
backoff that doubles up to a maximum, restarts the process and hosts the tools again. Calls in
flight when a session ends fail with ``McpServerError`` naming the server.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any

import anyio
import msgspec
import trio
from agentrt import McpServerError, ToolSpec, make_tool
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult, TextContent

__all__ = ["McpBridge", "McpServerConfig"]

log = logging.getLogger(__name__)

_STDERR_TAIL = 2000  # bytes of a failed server's stderr worth putting in the log


class McpServerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One MCP server the bridge runs and exposes.

    Attributes:
        name: the server's short name; its tools are hosted as ``mcp.<name>.<tool>``.
        command: the argv that starts the server speaking MCP on stdin/stdout.
        env: extra environment variables, merged over the SDK's minimal default environment
            (so secrets of the node's own environment are not handed to every server).
        timeout_s: longest a start-up (initialize + list) or a single tool call may take.
    """

    name: str
    command: list[str]
    env: dict[str, str] = {}
    timeout_s: float = 30.0


class _Generation:
    """One run of a server's process: its calls in flight, so that they can be failed (not left
    waiting) when this run's session ends."""

    def __init__(self) -> None:
        self.closed = False
        self.calls: set[trio.CancelScope] = set()
        self.names: list[str] = []  # the tools hosted for this run, to unhost when it ends

    def close(self) -> None:
        self.closed = True
        for scope in self.calls:
            scope.cancel()


def _content_json(result: CallToolResult) -> Any:
    """A tool result as JSON: the structured result when the server gives one (it is what an
    output schema describes), else the content blocks (text blocks as ``{type, text}``)."""
    if result.structured_content is not None:
        return result.structured_content
    blocks: list[dict[str, Any]] = []
    for block in result.content:
        if isinstance(block, TextContent):
            blocks.append({"type": "text", "text": block.text})
        else:
            blocks.append(block.model_dump(mode="json", by_alias=True, exclude_none=True))
    return {"content": blocks}


def _error_text(result: CallToolResult) -> str:
    texts = [b.text for b in result.content if isinstance(b, TextContent)]
    return "\n".join(texts) or "the tool reported an error without a message"


class McpBridge:
    """Runs MCP servers and hosts their tools on ``node`` for as long as ``serve`` runs.

    Attributes:
        restarts: per server, how many times its tools were hosted again after a restart
            (0 once the first start succeeded). ``wait_ready`` waits on it without polling.
    """

    def __init__(
        self, node: Any, servers: Sequence[McpServerConfig], *, restart_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ) -> None:  # fmt: skip
        names = [s.name for s in servers]
        if len(set(names)) != len(names):
            raise ValueError(f"MCP server names must be unique, got {names}")
        self._node = node
        self._servers = list(servers)
        self._backoff_s = restart_backoff_s
        self._max_backoff_s = max_backoff_s
        self.restarts: dict[str, int] = {}
        self._hosted: dict[str, list[str]] = {}
        self._changed = trio.Event()
        self._first_attempts = len(self._servers)
        self._all_attempted = trio.Event()
        if not self._servers:
            self._all_attempted.set()

    def tools(self, server: str) -> list[str]:
        """The tool names currently hosted for ``server`` (empty while it is down)."""
        return list(self._hosted.get(server, ()))

    async def wait_ready(self, server: str, restarts: int = 0) -> None:
        """Wait until ``server``'s tools are hosted by a run that has ``restarts`` (or more)
        restarts behind it: ``wait_ready(s, bridge.restarts[s] + 1)`` waits for the next one."""
        while not (server in self._hosted and self.restarts.get(server, -1) >= restarts):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every server under supervision until cancelled.

        ``task_status.started()`` is called once every server has had its first start attempt:
        its tools are hosted, or it failed (logged, and retried in the background) — a server
        that cannot start never keeps the others' tools from being served.
        """
        async with trio.open_nursery() as nursery:
            for cfg in self._servers:
                nursery.start_soon(self._supervise, cfg)
            await self._all_attempted.wait()
            task_status.started()

    def _attempted(self) -> None:
        self._first_attempts -= 1
        if self._first_attempts == 0:
            self._all_attempted.set()

    async def _supervise(self, cfg: McpServerConfig) -> None:
        backoff = self._backoff_s
        first = True
        while True:
            started = trio.current_time()
            hosted = False

            def on_hosted() -> None:
                nonlocal first, hosted
                hosted = True
                if first:
                    first = False
                    self._attempted()

            try:
                await self._run_once(cfg, on_hosted)
                log.warning("MCP server %r closed its session; restarting it", cfg.name)
            except Exception as exc:  # the SDK raises (often grouped) when a server dies
                log.warning("MCP server %r failed: %s; restarting it", cfg.name, _describe(exc))
            if first:
                first = False
                self._attempted()
            # A run that stayed up a while was healthy: start over from the short backoff.
            if hosted and trio.current_time() - started >= self._max_backoff_s:
                backoff = self._backoff_s
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)

    async def _run_once(self, cfg: McpServerConfig, on_hosted: Callable[[], None]) -> None:
        """Start the server, host its tools, and return when its session ends."""
        params = StdioServerParameters(command=cfg.command[0], args=cfg.command[1:], env=cfg.env)
        gen = _Generation()
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
            try:
                async with stdio_client(params, errlog=stderr) as (read, write):
                    # Relay the server's messages so that the end of its stdout is an event
                    # here: the session itself does not say when its connection closed.
                    ended = trio.Event()
                    relay_send, relay_recv = anyio.create_memory_object_stream[Any](0)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_relay, read, relay_send, ended)
                        async with ClientSession(relay_recv, write) as session:
                            with trio.fail_after(cfg.timeout_s):
                                await session.initialize()
                                listing = await session.list_tools()
                            try:
                                await self._host(cfg, session, listing.tools, gen)
                                on_hosted()
                                await ended.wait()
                            finally:
                                gen.close()
                                await self._unhost(cfg.name, gen)
                        nursery.cancel_scope.cancel()
            except BaseException:
                gen.close()
                _log_stderr(cfg.name, stderr)
                raise
            _log_stderr(cfg.name, stderr)

    async def _host(
        self, cfg: McpServerConfig, session: ClientSession, tools: Sequence[Any], gen: _Generation
    ) -> None:
        for mcp_tool in tools:
            spec = ToolSpec(
                name=f"mcp.{cfg.name}.{mcp_tool.name}",
                description=mcp_tool.description or "",
                input_schema=dict(mcp_tool.input_schema),
                output_schema=None,
                # The bridge's own deadline (timeout_s) fires first, with a typed error.
                timeout_s=cfg.timeout_s + 1.0,
            )
            try:
                t = make_tool(spec, _caller(cfg, session, mcp_tool.name, gen))
            except Exception as exc:  # SchemaError: one bad tool must not hide the others
                log.warning("MCP server %r: tool %r not hosted: %s", cfg.name, mcp_tool.name, exc)
                continue
            gen.names.append(spec.name)  # before hosting: a failure half-way still unhosts
            await self._node.host_tool(t)
        self._hosted[cfg.name] = list(gen.names)
        if cfg.name in self.restarts:
            self.restarts[cfg.name] += 1
        else:
            self.restarts[cfg.name] = 0
        log.info("MCP server %r: hosting %d tools", cfg.name, len(gen.names))
        self._notify()

    async def _unhost(self, server: str, gen: _Generation) -> None:
        names = gen.names
        if self._hosted.pop(server, None) is not None:
            self._notify()
        # Shielded: the bridge being cancelled is exactly when its tools must be unhosted.
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            for name in names:
                try:
                    await self._node.unhost_tool(name)
                except Exception as exc:  # the node is stopping: nothing more to undo
                    log.debug("unhosting %s failed: %s", name, exc)


def _caller(
    cfg: McpServerConfig, session: ClientSession, tool_name: str, gen: _Generation
) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """The tool implementation: one ``tools/call`` on this run's session, typed on failure."""
    server = cfg.name

    async def call(args: dict[str, Any]) -> Any:
        if gen.closed:
            raise McpServerError(server, "its session ended; it is being restarted, call again")
        with trio.CancelScope() as scope:
            gen.calls.add(scope)
            try:
                with trio.fail_after(cfg.timeout_s):
                    result = await session.call_tool(tool_name, args)
            except trio.TooSlowError:
                raise McpServerError(
                    server, f"tool {tool_name!r} did not answer within {cfg.timeout_s:.3g}s"
                ) from None
            except Exception as exc:  # MCPError (connection closed), broken streams ...
                raise McpServerError(
                    server, f"call to {tool_name!r} failed: {_describe(exc)}"
                ) from exc
            finally:
                gen.calls.discard(scope)
        if scope.cancelled_caught:
            raise McpServerError(server, f"the server exited during the call to {tool_name!r}")
        if result.is_error:
            raise McpServerError(server, f"tool {tool_name!r} failed: {_error_text(result)}")
        return _content_json(result)

    return call


async def _relay(src: Any, dst: Any, ended: trio.Event) -> None:
    try:
        async with dst:
            async for item in src:
                await dst.send(item)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    finally:
        ended.set()


def _describe(exc: BaseException) -> str:
    """The leaves of (nested) exception groups, which the SDK's task groups wrap errors in."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _log_stderr(server: str, stderr: IO[str]) -> None:
    stderr.seek(0, 2)
    size = stderr.tell()
    if size == 0:
        return
    stderr.seek(max(0, size - _STDERR_TAIL))
    log.info("MCP server %r stderr (tail):\n%s", server, stderr.read())
