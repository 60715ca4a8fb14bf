"""A node's NATS permissions, derived from its policy: the broker half of the enforcement.

nats-server checks every publish and subscribe against the connection's user. Each node kind
gets its own user whose permissions allow only what its agents, tools and policy need, so a
node that ignores its own checks (a bug, a compromised process) still cannot publish to a tool
subject its policy denies: the server refuses it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from ._policy import Policy

__all__ = ["nats_permissions"]


def nats_permissions(
    policy: Policy | None, *, cluster: str, agents: Iterable[tuple[str, tuple[str, ...]]],
    hosted_tools: Iterable[str], known_tools: Iterable[str], node_name: str = "",
    cache: bool = False, mcp_servers: Iterable[str] = (),
    cluster_mcp_servers: Iterable[str] = (),
) -> tuple[list[str], list[str]]:  # fmt: skip
    """(publish, subscribe) subject lists for one node kind.

    Args:
        policy: the node's policy; ``None`` means no tool restriction.
        cluster: the cluster name (every subject is under ``agentrt.<cluster>``).
        agents: (agent type, topics) hosted by the node.
        hosted_tools: tools the node runs.
        known_tools: every tool of the cluster: allow globs are expanded against these, so the
            server gets exact subjects (tools registered later need a policy update).
        node_name: the node's name; if given, the node may send files to any node
            (``files.>``) and receive them on its own subject (``files.<node_name>``) only.
            Without it the node takes no part in file transfer.
        cache: take part in the tool-result cache (``agentrt_cache_<cluster>``): read any
            entry with a direct get, write entries only under the tools it hosts
            (``$KV.<bucket>.<tool>.*``: the hash is one token, so no other tool's keys).
        mcp_servers: names of the MCP servers the node bridges: their tools are listed only at
            run time, so the node gets ``mcp.<server>.>`` for them: serve the calls, put the
            specs (and their delete markers: a header needs no permission of its own) and,
            with ``cache``, write their cache entries.
        cluster_mcp_servers: names of every MCP server bridged anywhere in the cluster: the
            node may call their tools as far as its policy allows (see ``_mcp_call_subjects``).
    """
    root = f"agentrt.{cluster}"
    bucket = f"agentrt_tools_{cluster}"
    known = sorted(set(known_tools))
    callable_tools = known if policy is None else policy.allowed_tools(known)
    publish = [
        f"{root}.agent.>",  # requests to any agent (and topic events forwarded to a key's owner)
        f"{root}.topic.>",
        f"{root}.ctl.ready",
        *(f"{root}.tool.{t}" for t in callable_tools),
        f"$JS.API.STREAM.CREATE.KV_{bucket}",
        f"$JS.API.CONSUMER.CREATE.KV_{bucket}",
        f"$JS.API.CONSUMER.CREATE.KV_{bucket}.>",
        *(f"$KV.{bucket}.{t}" for t in sorted(set(hosted_tools))),  # only its own specs
    ]
    for server in sorted(set(cluster_mcp_servers)):
        publish += _mcp_call_subjects(policy, root, server)
    if node_name:
        publish.append(f"{root}.files.>")  # FileTransfer.send; the receiver's policy decides
    if cache:
        stream = f"KV_agentrt_cache_{cluster}"
        publish += [
            f"$JS.API.STREAM.CREATE.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            *(f"$KV.agentrt_cache_{cluster}.{t}.*" for t in sorted(set(hosted_tools))),
        ]
    servers = sorted(set(mcp_servers))
    publish += [f"$KV.{bucket}.mcp.{s}.>" for s in servers]
    if cache:
        publish += [f"$KV.agentrt_cache_{cluster}.mcp.{s}.>" for s in servers]
    subscribe = ["_INBOX.>", f"{root}.ctl.status", f"{root}.ctl.drain"]
    for agent_type, topics in agents:
        subscribe.append(f"{root}.agent.{agent_type}.>")
        subscribe += [f"{root}.topic.{t}" for t in topics]
    subscribe += [f"{root}.tool.{t}" for t in sorted(set(hosted_tools))]
    if node_name:
        subscribe.append(f"{root}.files.{node_name}")  # FileTransfer.serve
    subscribe += [f"{root}.tool.mcp.{s}.>" for s in servers]
    return publish, subscribe


_GLOB_CHARS = frozenset("*?[")


def _mcp_call_subjects(policy: Policy | None, root: str, server: str) -> list[str]:
    """Tool subjects of one MCP server a node may publish to.

    Its tools are listed only at run time, so the allow globs cannot be expanded against
    them. A literal allowed name becomes its exact subject; a glob that covers the whole server
    (``*``, ``mcp.*``, ``mcp.<server>.*``) or any other glob under ``mcp.<server>.`` becomes
    ``tool.mcp.<server>.>``: the broker is then coarser than the policy, and the node's own
    check (exact, audited) decides. A deny that covers the whole server grants nothing.
    """
    everything = [f"{root}.tool.mcp.{server}.>"]
    if policy is None:
        return everything
    probe = f"mcp.{server}.\uffff"  # matched only by a glob that covers every tool of it
    if any(fnmatch.fnmatchcase(probe, p) for p in policy.tools.deny):
        return []
    subjects: list[str] = []
    for pattern in policy.tools.allow:
        if fnmatch.fnmatchcase(probe, pattern):
            return everything
        if pattern.startswith(f"mcp.{server}."):
            if _GLOB_CHARS.isdisjoint(pattern):
                if policy.tools.decide(pattern)[0]:
                    subjects.append(f"{root}.tool.{pattern}")
            else:
                return everything
    return sorted(set(subjects))
