"""``agentrt.toml``: the one configuration file, checked completely before anything starts.

Decoding is msgspec's (types, unknown keys, key paths); the checks msgspec cannot express
(agent references import, names unique, files exist) follow, and every problem becomes a
``ConfigError`` naming the file, the key path and what is expected.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from ._agent import Agent
from ._cache import ToolRule, check_tool_rules
from ._errors import ConfigError
from ._modelconfig import ModelsSection, check_models

if TYPE_CHECKING:
    from agentrt.sandbox import Policy
from ._tools import Tool, ToolRegistry

__all__ = [
    "ClusterConfig",
    "ClusterSection",
    "DemoSection",
    "McpSection",
    "NatsSection",
    "NodeSection",
    "decode_toml",
    "load_config",
    "load_node_policy",
    "owned_partitions",
    "partitions",
    "resolve_agents",
    "resolve_callable",
    "resolve_tools",
    "tool_registry",
]

T = TypeVar("T")

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_REF_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")


class ClusterSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[cluster]``: the cluster's name (namespaces every NATS subject) and node defaults."""

    name: str
    default_deadline_s: float = 30.0
    drain_timeout_s: float = 10.0
    idle_timeout_s: float = 600.0


class NatsSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[nats]``: by default ``agentrt up`` starts a nats-server; ``url`` joins one instead."""

    embedded: bool | None = None
    url: str = ""
    user: str = ""
    password: str = ""


class McpSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[nodes.mcp]]``: an MCP server (stdio ``command`` or streamable HTTP ``url``) whose
    tools this node bridges into the cluster as ``mcp.<name>.<tool>``. The fields are
    ``agentrt.agents.McpServerConfig``'s (documented there and in docs/mcp.md)."""

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


class NodeSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[nodes]]``: one node kind: its agents (``module:Class``), the tools it runs
    (``module:function`` decorated with ``@agentrt.tool``), the MCP servers it bridges,
    replicas and policy file."""

    name: str
    agents: list[str] = []
    tools: list[str] = []
    mcp: list[McpSection] = []
    replicas: int = 1
    policy: str = ""


class DemoSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[demo]``: ``job = "module:function"``, an ``async def job(client) -> object``."""

    job: str
    timeout_s: float = 60.0


class ClusterConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole ``agentrt.toml``."""

    cluster: ClusterSection
    nodes: list[NodeSection]
    nats: NatsSection = NatsSection()
    demo: DemoSection | None = None
    tools: dict[str, ToolRule] = {}  # [tools."<name-or-glob>"]: cache TTL and skip rules
    models: ModelsSection | None = None  # [models]: backends, tiers, prices (_modelconfig.py)
    path: str = ""  # filled by load_config: where the file was read from

    @property
    def directory(self) -> Path:
        return Path(self.path).parent


def decode_toml(raw: bytes, type_: type[T], shown: str) -> T:
    """Decode TOML into ``type_``; any problem is a ``ConfigError`` with msgspec's key path.

    Shared by ``agentrt.toml`` and policy files, so both report errors the same way.
    """
    try:
        return msgspec.toml.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        key, problem = _key_path(str(exc))
        if "[...]" in key:
            key = _name_table_entries(raw, type_, key, str(exc))
        raise ConfigError(shown, key, problem) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(shown, "", f"not valid TOML: {exc}") from None


def _name_table_entries(raw: bytes, type_: type[Any], key: str, message: str) -> str:
    """msgspec writes ``[...]`` for an entry of a table of tables (``[models.backends.x]``):
    find which entry fails by decoding with that table cut down to one entry at a time."""
    import tomllib

    try:
        doc = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return key
    while "[...]" in key:
        head, _, tail = key.partition("[...]")
        parent: Any = doc
        try:
            for name, index, quoted in re.findall(r"\.([^.\[]+)|\[(\d+)\]|\['([^']*)'\]", head):
                parent = parent[int(index)] if index else parent[name or quoted]
        except (KeyError, IndexError, TypeError):  # a renamed field: keep msgspec's path
            return key
        if not isinstance(parent, dict):
            return key
        entries, found = dict(parent), None
        for entry, value in entries.items():
            parent.clear()
            parent[entry] = value
            try:
                msgspec.convert(doc, type_)
            except msgspec.ValidationError as exc:
                found = entry if str(exc) == message else None
            if found is not None:
                break
        parent.clear()
        parent.update(entries)
        if found is None:
            return key
        key = head + (f".{found}" if re.fullmatch(r"[A-Za-z_][\w-]*", found) else f"['{found}']")
        key += tail
    return key


def _key_path(msg: str) -> tuple[str, str]:
    """Split msgspec's "problem - at `$.a.b`" into (key path, problem)."""
    m = re.search(r" - at `([^`]*)`$", msg)
    if m is None:
        return "", msg
    return m.group(1), msg[: m.start()]


def load_config(path: str | Path) -> ClusterConfig:
    """Read, decode and fully check an ``agentrt.toml`` (a directory means its agentrt.toml).

    Agent modules are imported (with the config's directory on ``sys.path``) so a typo in a
    class name fails here, not in a node process a minute later.

    Raises:
        ConfigError: the file is missing, not TOML, or breaks a rule; ``key`` says where.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "agentrt.toml"
    shown = str(p)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            shown, "", "file not found; pass the cluster's agentrt.toml (or its directory)"
        ) from None
    except OSError as exc:
        raise ConfigError(shown, "", f"cannot read it: {exc.strerror}") from None
    cfg = decode_toml(raw, ClusterConfig, shown)
    cfg = msgspec.structs.replace(cfg, path=str(p.resolve()))
    _check(cfg, shown)
    return cfg


def _check(cfg: ClusterConfig, shown: str) -> None:
    if not _NAME_RE.match(cfg.cluster.name):
        raise ConfigError(
            shown, "$.cluster.name", f"{cfg.cluster.name!r} is not a valid cluster name: use "
            "1-64 letters, digits, '_' or '-' (it becomes part of NATS subjects)",
        )  # fmt: skip
    for field in ("default_deadline_s", "drain_timeout_s", "idle_timeout_s"):
        value = getattr(cfg.cluster, field)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(shown, f"$.cluster.{field}", "must be a positive number of seconds")
    nats = cfg.nats
    if nats.url:
        for i, url in enumerate(u.strip() for u in nats.url.split(",")):
            if not re.match(r"(nats|tls|ws|wss)://[^\s/]+\Z", url):
                raise ConfigError(
                    shown, "$.nats.url", f"server {i + 1} ({url!r}) is not a NATS URL; "
                    "expected e.g. nats://10.0.0.5:4222 (comma-separate several)",
                )  # fmt: skip
        if nats.embedded:
            raise ConfigError(shown, "$.nats", "set either `embedded = true` or `url`, not both")
    elif nats.embedded is False:
        raise ConfigError(
            shown, "$.nats.url", "`embedded = false` needs `url` (the NATS servers to join)"
        )
    if not cfg.nodes:
        raise ConfigError(shown, "$.nodes", "no nodes: add at least one [[nodes]] table")
    seen_nodes: dict[str, int] = {}
    seen_types: dict[str, str] = {}
    seen_tools: dict[str, str] = {}
    seen_mcp: set[str] = set()
    for i, node in enumerate(cfg.nodes):
        where = f"$.nodes[{i}]"
        if not _NAME_RE.match(node.name):
            raise ConfigError(
                shown, f"{where}.name",
                f"{node.name!r} is not a valid node name: use 1-64 letters, digits, '_' or '-'",
            )  # fmt: skip
        if node.name in seen_nodes:
            raise ConfigError(
                shown, f"{where}.name",
                f"node name {node.name!r} is already used by $.nodes[{seen_nodes[node.name]}]; "
                "node names must be unique",
            )  # fmt: skip
        seen_nodes[node.name] = i
        if not 1 <= node.replicas <= 64:
            raise ConfigError(
                shown, f"{where}.replicas", f"must be between 1 and 64, got {node.replicas}"
            )
        if node.policy:
            if not (cfg.directory / node.policy).is_file():
                raise ConfigError(
                    shown, f"{where}.policy",
                    f"policy file {node.policy!r} not found (relative to {cfg.directory})",
                )  # fmt: skip
            load_node_policy(cfg, node.name)  # its own ConfigError names the policy file
        if not node.agents and not node.tools and not node.mcp:
            raise ConfigError(
                shown, f"{where}.agents",
                "list at least one agent (module:Class) or tool (module:function)",
            )  # fmt: skip
        for j, server in enumerate(node.mcp):
            if not _NAME_RE.match(server.name) or server.name in seen_mcp:
                raise ConfigError(
                    shown, f"{where}.mcp[{j}].name",
                    f"{server.name!r} must be a unique name of letters, digits, '_' or '-' "
                    "(its tools become mcp.<name>.<tool>)",
                )  # fmt: skip
            seen_mcp.add(server.name)
            from agentrt.agents import check_server_config

            if (problem := check_server_config(server)) is not None:
                raise ConfigError(shown, f"{where}.mcp[{j}].{problem[0]}", problem[1])
        for j, ref in enumerate(node.tools):
            t = _resolve_tool(cfg, ref, shown, f"{where}.tools[{j}]")
            if seen_tools.get(t.name, ref) != ref:
                raise ConfigError(
                    shown, f"{where}.tools[{j}]",
                    f"tool name {t.name!r} is already provided by {seen_tools[t.name]}; "
                    "give one of them another name (@agentrt.tool(name=...))",
                )  # fmt: skip
            seen_tools[t.name] = ref
        for j, ref in enumerate(node.agents):
            cls = _resolve_agent(cfg, ref, shown, f"{where}.agents[{j}]")
            owner = f"{cls.__module__}.{cls.__qualname__}"
            if seen_types.get(cls.agent_type, owner) != owner:
                raise ConfigError(
                    shown, f"{where}.agents[{j}]",
                    f"agent type {cls.agent_type!r} is already provided by "
                    f"{seen_types[cls.agent_type]}; give one class another agent_type",
                )  # fmt: skip
            seen_types[cls.agent_type] = owner
    if cfg.tools:
        check_tool_rules(cfg.tools, {t.name: t for t in tool_registry(cfg)}, shown)
    if cfg.models is not None:
        hosted = {c.agent_type: c for n in cfg.nodes for c in resolve_agents(cfg, n.name)}
        check_models(cfg.models, hosted, shown)
    if cfg.demo is not None:
        fn = resolve_callable(cfg, cfg.demo.job, shown, "$.demo.job")
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(
                shown, "$.demo.job", f"{cfg.demo.job} must be an `async def job(client)`"
            )


def _import(cfg: ClusterConfig, ref: str, shown: str, key: str) -> Any:
    if not _REF_RE.match(ref):
        raise ConfigError(shown, key, f"{ref!r} is not a reference; expected 'module:Name'")
    module_name, _, attr = ref.partition(":")
    directory = str(cfg.directory)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or (exc.name and module_name.startswith(exc.name + ".")):
            raise ConfigError(
                shown, key, f"module {module_name!r} not found (looked in {directory} and "
                "sys.path); check the spelling or install the package",
            ) from None  # fmt: skip
        raise ConfigError(shown, key, f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise ConfigError(
            shown, key, f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            shown, key, f"module {module_name!r} has no {attr!r} (in {module.__file__})"
        ) from None


def _resolve_agent(cfg: ClusterConfig, ref: str, shown: str, key: str) -> type[Agent]:
    obj = _import(cfg, ref, shown, key)
    if not (isinstance(obj, type) and issubclass(obj, Agent)) or obj is Agent:
        raise ConfigError(shown, key, f"{ref} is not an agentrt.Agent subclass")
    return obj


def _resolve_tool(cfg: ClusterConfig, ref: str, shown: str, key: str) -> Tool:
    obj = _import(cfg, ref, shown, key)
    if not isinstance(obj, Tool) or obj.func is None:
        raise ConfigError(
            shown, key, f"{ref} is not a tool: decorate the function with @agentrt.tool"
        )
    return obj


def resolve_tools(cfg: ClusterConfig, node_name: str) -> list[Tool]:
    """The tools run by one ``[[nodes]]`` entry (the config must have passed the checks)."""
    for i, node in enumerate(cfg.nodes):
        if node.name == node_name:
            return [
                _resolve_tool(cfg, ref, cfg.path, f"$.nodes[{i}].tools[{j}]")
                for j, ref in enumerate(node.tools)
            ]
    raise ConfigError(cfg.path, "$.nodes", f"no node named {node_name!r}")


def tool_registry(cfg: ClusterConfig) -> ToolRegistry:
    """Every tool of the cluster by name, so any node can gate a call before sending it."""
    registry = ToolRegistry()
    for node in cfg.nodes:
        for t in resolve_tools(cfg, node.name):
            registry.register_spec(t.spec)
    return registry


def resolve_agents(cfg: ClusterConfig, node_name: str) -> list[type[Agent]]:
    """The agent classes of one ``[[nodes]]`` entry (the config must have passed the checks)."""
    for i, node in enumerate(cfg.nodes):
        if node.name == node_name:
            return [
                _resolve_agent(cfg, ref, cfg.path, f"$.nodes[{i}].agents[{j}]")
                for j, ref in enumerate(node.agents)
            ]
    names = ", ".join(n.name for n in cfg.nodes)
    raise ConfigError(cfg.path, "$.nodes", f"no node named {node_name!r} (nodes: {names})")


def partitions(cfg: ClusterConfig) -> dict[str, int]:
    """Agent type -> replicas serving it across the cluster (its number of key partitions)."""
    counts: dict[str, int] = {}
    for node in cfg.nodes:
        for cls in resolve_agents(cfg, node.name):
            counts[cls.agent_type] = counts.get(cls.agent_type, 0) + node.replicas
    return counts


def owned_partitions(cfg: ClusterConfig, node_name: str, replica: int) -> dict[str, int]:
    """Agent type -> the partition served by replica ``replica`` of node ``node_name``."""
    offsets: dict[str, int] = {}
    for node in cfg.nodes:
        types = [cls.agent_type for cls in resolve_agents(cfg, node.name)]
        if node.name == node_name:
            return {t: offsets.get(t, 0) + replica for t in types}
        for t in types:
            offsets[t] = offsets.get(t, 0) + node.replicas
    raise ConfigError(cfg.path, "$.nodes", f"no node named {node_name!r}")


def load_node_policy(cfg: ClusterConfig, node_name: str) -> Policy | None:
    """The policy of one ``[[nodes]]`` entry, or None if it declares none (unrestricted).

    Raises:
        ConfigError: the policy file is invalid (the error names that file and key).
    """
    from agentrt.sandbox import load_policy

    for node in cfg.nodes:
        if node.name == node_name:
            return load_policy(cfg.directory / node.policy) if node.policy else None
    raise ConfigError(cfg.path, "$.nodes", f"no node named {node_name!r}")


def resolve_callable(cfg: ClusterConfig, ref: str, shown: str, key: str) -> Any:
    """Import ``module:function`` relative to the config's directory."""
    fn = _import(cfg, ref, shown, key)
    if not callable(fn):
        raise ConfigError(shown, key, f"{ref} is not callable")
    return fn
