"""Policies: files decode with exact errors, tools are allowed or denied (deny wins, default
deny), the node refuses and audits, and nats-server refuses what the policy denies."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from agentrt import (
    ConfigError,
    NodeConfig,
    PermissionViolation,
    PolicyDenied,
    open_client,
    open_node,
    tool,
)
from agentrt._natsserver import NatsServer, NatsUser
from agentrt._tools import ToolRegistry
from agentrt.sandbox import Policy, ToolRules, load_policy, nats_permissions

ROOT = Path(__file__).resolve().parents[2]
RAN: list[str] = []


@tool(name="math.add")
def add(a: int, b: int) -> int:
    """Add."""
    RAN.append("add")
    return a + b


@tool(name="math.shell")
def shell(cmd: str) -> str:
    """Pretend to run a command."""
    RAN.append("shell")
    return cmd


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()


@pytest.mark.parametrize("path", sorted((ROOT / "policies").rglob("*.toml")), ids=str)
def test_every_shipped_policy_loads(path: Path) -> None:
    policy = load_policy(path)
    assert policy.path == str(path.resolve())
    assert policy.effective()[0].startswith(f"policy {path.resolve()}")


def test_shipped_policies_mean_what_they_say() -> None:
    default = load_policy(ROOT / "policies" / "default.toml")
    strict = load_policy(ROOT / "policies" / "strict.toml")
    coordinator = load_policy(ROOT / "policies" / "examples" / "coordinator.toml")
    assert default.tools.decide("anything.at.all") == (True, "tools.allow[0] = '*'")
    assert strict.tools.decide("initials") == (
        False, "tools.allow: no pattern matches (default deny)"
    )  # fmt: skip
    assert coordinator.tools.decide("text.upper") == (True, "tools.allow[1] = 'text.*'")
    assert coordinator.tools.decide("text.shell") == (False, "tools.deny[0] = '*.shell'")
    assert Policy().tools.decide("x")[0] is False  # an empty policy allows nothing
    assert not strict.network.allow and not strict.files.roots


def test_deny_wins_over_allow() -> None:
    rules = ToolRules(allow=["math.*"], deny=["math.shell"])
    assert rules.decide("math.add") == (True, "tools.allow[0] = 'math.*'")
    assert rules.decide("math.shell") == (False, "tools.deny[0] = 'math.shell'")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[tools]\nallow = 'x'\n", "$.tools.allow", "Expected `array`, got `str`"),
        ("[tools]\nalow = ['x']\n", "$.tools", "Object contains unknown field `alow`"),
        ("[tools]\nallow = ['x y']\n", "$.tools.allow[0]", "'x y' is not a tool-name glob"),
        ("[files]\nmax_bytes = -1\n", "$.files.max_bytes", "must be 0 (no files)"),
        ("[network]\nallow = 'yes'\n", "$.network.allow", "Expected `bool`, got `str`"),
        ("tools = [", "", "not valid TOML"),
    ],
)
def test_bad_policy_files_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert (info.value.path, info.value.key) == (str(path), key)
    assert problem in info.value.problem


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "nope.toml")


def test_nats_permissions_follow_the_policy() -> None:
    policy = Policy(tools=ToolRules(allow=["math.*"], deny=["*.shell"]))
    publish, subscribe = nats_permissions(
        policy, cluster="c", agents=[("Greeter", ("news",))], hosted_tools=["text.upper"],
        known_tools=["math.add", "math.shell", "text.upper"],
    )  # fmt: skip
    assert publish == [
        "agentrt.c.agent.>", "agentrt.c.topic.>", "agentrt.c.ctl.ready", "agentrt.c.tool.math.add",
        "$JS.API.STREAM.CREATE.KV_agentrt_tools_c", "$JS.API.CONSUMER.CREATE.KV_agentrt_tools_c",
        "$JS.API.CONSUMER.CREATE.KV_agentrt_tools_c.>", "$KV.agentrt_tools_c.text.upper",
    ]  # fmt: skip
    assert subscribe == [
        "_INBOX.>", "agentrt.c.ctl.status", "agentrt.c.ctl.drain", "agentrt.c.agent.Greeter.>",
        "agentrt.c.topic.news", "agentrt.c.tool.text.upper",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("allow", "deny", "expected"),
    [
        (["mcp.time.get_current_time"], [], ["agentrt.c.tool.mcp.time.get_current_time"]),
        (["mcp.time.*"], [], ["agentrt.c.tool.mcp.time.>"]),
        (["mcp.*"], [], ["agentrt.c.tool.mcp.time.>", "agentrt.c.tool.mcp.git.>"]),
        (["*"], ["mcp.git.*"], ["agentrt.c.tool.mcp.time.>"]),
        (["mcp.git.git_st?tus"], [], ["agentrt.c.tool.mcp.git.>"]),  # coarser: node decides
        (["mcp.git.git_log"], ["mcp.git.git_log"], []),
        (["math.*"], [], []),
    ],
)
def test_mcp_tools_of_the_cluster_are_callable_as_far_as_the_policy_allows(
    allow: list[str], deny: list[str], expected: list[str]
) -> None:
    """MCP tools are listed at run time, so the broker gets subjects per server, not per tool."""
    policy = Policy(tools=ToolRules(allow=allow, deny=deny))
    publish, _ = nats_permissions(
        policy, cluster="c", agents=[], hosted_tools=[], known_tools=[],
        cluster_mcp_servers=["time", "git"],
    )  # fmt: skip
    assert sorted(p for p in publish if ".tool." in p) == sorted(expected)
    unrestricted, _ = nats_permissions(
        None, cluster="c", agents=[], hosted_tools=[], known_tools=[],
        cluster_mcp_servers=["time"],
    )  # fmt: skip
    assert [p for p in unrestricted if ".tool." in p] == ["agentrt.c.tool.mcp.time.>"]


def registry() -> ToolRegistry:
    r = ToolRegistry()
    r.register_spec(add.spec)
    r.register_spec(shell.spec)
    return r


async def test_node_refuses_a_denied_tool_and_audits_it(
    nats_url: str, cluster_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    policy = Policy(tools=ToolRules(allow=["math.*"], deny=["math.shell"]), path="p.toml")
    cfg = NodeConfig(cluster=cluster_name, name="tools", servers=(nats_url,))
    ccfg = NodeConfig(cluster=cluster_name, name="front", servers=(nats_url,))
    caplog.set_level(logging.WARNING, logger="agentrt.audit")
    async with (
        open_node(cfg, tools=[add, shell]),
        open_client(ccfg, registry=registry(), policy=policy) as client,
    ):
        with trio.fail_after(10):
            assert await client.call_tool("math.add", {"a": 1, "b": 2}) == 3
            with pytest.raises(PolicyDenied) as info:
                await client.call_tool("math.shell", {"cmd": "rm -rf /"})
    assert (info.value.target, info.value.rule) == ("math.shell", "tools.deny[0] = 'math.shell'")
    assert str(info.value).startswith("policy p.toml does not allow call tool 'math.shell'")
    assert RAN == ["add"]
    assert any(
        "denied node=front action=call_tool tool=math.shell rule=tools.deny[0]" in r.getMessage()
        for r in caplog.records
    )


async def test_nats_server_refuses_a_tool_the_policy_denies(
    tmp_path: Path, cluster_name: str
) -> None:
    """A node that skips its own checks (no policy object here) still cannot reach the tool:
    its NATS user may not publish to the subject, and the caller learns it at once."""
    policy = Policy(tools=ToolRules(allow=["math.add"]))
    publish, subscribe = nats_permissions(
        policy, cluster=cluster_name, agents=[], hosted_tools=[],
        known_tools=["math.add", "math.shell"],
    )  # fmt: skip
    admin = NatsUser("admin", "a-secret")
    node = NatsUser("node-front", "n-secret", tuple(publish), tuple(subscribe),
                    allow_responses=True)  # fmt: skip
    server = NatsServer(tmp_path / "n", name="perm", users=(admin, node))
    await trio.to_thread.run_sync(server.start)
    try:
        tools_cfg = NodeConfig(cluster=cluster_name, name="tools", servers=(server.url,),
                               user="admin", password="a-secret")  # fmt: skip
        front_cfg = NodeConfig(cluster=cluster_name, name="front", servers=(server.url,),
                               user="node-front", password="n-secret")  # fmt: skip
        async with (
            open_node(tools_cfg, tools=[add, shell]),
            open_client(front_cfg, registry=registry()) as front,
        ):
            with trio.fail_after(10):
                assert await front.call_tool("math.add", {"a": 2, "b": 2}) == 4
                with pytest.raises(PermissionViolation) as info:
                    await front.call_tool("math.shell", {"cmd": "id"})
    finally:
        server.stop()
    assert info.value.subject == f"agentrt.{cluster_name}.tool.math.shell"
    assert "nats-server refused to publish to" in str(info.value)
    assert RAN == ["add"]  # the denied call never reached the tool's node


def test_policy_check_command(tmp_path: Path) -> None:
    agentrt = str(Path(sys.executable).parent / "agentrt")
    ok = subprocess.run([agentrt, "policy", "check", str(ROOT / "policies" / "strict.toml")],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "tools: allow nothing" in ok.stdout and "network: none" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[tools]\nallow = 3\n")
    r = subprocess.run([agentrt, "policy", "check", str(bad)], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.startswith(f"agentrt: error: {bad}: $.tools.allow: Expected `array`")


def test_config_rejects_a_node_with_an_invalid_policy(tmp_path: Path) -> None:
    from agentrt._config import load_config

    (tmp_path / "p.toml").write_text("[tools]\nallow = [1]\n")
    (tmp_path / "pol_agents.py").write_text(
        "import agentrt\n\n"
        "class PolPing(agentrt.Message, tag='poltest.ping'):\n    pass\n\n"
        "class PolAgent(agentrt.Agent):\n"
        "    async def on_ping(self, msg: PolPing) -> None:\n        pass\n"
    )
    (tmp_path / "agentrt.toml").write_text(
        '[cluster]\nname = "pol"\n[[nodes]]\nname = "n"\nagents = ["pol_agents:PolAgent"]\n'
        'policy = "p.toml"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert (info.value.path, info.value.key) == (str(tmp_path / "p.toml"), "$.tools.allow[0]")
