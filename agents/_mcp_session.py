"""One MCP server under supervision: its connections, its hosted tools, the calls to it.

A *run* is one connection (one child process, or one HTTP session). The supervisor opens a
run, initializes it, lists the tools and hosts them; while it lasts, a ping every
``ping_interval_s`` (and at once after a call failed or timed out) checks that the server
still answers, and ``notifications/tools/list_changed`` re-lists and re-hosts. A run ends when
the server closes the connection, the transport fails, or a ping goes unanswered; calls in
flight then fail with ``McpServerError`` at once, and the supervisor connects again after a
backoff that doubles up to a maximum.

The tools stay hosted across an outage, so a call during it reaches the bridge and is
answered as configured: ``outage = "fail"`` fails it at once, ``"wait"`` waits for the next
run within the call's deadline.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, TYPE_CHECKING, Any, TextIO

import mcp_types
import trio
from agentrt import McpServerError, Node, ToolSpec, make_tool
from agentrt._control import McpServerHealth
from mcp import ClientSession
from mcp.types import CallToolResult, TextContent

from ._mcp_transport import open_transport

if TYPE_CHECKING:
    from ._mcp import McpServerConfig

__all__ = ["ServerSupervisor"]

log = logging.getLogger("agentrt.agents.mcp")

_STDERR_TAIL = 2000  # bytes of a failed server's stderr worth putting in the log
_CLOSE_GRACE_S = 2.0  # a lost connection gets this long to close politely (DELETE, exit)
_WAIT_TIMEOUT_S = 3600.0  # tool timeout published for outage="wait": the caller's deadline rules


class _Session(ClientSession):
    """The SDK session without its own output validation: the gate validates every result
    against the tool's output schema (compiled once, jsonschema-rs), on this node and on the
    caller's, so validating again in Python would only cost time."""

    async def validate_tool_result(self, name: str, result: CallToolResult) -> None:
        return None


class _Run:
    """One connection to the server: its session and the calls in flight on it."""

    def __init__(self) -> None:
        self.session: ClientSession | None = None
        self.ended = trio.Event()
        self.reason = ""
        self.calls: set[trio.CancelScope] = set()
        self.check = trio.Event()  # set: ping now (a call failed or timed out)
        self.relist = trio.Event()  # set: the server said its tool list changed

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()
            for scope in self.calls:
                scope.cancel()

    async def on_message(self, message: Any) -> None:
        """The SDK's message handler: runs on its read loop, so it only signals."""
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self.relist.set()
        elif isinstance(message, Exception):
            log.debug("MCP transport reported %s: %s", type(message).__name__, message)
            self.check.set()


class ServerSupervisor:
    """Keeps one server connected and its tools hosted on ``node``."""

    def __init__(
        self, node: Node, cfg: McpServerConfig, on_change: Callable[[], None]
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.name = cfg.name
        self.state = "starting"
        self.restarts = -1  # becomes 0 when the first run hosts its tools
        self.last_error = ""
        self.specs: dict[str, ToolSpec] = {}  # hosted, by agentrt tool name
        self._node = node
        self._on_change = on_change
        self._run: _Run | None = None
        self._up = trio.Event()
        self._limiter = trio.CapacityLimiter(cfg.max_concurrent)
        self.in_flight = 0  # calls sent to the server and not answered yet
        self.waiting = 0  # calls waiting for the server (outage = "wait") or for a free slot

    def health(self) -> McpServerHealth:
        return McpServerHealth(
            name=self.name, transport="http" if self.cfg.url else "stdio", state=self.state,
            restarts=max(self.restarts, 0), last_error=self.last_error, tools=len(self.specs),
        )  # fmt: skip

    # ------------------------------------------------------------------ supervision

    async def supervise(
        self, backoff_s: float, max_backoff_s: float, on_first_attempt: Callable[[], None]
    ) -> None:
        """Connect, serve, and connect again after every loss, until cancelled."""
        backoff = backoff_s
        attempted = False

        def first_attempt_done() -> None:
            nonlocal attempted
            if not attempted:
                attempted = True
                on_first_attempt()

        try:
            while True:
                started = trio.current_time()
                was_up = self.restarts
                try:
                    await self._run_once(first_attempt_done)
                    reason = self.last_error
                except Exception as exc:  # the SDK raises (often grouped) when a server dies
                    reason = _describe(exc)
                self.last_error = reason
                self.state = "down"
                self._on_change()
                log.warning("MCP server %r lost: %s; reconnecting in %.3gs", self.name, reason,
                            backoff)  # fmt: skip
                first_attempt_done()
                # A run that stayed up a while was healthy: start over from the short backoff.
                if self.restarts > was_up and trio.current_time() - started >= max_backoff_s:
                    backoff = backoff_s
                await trio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff_s)
                self.state = "restarting"
                self._on_change()
        finally:
            await self._unhost(list(self.specs))

    async def _run_once(self, on_ready: Callable[[], None]) -> None:
        run = _Run()
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
            try:
                with trio.CancelScope() as scope:
                    await self._connected(run, stderr, scope, on_ready)
            except Exception as exc:
                run.end(_describe(exc))
                raise
            finally:
                run.end("the bridge stopped")  # (if nothing ended it before)
                self._lost(run)
                _log_stderr(self.name, stderr)
        self.last_error = run.reason

    def _lost(self, run: _Run) -> None:
        """The run is over: calls from now on wait for the next one or fail (``outage``)."""
        if self._run is run:
            self._run = None
            self._up = trio.Event()
            self.state = "down"
            self.last_error = run.reason
            self._on_change()

    async def _connected(
        self, run: _Run, stderr: TextIO, scope: trio.CancelScope, on_ready: Callable[[], None]
    ) -> None:
        def closed() -> None:
            run.end("it closed the connection" if not self.cfg.url else "the connection closed")

        async with (
            open_transport(self.cfg, stderr, closed) as (read, write),
            _Session(read, write, message_handler=run.on_message) as session,
            trio.open_nursery() as nursery,
        ):
            run.session = session
            try:
                with trio.fail_after(self.cfg.start_timeout_s):
                    await session.initialize()
                    tools = await _list_all(session)
            except trio.TooSlowError:
                raise McpServerError(
                    self.name, "it did not initialize and list its tools within "
                    f"{self.cfg.start_timeout_s:.3g}s (start_timeout_s)",
                ) from None  # fmt: skip
            await self._sync(tools, replace_all=True)
            self.restarts += 1
            self.state = "ready"
            self._run = run
            self._up.set()
            log.info("MCP server %r: hosting %d tools", self.name, len(self.specs))
            self._on_change()
            on_ready()
            nursery.start_soon(self._follow_list, run)
            nursery.start_soon(self._watch, run)
            await run.ended.wait()
            self._lost(run)
            nursery.cancel_scope.cancel()
            # Closing politely (DELETE, stdin closed) must not hang on a stuck server.
            scope.deadline = trio.current_time() + _CLOSE_GRACE_S

    async def _watch(self, run: _Run) -> None:
        """Ping every ``ping_interval_s``, and at once when a call failed: a server that stops
        answering ends the run (and is reconnected) instead of failing every call by timeout."""
        assert run.session is not None
        while True:
            with trio.move_on_after(self.cfg.ping_interval_s):
                await run.check.wait()
            run.check = trio.Event()
            try:
                with trio.fail_after(self.cfg.ping_timeout_s):
                    await run.session.send_ping()
            except trio.TooSlowError:
                run.end(f"it did not answer a ping within {self.cfg.ping_timeout_s:.3g}s")
                return
            except Exception as exc:  # MCPError: connection closed, session terminated
                run.end(f"a ping failed: {_describe(exc)}")
                return

    async def _follow_list(self, run: _Run) -> None:
        assert run.session is not None
        while True:
            await run.relist.wait()
            run.relist = trio.Event()
            with trio.fail_after(self.cfg.timeout_s):
                tools = await _list_all(run.session)
            await self._sync(tools, replace_all=False)
            log.info("MCP server %r changed its tools: hosting %d", self.name, len(self.specs))
            self._on_change()

    async def _sync(self, tools: Sequence[mcp_types.Tool], *, replace_all: bool) -> None:
        """Host new and changed tools, unhost removed ones; after a reconnection every tool is
        hosted again (its spec re-published: the server may have been replaced)."""
        timeout = self.cfg.timeout_s + 1.0  # the bridge's own timeout fires first, typed
        if self.cfg.outage == "wait":
            timeout = _WAIT_TIMEOUT_S
        wanted: dict[str, ToolSpec] = {}
        for t in tools:
            spec = ToolSpec(
                name=f"mcp.{self.name}.{t.name}", description=t.description or "",
                input_schema=dict(t.input_schema),
                output_schema=dict(t.output_schema) if t.output_schema is not None else None,
                timeout_s=timeout,
            )  # fmt: skip
            if not replace_all and self.specs.get(spec.name) == spec:
                wanted[spec.name] = spec
                continue
            try:
                hosted = make_tool(spec, self._caller(t.name))
            except Exception as exc:  # SchemaError: one bad tool must not hide the others
                log.warning("MCP server %r: tool %r not hosted: %s", self.name, t.name, exc)
                continue
            await self._node.host_tool(hosted)
            wanted[spec.name] = self.specs[spec.name] = spec
        await self._unhost([n for n in self.specs if n not in wanted])

    async def _unhost(self, names: list[str]) -> None:
        # Shielded: the bridge being cancelled is exactly when its tools must be unhosted.
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            for name in names:
                self.specs.pop(name, None)
                try:
                    await self._node.unhost_tool(name)
                except Exception as exc:  # BusError (no marker stored), a closed bus
                    log.warning(
                        "MCP server %r: tool %s is no longer served, but could not be removed "
                        "from the cluster (callers get AgentUnavailable until it is): %s",
                        self.name, name, exc,
                    )  # fmt: skip

    # ------------------------------------------------------------------ calls

    def _caller(self, tool: str) -> Callable[[dict[str, Any]], Awaitable[Any]]:
        async def call(args: dict[str, Any]) -> Any:
            return await self.call(tool, args)

        return call

    async def call(self, tool: str, args: dict[str, Any]) -> Any:
        """One ``tools/call``: on the current run, or (``outage = "wait"``) the next one.

        Raises:
            McpServerError: the server is down (outage = "fail"), answered with an error, did
                not answer within ``timeout_s``, or was lost during the call.
        """
        run = self._run
        if run is None and self.cfg.outage == "fail":
            raise McpServerError(
                self.name,
                f"it is {self.state} ({self.last_error or 'not connected yet'}); tool "
                f"{tool!r} was not called. Call again once it is back (`agentrt status` "
                'shows it), or set outage = "wait" to wait for it within the deadline',
            )
        if run is not None and self._limiter.available_tokens:
            # The usual case takes its slot without a checkpoint: a yield here lets the
            # previous call's leftovers (its HTTP response being closed, its task ending) run
            # before this request is sent, 25-90 us on the bench, instead of while the server
            # works on it. The call checkpoints anyway once it sends.
            self._limiter.acquire_nowait()
        else:
            self.waiting += 1
            self._on_change()
            try:
                while (run := self._run) is None:
                    await self._up.wait()
                await self._limiter.acquire()
            finally:
                self.waiting -= 1
        self.in_flight += 1
        self._on_change()
        try:
            result = await self._call_on(run, tool, args)
        finally:
            self._limiter.release()
            self.in_flight -= 1
            self._on_change()
        if result.is_error:
            raise McpServerError(self.name, f"tool {tool!r} failed: {_error_text(result)}")
        return _content_json(result)

    async def _call_on(self, run: _Run, tool: str, args: dict[str, Any]) -> CallToolResult:
        if run.ended.is_set():
            raise McpServerError(self.name, f"{run.reason}; it is being reconnected, call again")
        assert run.session is not None
        # One scope for both ways a call is cut short (a cancel scope costs 5-9 us here):
        # its deadline is timeout_s, and the end of the run cancels it.
        with trio.CancelScope(deadline=trio.current_time() + self.cfg.timeout_s) as scope:
            run.calls.add(scope)
            try:
                return await run.session.call_tool(tool, args)
            except Exception as exc:  # MCPError (connection closed), broken streams ...
                run.check.set()
                raise McpServerError(
                    self.name, f"call to {tool!r} failed: {_describe(exc)}"
                ) from exc
            finally:
                run.calls.discard(scope)
        if not run.ended.is_set():
            run.check.set()
            raise McpServerError(
                self.name, f"tool {tool!r} did not answer within {self.cfg.timeout_s:.3g}s "
                "(timeout_s); the call was cancelled on the server",
            )  # fmt: skip
        raise McpServerError(
            self.name, f"the connection was lost during the call to {tool!r} ({run.reason}); "
            "it is being reconnected, call again",
        )  # fmt: skip


async def _list_all(session: ClientSession) -> list[mcp_types.Tool]:
    """Every tool, following the pagination cursor."""
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    while True:
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


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
