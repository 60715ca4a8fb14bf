"""``agentrt mcp serve`` driven by the SDK's client over stdio and streamable HTTP, against a
running cluster (started by the test with the real supervisor, found through its state file
like every other CLI command)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import agentrt
import pytest
import trio
from agentrt import GateError, PolicyDenied
from agentrt._cluster import Supervisor
from agentrt._config import load_config
from agentrt.sandbox import load_policy
from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ToolsListChanged
from mcp.types import TextContent, ToolListChangedNotification
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

AGENTRT = str(Path(sys.executable).with_name("agentrt"))

_TOOLS = '''
import agentrt
import msgspec


class Sum(msgspec.Struct):
    total: int


@agentrt.tool(name="calc.add")
def add(a: int, b: int) -> Sum:
    """Add two integers."""
    return Sum(total=a + b)


@agentrt.tool(name="calc.secret")
def secret() -> str:
    """Not for MCP clients."""
    return "hidden"
'''


@asynccontextmanager
async def _cluster(tmp_path: Path, cluster_name: str) -> AsyncIterator[Supervisor]:
    (tmp_path / "calctools.py").write_text(_TOOLS)
    (tmp_path / "serve-policy.toml").write_text(
        '[tools]\nallow = ["calc.*"]\ndeny = ["calc.secret"]\n'
    )
    (tmp_path / "agentrt.toml").write_text(
        textwrap.dedent(f"""
        [cluster]
        name = "{cluster_name}"

        [[nodes]]
        name = "calc"
        tools = ["calctools:add", "calctools:secret"]
    """)
    )
    sup = Supervisor(load_config(tmp_path))

    async def forever(_: Supervisor) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run, forever)
        with trio.fail_after(60):
            await sup.wait_ready()
        yield sup
        sup.stop()


class _ListChanges:
    """Counts ``notifications/tools/list_changed`` (the session's message handler); tests wait
    on the count, never on time."""

    def __init__(self) -> None:
        self.count = 0
        self._event = trio.Event()

    async def handler(self, message: Any) -> None:
        if isinstance(message, ToolListChangedNotification):
            self.count += 1
            self._event.set()
            self._event = trio.Event()

    async def wait(self, count: int) -> None:
        while self.count < count:
            await self._event.wait()


@agentrt.tool(name="calc.mul")
def mul(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@agentrt.tool(name="other.hidden")
def hidden() -> str:
    """Not allowed by the serve policy."""
    return "hidden"


async def _follows_the_cluster(
    session: ClientSession, sup: Supervisor, changes: _ListChanges
) -> None:
    """A tool hosted at run time on a node of the cluster appears in a fresh listing after
    the notification; a removed one disappears, and calling it is the gate's refusal."""
    assert sup.client is not None
    caps = session.server_capabilities
    assert caps is not None and caps.tools is not None and caps.tools.list_changed is True
    before = changes.count
    await sup.client.host_tool(hidden)  # filtered out by the policy: not offered
    await sup.client.host_tool(mul)
    await changes.wait(before + 1)
    listed = {t.name for t in (await session.list_tools()).tools}
    assert listed == {"calc.add", "calc.mul"}
    ok = await session.call_tool("calc.mul", {"a": 6, "b": 7})
    assert not ok.is_error and _text(ok) == "42"

    seen = changes.count
    await sup.client.unhost_tool("calc.mul")
    await changes.wait(seen + 1)
    assert {t.name for t in (await session.list_tools()).tools} == {"calc.add"}
    with pytest.raises(GateError) as gone:  # the same registry, on the cluster's side
        sup.client.gate.check_call("calc.mul", {"a": 1, "b": 2})
    refused = await session.call_tool("calc.mul", {"a": 1, "b": 2})
    assert refused.is_error
    assert _text(refused) == gone.value.render_compact()
    await sup.client.unhost_tool("other.hidden")


def _text(result: Any) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, TextContent))


async def _exercise(session: ClientSession, sup: Supervisor, policy: Path) -> None:
    """List, call, send invalid arguments and a denied tool; compare with the cluster's view."""
    assert sup.client is not None
    await session.initialize()
    listed = {t.name: t for t in (await session.list_tools()).tools}
    assert set(listed) == {"calc.add"}  # calc.secret is denied by the policy: not offered
    spec = sup.client.registry.get("calc.add")
    assert spec is not None
    assert listed["calc.add"].input_schema == spec.spec.input_schema
    assert listed["calc.add"].output_schema == spec.spec.output_schema
    assert listed["calc.add"].description == "Add two integers."

    ok = await session.call_tool("calc.add", {"a": 2, "b": 3})
    assert not ok.is_error
    assert ok.structured_content == {"total": 5}

    with pytest.raises(GateError) as gate:
        sup.client.gate.check_call("calc.add", {"a": "two", "b": 3})
    bad = await session.call_tool("calc.add", {"a": "two", "b": 3})
    assert bad.is_error
    assert _text(bad) == gate.value.render_compact()

    with pytest.raises(PolicyDenied) as denied_here:
        load_policy(policy).check_tool("calc.secret", node="x")
    denied = await session.call_tool("calc.secret", {})
    assert denied.is_error
    assert _text(denied) == str(denied_here.value)


async def test_mcp_serve_over_stdio(tmp_path: Path, cluster_name: str) -> None:
    async with _cluster(tmp_path, cluster_name) as sup:
        policy = tmp_path / "serve-policy.toml"
        params = StdioServerParameters(
            command=AGENTRT, args=["mcp", "serve", "-c", str(tmp_path), "--policy", str(policy)]
        )
        with (tmp_path / "serve.err").open("w+") as errlog, trio.fail_after(60):
            changes = _ListChanges()
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write, message_handler=changes.handler) as session,
            ):
                await _exercise(session, sup, policy)
                await _follows_the_cluster(session, sup, changes)


async def test_mcp_serve_over_http(tmp_path: Path, cluster_name: str) -> None:
    async with _cluster(tmp_path, cluster_name) as sup:
        policy = tmp_path / "serve-policy.toml"
        argv = [AGENTRT, "mcp", "serve", "-c", str(tmp_path), "--policy", str(policy),
                "--http", "127.0.0.1:0"]  # fmt: skip
        process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
        try:
            assert process.stderr is not None
            line = b""
            with trio.fail_after(60):
                while not line.endswith(b"\n"):
                    chunk = await process.stderr.receive_some(1)
                    assert chunk, "agentrt mcp serve exited before listening"
                    line += chunk
                prefix = "agentrt: MCP server at "
                assert line.decode().startswith(prefix), line
                url = line.decode().strip().removeprefix(prefix)
                changes = _ListChanges()
                async with (
                    streamable_http_client(url) as (read, write),
                    ClientSession(read, write, message_handler=changes.handler) as session,
                ):
                    await _exercise(session, sup, policy)
                    await _follows_the_cluster(session, sup, changes)
        finally:
            process.kill()
            with trio.CancelScope(shield=True), trio.fail_after(10):
                await process.wait()


async def test_mcp_serve_offers_nothing_under_the_default_strict_policy(
    tmp_path: Path, cluster_name: str
) -> None:
    async with _cluster(tmp_path, cluster_name):
        params = StdioServerParameters(command=AGENTRT, args=["mcp", "serve", "-c", str(tmp_path)])
        with (tmp_path / "serve.err").open("w+") as errlog, trio.fail_after(60):
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                assert (await session.list_tools()).tools == []
                denied = await session.call_tool("calc.add", {"a": 1, "b": 2})
        assert denied.is_error
        assert _text(denied) == (
            "policy (strict: pass --policy FILE) does not allow call tool 'calc.add' (tools.allow: "
            "no pattern matches (default deny)); change the node's policy file if this node should "
            "be allowed to"
        )


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        ([], 1, "cluster 'nocl' is not running ({state} does not exist); start it with "
                "`agentrt up -c {toml}`"),
        (["--http", "nope"], 1, "--http 'nope': give HOST:PORT, e.g. 127.0.0.1:8765"),
        (["--policy", "missing.toml"], 2, "missing.toml: policy file not found"),
    ],
)  # fmt: skip
def test_mcp_serve_says_what_is_wrong(
    tmp_path: Path, extra: list[str], code: int, message: str
) -> None:
    (tmp_path / "agentrt.toml").write_text(
        '[cluster]\nname = "nocl"\n[[nodes]]\nname = "a"\ntools = ["agentrt.sandbox:csv2json"]\n'
    )
    done = subprocess.run(
        [AGENTRT, "mcp", "serve", "-c", str(tmp_path), *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == code
    expected = message.format(
        state=tmp_path / ".agentrt" / "state.json", toml=tmp_path / "agentrt.toml"
    )
    assert " ".join(done.stderr.split()) == f"agentrt: error: {expected}"


@asynccontextmanager
async def _serving_http(argv: list[str]) -> AsyncIterator[str]:
    """``agentrt mcp serve --http`` in a subprocess; yields its URL once it listens."""
    process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await process.stderr.receive_some(1)
                assert chunk, "agentrt mcp serve exited before listening"
                line += chunk
        yield line.decode().strip().removeprefix("agentrt: MCP server at ")
    finally:
        process.kill()
        with trio.CancelScope(shield=True), trio.fail_after(10):
            await process.wait()


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_mcp_serve_tells_a_2026_client_through_its_listen_stream(
    tmp_path: Path, cluster_name: str, transport: str
) -> None:
    # The 2026-07-28 protocol has no handshake and no standalone stream: a client asks for
    # change events with subscriptions/listen, and the events ride that request's response.
    async with _cluster(tmp_path, cluster_name) as sup:
        assert sup.client is not None
        policy = tmp_path / "serve-policy.toml"
        args = ["mcp", "serve", "-c", str(tmp_path), "--policy", str(policy)]
        with trio.fail_after(60):
            async with AsyncExitStack() as stack:
                server: str | StdioServerParameters = StdioServerParameters(
                    command=AGENTRT, args=args
                )
                if transport == "http":
                    server = await stack.enter_async_context(
                        _serving_http([AGENTRT, *args, "--http", "127.0.0.1:0"])
                    )
                client = await stack.enter_async_context(Client(server))
                assert client.protocol_version in MODERN_PROTOCOL_VERSIONS
                caps = client.server_capabilities
                assert caps.tools is not None and caps.tools.list_changed is True
                assert {t.name for t in (await client.list_tools()).tools} == {"calc.add"}
                async with client.listen(tools_list_changed=True) as events:
                    await sup.client.host_tool(mul)
                    assert isinstance(await events.__anext__(), ToolsListChanged)
                    listed = {t.name for t in (await client.list_tools()).tools}
                    assert listed == {"calc.add", "calc.mul"}
                    await sup.client.unhost_tool("calc.mul")
                    assert isinstance(await events.__anext__(), ToolsListChanged)
                    assert {t.name for t in (await client.list_tools()).tools} == {"calc.add"}
