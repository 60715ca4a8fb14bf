"""The tool result cache and skip rules, on a real nats-server with real nodes.

Every tool here counts its executions, so "served from the cache" is checked by the tool not
running, and the counters are checked against what happened, exactly.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from agentrt import (
    ConfigError,
    HandlerFailed,
    NodeConfig,
    NodeStatus,
    PermissionViolation,
    open_client,
    open_node,
)
from agentrt._cache import (
    CacheMetrics,
    CacheOutcome,
    ToolRule,
    ToolRules,
    cache_key,
    check_tool_rules,
)
from agentrt._cli import render_cache, render_prometheus
from agentrt._config import load_config
from agentrt._kv import KvBucket
from agentrt._natsserver import NatsServer, NatsUser
from agentrt._node import Node
from agentrt._tools import Tool, ToolRegistry, tool
from agentrt.sandbox import Policy, nats_permissions
from agentrt.sandbox import ToolRules as PolicyToolRules
from rich.console import Console

RUNS: Counter[str] = Counter()


@tool(name="cache.square", pure=True)
def square(x: int) -> int:
    """Square x."""
    RUNS["square"] += 1
    return x * x


@tool(name="cache.add", pure=True)
def add(a: int, b: int) -> int:
    """Add a and b."""
    RUNS["add"] += 1
    return a + b


@tool(name="cache.info", pure=True)
def info(key: str) -> dict[str, int]:
    """Look a key up."""
    RUNS["info"] += 1
    return {"length": len(key)}


@tool(name="cache.stamp")
def stamp(label: str) -> str:
    """Not pure: every call answers differently."""
    RUNS["stamp"] += 1
    return f"{label}-{RUNS['stamp']}"


@tool(name="cache.blob", pure=True)
def blob(size: int) -> str:
    """A result of ``size`` bytes."""
    RUNS["blob"] += 1
    return "x" * size


TOOLS = [square, add, info, stamp, blob]
RULES = {"cache.*": ToolRule(cache_ttl_s=60.0)}


@pytest.fixture(autouse=True)
def _reset_runs() -> None:
    RUNS.clear()


def ncfg(url: str, cluster: str, name: str, rules: Mapping[str, ToolRule], **kw: Any) -> NodeConfig:
    return NodeConfig(cluster=cluster, name=name, servers=(url,), tool_rules=dict(rules), **kw)


def registry_of(*tools: Tool) -> ToolRegistry:
    r = ToolRegistry()
    for t in tools:
        r.register_spec(t.spec)
    return r


@asynccontextmanager
async def tools_and_client(
    url: str, cluster: str, rules: Mapping[str, ToolRule] = RULES
) -> AsyncIterator[tuple[Node, Node]]:
    """A node running the tools and a client node calling them over the bus."""
    async with (
        open_node(ncfg(url, cluster, "tools", rules), tools=TOOLS) as tools_node,
        open_client(ncfg(url, cluster, "front", rules)) as client,
    ):
        yield tools_node, client


def counts(node: Node) -> dict[tuple[str, str], int]:
    return {(c.tool, c.outcome): c.count for c in node.status().cache}


# ------------------------------------------------------------------ keys and rules


def test_the_key_is_the_tool_and_the_sha256_of_sorted_canonical_json() -> None:
    digest = hashlib.sha256(b'{"a":{"c":2,"d":[1,"x"]},"b":1}').hexdigest()
    assert cache_key("cache.add", {"b": 1, "a": {"d": [1, "x"], "c": 2}}) == f"cache.add.{digest}"
    assert cache_key("t", {"a": 1, "b": 2}) == cache_key("t", {"b": 2, "a": 1})
    assert cache_key("t", {"a": 1}) != cache_key("t", {"a": 2})
    assert cache_key("t", {"a": 1}) != cache_key("u", {"a": 1})


def test_the_most_specific_rule_decides() -> None:
    rules = ToolRules(
        {
            "*": ToolRule(cache_ttl_s=10),
            "cache.*": ToolRule(cache_ttl_s=20),
            "cache.square": ToolRule(cache_ttl_s=30),
            "cache.s*": ToolRule(skip=True, value=0),
        }
    )
    assert rules.ttl_s(square) == 30  # the exact name beats every glob
    assert rules.ttl_s(add) == 20  # the longest matching glob
    assert rules.ttl_s(stamp) == 0  # not pure: never cached, whatever matches it
    assert rules.skip_rule("cache.stamp") == ToolRule(skip=True, value=0)
    assert rules.skip_rule("cache.square") is None
    assert rules.max_ttl_s == 30
    assert ToolRules({}).ttl_s(square) == 0  # caching is opt-in: no rule, no cache
    assert ToolRules({}).max_ttl_s == 0


KNOWN = {t.name: registry_of(t).get(t.name) for t in TOOLS}


@pytest.mark.parametrize(
    ("rules", "key", "problem"),
    [
        (
            {"cache.stamp": ToolRule(cache_ttl_s=60)},
            "$.tools['cache.stamp'].cache_ttl_s",
            "tool 'cache.stamp' is not declared pure, so its results are never cached; remove "
            "cache_ttl_s, or declare it pure (@agentrt.tool(pure=True)) if the same arguments "
            "always give the same result",
        ),
        (
            {"cache.info": ToolRule(skip=True, value="nothing")},
            "$.tools['cache.info'].value",
            "the skip value for tool 'cache.info' breaks its output schema at / (type: expected "
            'object, got "nothing"); declare a value the tool could have returned',
        ),
        (
            {"cache.*": ToolRule(skip=True, value=7)},
            "$.tools['cache.*'].value",  # the first tool (by name) it does not fit
            "the skip value for tool 'cache.blob' breaks its output schema at / (type: expected "
            "string, got 7); declare a value the tool could have returned",
        ),
        (
            {"cache.add": ToolRule(value=3)},
            "$.tools['cache.add'].value",
            "`value` is the result of a skipped call; add `skip = true` or remove it",
        ),
        (
            {"cache.add": ToolRule(skip=True, value=3, cache_ttl_s=5)},
            "$.tools['cache.add'].cache_ttl_s",
            "a skipped tool is never called, so nothing is cached; remove cache_ttl_s or skip",
        ),
        (
            {"cache.add": ToolRule(cache_ttl_s=-1)},
            "$.tools['cache.add'].cache_ttl_s",
            "must be a number of seconds >= 0 (0 = no cache)",
        ),
        (
            {"cache add": ToolRule(cache_ttl_s=1)},
            "$.tools['cache add']",
            "'cache add' is not a tool name or glob: use letters, digits, '_', '-', '.' and the "
            "wildcards '*', '?', '[...]'",
        ),
    ],
)
def test_rules_are_checked_with_the_key_path_and_the_fix(
    rules: dict[str, ToolRule], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info_:
        check_tool_rules(rules, KNOWN, "agentrt.toml")
    assert (info_.value.key, info_.value.problem) == (key, problem)
    assert str(info_.value) == f"agentrt.toml: {key}: {problem}"


def test_valid_rules_pass_the_check() -> None:
    check_tool_rules(
        {
            "*": ToolRule(cache_ttl_s=600),  # a glob with a TTL may match impure tools
            "cache.stamp": ToolRule(skip=True, value="skipped"),
            "cache.info": ToolRule(skip=True, value={"length": 0}),
            "mcp.*": ToolRule(skip=True),  # no known schema to check against
        },
        KNOWN,
        "agentrt.toml",
    )


def _write_config(tmp_path: Path, rules: str) -> Path:
    (tmp_path / "cache_cfg_tools.py").write_text(
        "import agentrt\n\n"
        "@agentrt.tool(name='cfg.clock')\n"
        "def clock() -> float:\n    return 0.0\n\n"
        "@agentrt.tool(name='cfg.double', pure=True)\n"
        "def double(x: int) -> int:\n    return 2 * x\n"
    )
    (tmp_path / "agentrt.toml").write_text(
        '[cluster]\nname = "cachecfg"\n[[nodes]]\nname = "n"\n'
        'tools = ["cache_cfg_tools:clock", "cache_cfg_tools:double"]\n' + rules
    )
    return tmp_path / "agentrt.toml"


def test_agentrt_toml_tools_tables_are_decoded_and_checked(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path,
        '[tools."cfg.double"]\ncache_ttl_s = 120\n[tools."cfg.clock"]\nskip = true\nvalue = 1.5\n',
    )
    cfg = load_config(path)
    assert cfg.tools == {
        "cfg.double": ToolRule(cache_ttl_s=120.0),
        "cfg.clock": ToolRule(skip=True, value=1.5),
    }
    bad = _write_config(tmp_path, '[tools."cfg.clock"]\ncache_ttl_s = 30\n')
    with pytest.raises(ConfigError) as info_:
        load_config(bad)
    assert str(info_.value) == (
        f"{bad}: $.tools['cfg.clock'].cache_ttl_s: tool 'cfg.clock' is not declared pure, so "
        "its results are never cached; remove cache_ttl_s, or declare it pure "
        "(@agentrt.tool(pure=True)) if the same arguments always give the same result"
    )
    wrong_value = _write_config(tmp_path, '[tools."cfg.clock"]\nskip = true\nvalue = "soon"\n')
    with pytest.raises(ConfigError) as info_:
        load_config(wrong_value)
    assert info_.value.key == "$.tools['cfg.clock'].value"
    unknown = _write_config(tmp_path, '[tools."cfg.clock"]\nskipp = true\n')
    with pytest.raises(ConfigError) as info_:
        load_config(unknown)
    assert info_.value.problem == "Object contains unknown field `skipp`"


# ------------------------------------------------------------------ on a real cluster


async def test_a_pure_tool_called_twice_from_another_node_runs_once(
    nats_url: str, cluster_name: str
) -> None:
    async with tools_and_client(nats_url, cluster_name) as (tools_node, client):
        with trio.fail_after(10):
            assert await client.call_tool("cache.square", {"x": 7}) == 49
            assert await client.call_tool("cache.square", {"x": 7}) == 49
        assert RUNS["square"] == 1
        assert counts(client) == {("cache.square", "miss"): 1, ("cache.square", "hit"): 1}
        assert counts(tools_node) == {("cache.square", "store"): 1}
        # The entry is where the design says, as the executing node wrote it.
        kv = KvBucket(client.bus, f"agentrt_cache_{cluster_name}")
        with trio.fail_after(10):
            entry = await kv.get(cache_key("cache.square", {"x": 7}))
        assert entry is not None and entry.value == b"49"
        assert abs(entry.stored_at - time.time()) < 60


async def test_arguments_in_another_key_order_hit_and_other_arguments_miss(
    nats_url: str, cluster_name: str
) -> None:
    async with tools_and_client(nats_url, cluster_name) as (_, client):
        with trio.fail_after(10):
            assert await client.call_tool("cache.add", {"a": 1, "b": 2}) == 3
            assert await client.call_tool("cache.add", {"b": 2, "a": 1}) == 3
            # Model text repaired into the same validated arguments: the same key.
            assert await client.call_tool("cache.add", "```json\n{'b': '2', 'a': 1,}\n```") == 3
            assert await client.call_tool("cache.add", {"a": 2, "b": 1}) == 3
            assert await client.call_tool("cache.add", {"a": 2, "b": 2}) == 4
    assert RUNS["add"] == 3
    assert counts(client) == {("cache.add", "miss"): 3, ("cache.add", "hit"): 2}


async def test_an_entry_older_than_the_ttl_is_a_miss(nats_url: str, cluster_name: str) -> None:
    """Age is the server's timestamp against the reader's clock, which the test moves."""
    shift = 0.0
    async with tools_and_client(nats_url, cluster_name) as (tools_node, client):
        client.cache.clock = lambda: time.time() + shift
        with trio.fail_after(10):
            assert await client.call_tool("cache.square", {"x": 3}) == 9
            assert await client.call_tool("cache.square", {"x": 3}) == 9
            shift = 61.0  # past the 60 s TTL
            assert await client.call_tool("cache.square", {"x": 3}) == 9
            shift = 0.0  # the run that missed stored a fresh entry
            assert await client.call_tool("cache.square", {"x": 3}) == 9
    assert RUNS["square"] == 2
    assert counts(client) == {("cache.square", "miss"): 2, ("cache.square", "hit"): 2}
    assert counts(tools_node) == {("cache.square", "store"): 2}


async def test_an_impure_tool_is_never_cached(nats_url: str, cluster_name: str) -> None:
    rules = {"*": ToolRule(cache_ttl_s=60.0)}  # the glob matches it; purity still decides
    async with tools_and_client(nats_url, cluster_name, rules) as (tools_node, client):
        with trio.fail_after(10):
            assert await client.call_tool("cache.stamp", {"label": "a"}) == "a-1"
            assert await client.call_tool("cache.stamp", {"label": "a"}) == "a-2"
            kv = KvBucket(client.bus, f"agentrt_cache_{cluster_name}")
            assert await kv.get(cache_key("cache.stamp", {"label": "a"})) is None
    assert counts(client) == {} and counts(tools_node) == {}


async def test_without_a_rule_nothing_is_cached(nats_url: str, cluster_name: str) -> None:
    async with tools_and_client(nats_url, cluster_name, rules={}) as (tools_node, client):
        with trio.fail_after(10):
            assert await client.call_tool("cache.square", {"x": 2}) == 4
            assert await client.call_tool("cache.square", {"x": 2}) == 4
    assert RUNS["square"] == 2
    assert counts(client) == {} and counts(tools_node) == {}


async def test_a_poisoned_entry_is_refused_counted_and_replaced(
    nats_url: str, cluster_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentrt.cache")
    key = cache_key("cache.info", {"key": "abc"})
    subject = f"$KV.agentrt_cache_{cluster_name}.{key}"
    async with tools_and_client(nats_url, cluster_name) as (tools_node, client):
        kv = KvBucket(client.bus, f"agentrt_cache_{cluster_name}")
        with trio.fail_after(10):
            await kv.put(key, b'{"length": "a lot"}')  # JSON, but breaks the output schema
            assert await client.call_tool("cache.info", {"key": "abc"}) == {"length": 3}
            await kv.put(key, b"{not json")
            assert await client.call_tool("cache.info", {"key": "abc"}) == {"length": 3}
            # The executing node wrote the real result over the poisoned one.
            assert await client.call_tool("cache.info", {"key": "abc"}) == {"length": 3}
    assert RUNS["info"] == 2
    assert counts(client) == {
        ("cache.info", "poisoned"): 2, ("cache.info", "miss"): 2, ("cache.info", "hit"): 1,
    }  # fmt: skip
    assert counts(tools_node) == {("cache.info", "store"): 2}
    warnings = [r.getMessage() for r in caplog.records if r.name == "agentrt.cache"]
    assert warnings == [
        f"refused the cached result of cache.info under {subject}: breaks the output schema "
        'at /length (type: expected integer, got "a lot"); calling the tool instead',
        f"refused the cached result of cache.info under {subject}: not JSON (JSON is "
        "malformed: object keys must be strings (byte 1)); calling the tool instead",
    ]


async def test_a_skip_rule_returns_the_value_without_calling(
    nats_url: str, cluster_name: str
) -> None:
    rules = {**RULES, "cache.info": ToolRule(skip=True, value={"length": -1})}
    # No node runs the tools: a skipped call is not sent at all.
    cfg = ncfg(nats_url, cluster_name, "front", rules)
    async with open_client(cfg, registry=registry_of(*TOOLS)) as client:
        with trio.fail_after(10):
            assert await client.call_tool("cache.info", {"key": "x"}) == {"length": -1}
            assert await client.call_tool("cache.info", {"key": "y"}) == {"length": -1}
            # The sender's gate still runs first: an invalid call is refused, not skipped.
            from agentrt import GateError

            with pytest.raises(GateError):
                await client.call_tool("cache.info", {"key": 5})
    assert RUNS["info"] == 0
    assert counts(client) == {("cache.info", "skip"): 2}


async def test_a_tool_on_the_calling_node_is_cached_there(nats_url: str, cluster_name: str) -> None:
    async with open_node(ncfg(nats_url, cluster_name, "solo", RULES), tools=TOOLS) as node:
        with trio.fail_after(10):
            assert await node.call_tool("cache.square", {"x": 5}) == 25
            assert await node.call_tool("cache.square", {"x": 5}) == 25
    assert RUNS["square"] == 1
    assert counts(node) == {
        ("cache.square", "miss"): 1, ("cache.square", "store"): 1, ("cache.square", "hit"): 1,
    }  # fmt: skip


async def test_a_result_too_large_for_the_bucket_is_not_cached_and_the_node_carries_on(
    nats_url: str, cluster_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentrt.cache")
    async with tools_and_client(nats_url, cluster_name) as (tools_node, client):
        with trio.fail_after(10):
            with pytest.raises(HandlerFailed):  # too large for the reply as well
                await client.call_tool("cache.blob", {"size": 2_000_000})
            assert await client.call_tool("cache.blob", {"size": 3}) == "xxx"
            assert await client.call_tool("cache.blob", {"size": 3}) == "xxx"
    assert RUNS["blob"] == 2
    assert counts(tools_node) == {("cache.blob", "store"): 1}
    key = cache_key("cache.blob", {"size": 2_000_000})
    assert [r.getMessage() for r in caplog.records if r.name == "agentrt.cache"] == [
        f"could not cache a result of cache.blob: message for $KV.agentrt_cache_{cluster_name}."
        f"{key} is 2000002 bytes, over the 1048576-byte limit; send a reference (file "
        "transfer / object store) instead of the bytes"
    ]


class _Proposer:
    model = "tiny"

    async def propose(self, feedback: str | None) -> Any:
        await trio.lowlevel.checkpoint()
        return '{"x": 4}'


async def test_calls_proposed_by_a_model_use_the_cache_too(
    nats_url: str, cluster_name: str
) -> None:
    async with tools_and_client(nats_url, cluster_name) as (_, client):
        with trio.fail_after(10):
            first = await client.call_tool_with("cache.square", _Proposer())
            second = await client.call_tool_with("cache.square", _Proposer())
    assert (first.value, second.value) == (16, 16)
    assert RUNS["square"] == 1
    assert counts(client) == {("cache.square", "miss"): 1, ("cache.square", "hit"): 1}


async def test_without_jetstream_calls_work_uncached_after_one_warning(
    tmp_path: Path, cluster_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agentrt.cache")
    server = NatsServer(tmp_path / "nojs", name="nojs", jetstream=False)
    await trio.to_thread.run_sync(server.start)
    try:
        async with (
            open_node(ncfg(server.url, cluster_name, "tools", RULES), tools=TOOLS) as tools_node,
            open_client(
                ncfg(server.url, cluster_name, "front", RULES), registry=registry_of(*TOOLS)
            ) as client,
        ):
            with trio.fail_after(10):
                for _ in range(3):
                    assert await client.call_tool("cache.square", {"x": 6}) == 36
    finally:
        server.stop()
    assert RUNS["square"] == 3
    assert counts(client) == {} and counts(tools_node) == {}
    warnings = [r.getMessage() for r in caplog.records if r.name == "agentrt.cache"]
    assert warnings == 2 * [  # one per node, none per call
        "tool results are not cached: JetStream is not available on this NATS server; calls "
        "run every time (enable JetStream, or regenerate the node's NATS permissions, to "
        "share results)"
    ]


async def test_a_node_that_found_no_jetstream_caches_once_it_reconnects_to_one(
    tmp_path: Path, cluster_name: str
) -> None:
    server = NatsServer(tmp_path / "nojs", name="cache-js-later", jetstream=False)
    await trio.to_thread.run_sync(server.start)
    try:
        async with (
            open_node(ncfg(server.url, cluster_name, "tools", RULES), tools=TOOLS) as tools_node,
            # No registry given: the client learns the tools from the bucket, once there is one.
            open_client(ncfg(server.url, cluster_name, "front", RULES)) as client,
            trio.open_nursery() as nursery,
        ):
            assert not client.cache.enabled and not tools_node.cache.enabled
            assert client.registry.get("cache.square") is None
            back = [trio.Event(), trio.Event()]
            for node, event in zip((tools_node, client), back, strict=True):

                async def watch(node: Node = node, event: trio.Event = event) -> None:
                    await node.bus.wait_reconnected()
                    event.set()

                nursery.start_soon(watch)  # parked before the kill: no reconnect missed
            await trio.lowlevel.checkpoint()
            server.kill()
            # Same port, now with JetStream.
            server = NatsServer(tmp_path / "js", name="cache-js-later", port=server.port)
            await trio.to_thread.run_sync(server.start)
            with trio.fail_after(20):
                for event in back:
                    await event.wait()
                await tools_node.cache.wait_enabled()
                await client.cache.wait_enabled()
                await client.registry.wait_for("cache.square")  # the tool bucket came back too
                assert await client.call_tool("cache.square", {"x": 12}) == 144
                assert await client.call_tool("cache.square", {"x": 12}) == 144
    finally:
        server.stop()
    assert RUNS["square"] == 1
    assert counts(client) == {("cache.square", "miss"): 1, ("cache.square", "hit"): 1}
    assert counts(tools_node) == {("cache.square", "store"): 1}


async def test_the_bucket_is_made_again_when_a_restarted_server_lost_it(
    tmp_path: Path, cluster_name: str
) -> None:
    server = NatsServer(tmp_path / "first", name="cache-restart")
    await trio.to_thread.run_sync(server.start)
    try:
        async with (
            open_node(ncfg(server.url, cluster_name, "tools", RULES), tools=TOOLS) as tools_node,
            open_client(ncfg(server.url, cluster_name, "front", RULES)) as client,
            trio.open_nursery() as nursery,
        ):
            with trio.fail_after(20):
                assert await client.call_tool("cache.square", {"x": 9}) == 81
                back = [trio.Event(), trio.Event()]
                for node, event in zip((tools_node, client), back, strict=True):

                    async def watch(node: Node = node, event: trio.Event = event) -> None:
                        await node.bus.wait_reconnected()
                        event.set()

                    nursery.start_soon(watch)  # parked before the kill: no reconnect missed
                await trio.lowlevel.checkpoint()
                server.kill()
                # Same port, empty store: the bucket and its entries are gone.
                server = NatsServer(tmp_path / "second", name="cache-restart", port=server.port)
                await trio.to_thread.run_sync(server.start)
                for event in back:
                    await event.wait()
                assert await client.call_tool("cache.square", {"x": 9}) == 81  # made again
                assert await client.call_tool("cache.square", {"x": 9}) == 81  # and used
    finally:
        server.stop()
    assert RUNS["square"] == 2
    assert counts(client) == {("cache.square", "miss"): 2, ("cache.square", "hit"): 1}
    assert counts(tools_node) == {("cache.square", "store"): 2}


def test_permissions_let_every_node_read_and_only_the_host_write() -> None:
    publish, _ = nats_permissions(
        None, cluster="c", agents=[], hosted_tools=["cache.square", "mcp.time.now"],
        known_tools=["cache.square", "mcp.time.now"], cache=True,
    )  # fmt: skip
    assert publish[-4:] == [
        "$JS.API.STREAM.CREATE.KV_agentrt_cache_c",
        "$JS.API.DIRECT.GET.KV_agentrt_cache_c",
        "$KV.agentrt_cache_c.cache.square.*",
        "$KV.agentrt_cache_c.mcp.time.now.*",
    ]
    without, _ = nats_permissions(None, cluster="c", agents=[], hosted_tools=["cache.square"],
                                  known_tools=["cache.square"])  # fmt: skip
    assert not any("agentrt_cache_c" in s for s in without)


async def test_the_broker_refuses_a_cache_write_from_a_node_not_hosting_the_tool(
    tmp_path: Path, cluster_name: str
) -> None:
    known = [t.name for t in TOOLS]
    host_pub, host_sub = nats_permissions(
        None, cluster=cluster_name, agents=[], hosted_tools=known, known_tools=known, cache=True
    )
    front_pub, front_sub = nats_permissions(
        Policy(tools=PolicyToolRules(allow=["cache.*"])), cluster=cluster_name, agents=[],
        hosted_tools=[], known_tools=known, cache=True,
    )  # fmt: skip
    host = NatsUser("node-tools", "t-secret", tuple(host_pub), tuple(host_sub),
                    allow_responses=True)  # fmt: skip
    front = NatsUser("node-front", "f-secret", tuple(front_pub), tuple(front_sub),
                     allow_responses=True)  # fmt: skip
    server = NatsServer(tmp_path / "perm", name="cacheperm", users=(host, front))
    await trio.to_thread.run_sync(server.start)
    key = cache_key("cache.square", {"x": 8})
    try:
        async with (
            open_node(
                ncfg(server.url, cluster_name, "tools", RULES, user="node-tools",
                     password="t-secret"), tools=TOOLS,
            ) as tools_node,
            open_client(
                ncfg(server.url, cluster_name, "front", RULES, user="node-front",
                     password="f-secret"),
            ) as client,
        ):  # fmt: skip
            with trio.fail_after(10):
                # The permitted paths: the host writes, the caller direct-gets.
                assert await client.call_tool("cache.square", {"x": 8}) == 64
                assert await client.call_tool("cache.square", {"x": 8}) == 64
                kv = KvBucket(client.bus, f"agentrt_cache_{cluster_name}")
                with pytest.raises(PermissionViolation) as refused:
                    await kv.put(key, b"-1")
                assert await client.call_tool("cache.square", {"x": 8}) == 64
    finally:
        server.stop()
    subject = f"$KV.agentrt_cache_{cluster_name}.{key}"
    assert refused.value.subject == subject
    assert str(refused.value) == (
        f"nats-server refused to publish to {subject!r}: this node's NATS user has no "
        "permission for it (its policy file decides which subjects it may use)"
    )
    assert RUNS["square"] == 1
    assert counts(client) == {("cache.square", "miss"): 1, ("cache.square", "hit"): 2}
    assert counts(tools_node) == {("cache.square", "store"): 1}


# ------------------------------------------------------------------ counters out


def test_counters_reach_prometheus_summed_over_nodes() -> None:
    metrics = CacheMetrics()
    metrics.count("cache.square", CacheOutcome.HIT, 2)
    metrics.count("cache.square", CacheOutcome.MISS)
    metrics.count('we"ird', CacheOutcome.SKIP)
    a = NodeStatus(node="a", pid=1, uptime_s=1, state="serving", agents=[],
                   cache=metrics.snapshot())  # fmt: skip
    b = NodeStatus(node="b", pid=2, uptime_s=1, state="serving", agents=[],
                   cache=[*metrics.snapshot()[:1]])  # fmt: skip
    text = render_prometheus([a, b])
    assert (
        "# HELP agentrt_tool_cache_total Tool calls at the result cache, by outcome.\n"
        "# TYPE agentrt_tool_cache_total counter\n"
        'agentrt_tool_cache_total{tool="cache.square",outcome="hit"} 4\n'
        'agentrt_tool_cache_total{tool="cache.square",outcome="miss"} 1\n'
        'agentrt_tool_cache_total{tool="we\\"ird",outcome="skip"} 1\n'
    ) in text
    # A status travels as msgpack on ctl.status: the counters survive the trip.
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(a), type=NodeStatus).cache == a.cache


def test_status_shows_a_tool_cache_table_summed_over_nodes_only_when_counted() -> None:
    a, b = CacheMetrics(), CacheMetrics()
    a.count("cache.square", CacheOutcome.HIT, 3)
    a.count("cache.square", CacheOutcome.MISS)
    b.count("cache.square", CacheOutcome.MISS, 2)  # one of them poisoned
    b.count("cache.square", CacheOutcome.POISONED)
    b.count("cache.square", CacheOutcome.STORE, 2)
    b.count("cache.off", CacheOutcome.SKIP, 4)
    nodes = [
        NodeStatus(node=n, pid=1, uptime_s=1, state="serving", agents=[], cache=m.snapshot())
        for n, m in (("a", a), ("b", b))
    ]
    table = render_cache(nodes)
    assert table is not None
    out = io.StringIO()
    Console(file=out, width=120).print(table)
    lines = out.getvalue().splitlines()
    assert lines[0].strip() == "tool cache"
    assert lines[2].split() == ["tool", "hit", "miss", "store", "skip", "poisoned", "hit", "ratio"]
    assert lines[4].split() == ["cache.off", "0", "0", "0", "4", "0", "-"]  # no lookups
    assert lines[5].split() == ["cache.square", "3", "3", "2", "0", "1", "50%"]
    assert not "".join(lines[6:]).strip()  # two tools, two rows
    quiet = NodeStatus(node="c", pid=1, uptime_s=1, state="serving", agents=[])
    assert render_cache([quiet]) is None  # nothing counted: no table at all
