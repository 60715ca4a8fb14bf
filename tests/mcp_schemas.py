"""Real MCP tool input schemas, as the reference servers list them over stdio.

The gate has to accept, and validate correctly, the schemas real MCP servers publish, so the
tests ask the servers themselves instead of keeping copies that could drift: each server is
started as ``python -m <module>`` with the official ``mcp`` SDK client (``stdio_client`` +
``ClientSession``), initialized, and asked for ``tools/list``. The three servers start
concurrently (about 1.5 s in all) once per test process; the result is cached in this module.
It is not cached on disk: a server that stops starting must fail the tests, with its stderr.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import trio
from mcp import ClientSession, StdioServerParameters, stdio_client

__all__ = ["SERVERS", "McpServerFailed", "tool_schemas"]

SERVERS = ("time", "git", "fetch")
"""The servers, by short name; ``mcp-server-<name>`` on PyPI, module ``mcp_server_<name>``."""

_START_TIMEOUT_S = 60.0  # generous: three Python servers importing on a loaded 2-core machine

_schemas: dict[str, dict[str, dict[str, Any]]] = {}
_failures: dict[str, str] = {}


class McpServerFailed(AssertionError):
    """A server did not start or did not list its tools; the message holds its stderr.

    An ``AssertionError`` so that the test asking for the schemas FAILS (never errors or skips).
    """


def tool_schemas(server: str, workdir: Path) -> dict[str, dict[str, Any]]:
    """``{tool name: inputSchema}`` for one server, starting all servers on the first call.

    Args:
        server: one of ``SERVERS``.
        workdir: a scratch directory for the git server's repository (created on first call).

    Raises:
        McpServerFailed: the server could not be started or listed; has the server's stderr.
    """
    if not _schemas and not _failures:
        trio.run(_list_all, _commands(workdir))
    if server in _failures:
        raise McpServerFailed(_failures[server])
    return _schemas[server]


def _commands(workdir: Path) -> dict[str, list[str]]:
    repo = workdir / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    git = ["git", "-C", str(repo), "-c", "user.name=agentrt", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "--quiet"], check=True)
    subprocess.run([*git, "commit", "--quiet", "--allow-empty", "-m", "init"], check=True)
    return {
        "time": [sys.executable, "-m", "mcp_server_time"],
        "git": [sys.executable, "-m", "mcp_server_git", "--repository", str(repo)],
        "fetch": [sys.executable, "-m", "mcp_server_fetch"],
    }


async def _list_all(commands: dict[str, list[str]]) -> None:
    async with trio.open_nursery() as nursery:
        for name, argv in commands.items():
            nursery.start_soon(_list_one, name, argv)


async def _list_one(name: str, argv: list[str]) -> None:
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
        try:
            with anyio.fail_after(_START_TIMEOUT_S):
                async with (
                    stdio_client(params, errlog=stderr) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    await session.initialize()
                    listing = await session.list_tools()
            _schemas[name] = {tool.name: dict(tool.input_schema) for tool in listing.tools}
        except Exception as exc:  # recorded with the server's stderr; raised by tool_schemas
            stderr.seek(0)
            causes = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(exc))
            _failures[name] = (
                f"MCP server {name!r} ({' '.join(argv)}) did not list its tools: {causes}\n"
                f"--- server stderr ---\n{stderr.read()}"
            )


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups: the SDK's task groups wrap them."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
