"""The MCP bridge: every tool of every configured MCP server becomes a gated agentrt tool.

A server is a child process spoken to over stdio, or a streamable HTTP endpoint, through the
official ``mcp`` SDK client. Its tools are hosted on the node as ``mcp.<server>.<tool>`` with
the server's own input and output schemas, so every node in the cluster validates calls to
them (and their results) before anything reaches the server or the caller.

Each server has its own supervised task (``_mcp_session.ServerSupervisor``), and the SDK's
anyio task groups live inside it (anyio runs on trio): a server that crashes, hangs or closes
its connection takes down only its own session, which is reconnected with backoff,
re-initialized and its tools re-hosted. How calls behave meanwhile is per server
(``outage``); calls in flight when a session ends fail with ``McpServerError`` naming the
server, never a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import trio
from agentrt import ConfigError, Node, NodeStatus
from agentrt._control import McpServerHealth

from ._mcp_session import ServerSupervisor

__all__ = ["McpBridge", "McpServerConfig", "check_server_config"]

log = logging.getLogger("agentrt.agents.mcp")


class McpServerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One MCP server the bridge connects and exposes (``[[nodes.mcp]]`` in agentrt.toml).

    Attributes:
        name: the server's short name; its tools are hosted as ``mcp.<name>.<tool>``.
        command: the argv that starts the server speaking MCP on stdin/stdout, or
        url: the server's streamable HTTP endpoint (``http://host:port/mcp``); exactly one of
            ``command`` and ``url``.
        headers: HTTP headers sent with every request to ``url`` (e.g. authorization).
        env: extra environment variables for ``command``, merged over the SDK's minimal default
            environment (so secrets of the node's own environment are not handed to servers).
        timeout_s: longest a single tool call (or a re-listing of the tools) may take.
        start_timeout_s: longest a start-up may take: process start (or HTTP connection),
            initialize and the first listing of the tools.
        max_concurrent: calls in flight to this server at most; more wait for a free slot
            (within their deadline).
        outage: what calls do while the server is being reconnected: ``"fail"`` at once with
            ``McpServerError``, or ``"wait"`` for it within the call's deadline.
        ping_interval_s: how often an idle connection is checked; a server that does not
            answer a ping within ``ping_timeout_s`` is reconnected (a stdio server restarted).
        ping_timeout_s: how long a ping may take.
    """

    name: str
    command: list[str] = []
    url: str = ""
    headers: dict[str, str] = {}
    env: dict[str, str] = {}
    timeout_s: float = 30.0
    start_timeout_s: float = 60.0
    max_concurrent: int = 16
    outage: Literal["fail", "wait"] = "fail"
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 5.0


def check_server_config(cfg: Any) -> tuple[str, str] | None:
    """The first problem of an MCP server entry as (key, what to do), or None.

    Shared by ``McpBridge`` and the agentrt.toml check (``McpSection`` has the same fields).
    """
    if bool(cfg.command) == bool(cfg.url):
        return ("command", "give exactly one of `command` (the argv of a stdio server, e.g. "
                '["python", "-m", "mcp_server_time"]) and `url` (a streamable HTTP endpoint, '
                'e.g. "http://127.0.0.1:8000/mcp")')  # fmt: skip
    if cfg.url and not cfg.url.startswith(("http://", "https://")):
        return ("url", f"{cfg.url!r} is not an http:// or https:// URL")
    if cfg.headers and not cfg.url:
        return ("headers", "`headers` only apply to a `url` server")
    for key in ("timeout_s", "start_timeout_s", "ping_interval_s", "ping_timeout_s"):
        if not getattr(cfg, key) > 0:
            return (key, f"must be a positive number of seconds, got {getattr(cfg, key)}")
    if cfg.max_concurrent < 1:
        return ("max_concurrent", f"must be at least 1, got {cfg.max_concurrent}")
    return None


class McpBridge:
    """Connects MCP servers and hosts their tools on ``node`` for as long as ``serve`` runs.

    Attributes:
        restarts: per server, how many times its tools were hosted again after the server was
            lost (0 once the first start succeeded). ``wait_ready`` waits on it.
    """

    def __init__(
        self, node: Node, servers: Sequence[McpServerConfig], *, restart_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ) -> None:  # fmt: skip
        """Check the entries; nothing starts before ``serve``.

        Raises:
            ConfigError: two servers share a name, or a server's entry is inconsistent.
        """
        seen: set[str] = set()
        for i, s in enumerate(servers):
            problem = check_server_config(s)
            if s.name in seen:
                problem = ("name", f"{s.name!r} is used twice; server names must be unique")
            seen.add(s.name)
            if problem is not None:
                raise ConfigError("McpBridge", f"servers[{i}].{problem[0]}", problem[1])
        self._node = node
        self._backoff_s = restart_backoff_s
        self._max_backoff_s = max_backoff_s
        self._changed = trio.Event()
        self._servers = {s.name: ServerSupervisor(node, s, self._notify) for s in servers}
        self._first_attempts = len(self._servers)
        self._all_attempted = trio.Event()
        if not self._servers:
            self._all_attempted.set()

    @property
    def restarts(self) -> dict[str, int]:
        return {n: s.restarts for n, s in self._servers.items() if s.restarts >= 0}

    def tools(self, server: str) -> list[str]:
        """The tool names currently hosted for ``server``."""
        return sorted(self._servers[server].specs)

    def calls(self, server: str) -> tuple[int, int]:
        """(in flight, waiting) calls of ``server``: waiting for the server to be back
        (``outage = "wait"``) or for a free slot (``max_concurrent``)."""
        s = self._servers[server]
        return s.in_flight, s.waiting

    def health(self) -> list[McpServerHealth]:
        """Each server's state, restarts, last error and tool count (for ``agentrt status``)."""
        return [s.health() for s in self._servers.values()]

    def fill_status(self, status: NodeStatus) -> None:
        """A ``Node.status_hooks`` entry: adds the servers' health to the node's status."""
        status.mcp = self.health()

    async def wait_ready(self, server: str, restarts: int = 0) -> None:
        """Wait until ``server`` is ready in a run that has ``restarts`` (or more) restarts
        behind it: ``wait_ready(s, bridge.restarts[s] + 1)`` waits for the next one."""
        s = self._servers[server]
        while not (s.state == "ready" and s.restarts >= restarts):
            await self._changed.wait()

    async def wait_changed(self) -> None:
        """Wait for the next change of any server's state, tools or calls."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every server under supervision until cancelled; unhost their tools on exit.

        ``task_status.started()`` is called once every server has had its first connection
        attempt: its tools are hosted, or it failed (logged, and retried in the background) —
        a server that cannot start never keeps the others' tools from being served.
        """
        self._node.status_hooks.append(self.fill_status)
        try:
            async with trio.open_nursery() as nursery:
                for s in self._servers.values():
                    nursery.start_soon(
                        s.supervise, self._backoff_s, self._max_backoff_s, self._attempted
                    )
                await self._all_attempted.wait()
                task_status.started()
        finally:
            if self.fill_status in self._node.status_hooks:
                self._node.status_hooks.remove(self.fill_status)

    def _attempted(self) -> None:
        self._first_attempts -= 1
        if self._first_attempts == 0:
            self._all_attempted.set()
