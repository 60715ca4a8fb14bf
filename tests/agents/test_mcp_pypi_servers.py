"""The bridge with more real servers from PyPI: ``mcp-server-git`` on a temporary repository and
``mcp-server-fetch`` against a local HTTP server, both over stdio, called through the cluster.

Schemas are compared with what the SDK client lists from the same server directly. To prove
that the gate stops invalid arguments before they reach a server, the git server runs behind
``stdio_tee.py``, which logs every message the server receives without changing any.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio
from agentrt import GateError
from agentrt.agents import McpServerConfig
from mcp import ClientSession, StdioServerParameters, stdio_client

from .conftest import bridged

TEE = str(Path(__file__).with_name("stdio_tee.py"))


async def _listed(argv: list[str], errlog: Any) -> dict[str, Any]:
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    async with (
        stdio_client(params, errlog=errlog) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return {t.name: t for t in (await session.list_tools()).tools}


def _repo(path: Path) -> Path:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)

    path.mkdir()
    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "Test")
    (path / "notes.txt").write_text("first\n")
    git("add", "notes.txt")
    git("commit", "-q", "-m", "the first commit")
    (path / "notes.txt").write_text("changed\n")
    return path


async def test_git_server_through_the_cluster(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    repo = _repo(tmp_path / "repo")
    received = tmp_path / "received.jsonl"
    server = [sys.executable, "-m", "mcp_server_git", "--repository", str(repo)]
    with (tmp_path / "err").open("w+") as errlog, trio.fail_after(60):
        listed = await _listed(server, errlog)
    cfg = McpServerConfig(name="git", command=[sys.executable, TEE, str(received), *server])
    async with bridged(nats_url, cluster_name, [cfg]) as (bridge, _, client):
        assert bridge.tools("git") == sorted(f"mcp.git.{n}" for n in listed)
        with trio.fail_after(60):
            for name, t in listed.items():
                spec = (await client.registry.wait_for(f"mcp.git.{name}")).spec
                assert (spec.input_schema, spec.output_schema) == (t.input_schema, t.output_schema)
            with pytest.raises(GateError) as bad_type:
                await client.call_tool("mcp.git.git_log", {"repo_path": str(repo),
                                                           "max_count": "many"})  # fmt: skip
            with pytest.raises(GateError) as missing:
                await client.call_tool("mcp.git.git_status", {"path_to_repo": "/etc"})
            status = await client.call_tool("mcp.git.git_status", {"repo_path": str(repo)})
            log = await client.call_tool("mcp.git.git_log", {"repo_path": str(repo),
                                                             "max_count": 1})  # fmt: skip
    assert bad_type.value.violations[0].pointer == "/max_count"
    assert missing.value.violations[0].keyword == "required"
    assert "notes.txt" in status["content"][0]["text"]
    assert "the first commit" in log["content"][0]["text"]
    calls = [json.loads(line)["params"] for line in received.read_text().splitlines()
             if json.loads(line).get("method") == "tools/call"]  # fmt: skip
    assert calls == [  # what reached the server: only the two valid calls, as sent
        {"name": "git_status", "arguments": {"repo_path": str(repo)}},
        {"name": "git_log", "arguments": {"repo_path": str(repo), "max_count": 1,
                                          "start_timestamp": None, "end_timestamp": None}},
    ], calls  # (the gate filled the schema's declared defaults)  # fmt: skip


class _Site(BaseHTTPRequestHandler):
    agents: list[str] = []

    def do_GET(self) -> None:
        _Site.agents.append(self.headers.get("User-Agent", ""))
        if self.path == "/robots.txt":
            body, kind = b"User-agent: *\nAllow: /\n", "text/plain"
        elif self.path == "/page.html":
            body = b"<html><body><h1>Bridge page</h1><p>served to the fetch server</p></body>"
            kind = "text/html"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _site() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


async def test_fetch_server_through_the_cluster(
    nats_url: str, cluster_name: str, tmp_path: Path
) -> None:
    # Loopback is refused by default; robots.txt is honoured (the site allows everything).
    server = [sys.executable, "-m", "mcp_server_fetch", "--allow-private-ips",
              "--user-agent", "agentrt-test"]  # fmt: skip
    with (tmp_path / "err").open("w+") as errlog, trio.fail_after(60):
        listed = await _listed(server, errlog)
    cfg = McpServerConfig(name="fetch", command=server)
    with _site() as site:
        async with bridged(nats_url, cluster_name, [cfg]) as (_, _, client):
            with trio.fail_after(60):
                spec = (await client.registry.wait_for("mcp.fetch.fetch")).spec
                assert spec.input_schema == listed["fetch"].input_schema
                with pytest.raises(GateError) as info:
                    await client.call_tool("mcp.fetch.fetch", {"url": site, "max_length": 0})
                result = await client.call_tool("mcp.fetch.fetch", {"url": f"{site}/page.html"})
    assert info.value.violations[0].pointer == "/max_length"
    text = result["content"][0]["text"]
    assert "Bridge page" in text and "served to the fetch server" in text
    assert _Site.agents and set(_Site.agents) == {"agentrt-test"}
