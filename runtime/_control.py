"""Control-plane records: what a node reports about itself on ``ctl.status``."""

from __future__ import annotations

import msgspec

from ._accounting import ModelStats
from ._cache import CacheCount
from ._gate import GateCount

__all__ = ["AgentStats", "McpServerHealth", "NodeStatus"]


class AgentStats(msgspec.Struct, kw_only=True):
    """Counters for one agent type on one node (monotonic since the node started).

    Attributes:
        type: the agent type.
        active: actors currently activated.
        activations: actors activated so far (first message for a key, or after idling out).
        received: messages accepted into a mailbox.
        handled: messages whose handler returned normally.
        failed: messages whose handler raised (the caller got ``HandlerFailed``).
        restarts: actor restarts after a failure.
        stopped: times an actor exceeded its restart budget and was stopped.
        deadline_exceeded: messages dropped or interrupted because their deadline passed.
        no_handler: messages of a type this agent has no handler for.
        overloaded: messages refused because the actor's mailbox was full.
    """

    type: str
    active: int = 0
    activations: int = 0
    received: int = 0
    handled: int = 0
    failed: int = 0
    restarts: int = 0
    stopped: int = 0
    deadline_exceeded: int = 0
    no_handler: int = 0
    overloaded: int = 0


class McpServerHealth(msgspec.Struct, kw_only=True):
    """One MCP server behind a node's bridge (``agentrt status`` shows a row per server).

    Attributes:
        name: the server's name (its tools are ``mcp.<name>.<tool>``).
        transport: ``stdio`` or ``http``.
        state: ``starting`` (first connection), ``ready``, ``restarting`` (reconnecting after
            a failure) or ``down`` (the last attempt failed; waiting out the backoff).
        restarts: times its tools were hosted again after the server was lost.
        last_error: why the server was last lost or refused ("" if never).
        tools: tools currently hosted for it.
    """

    name: str
    transport: str
    state: str
    restarts: int = 0
    last_error: str = ""
    tools: int = 0


class NodeStatus(msgspec.Struct, kw_only=True):
    """A node's answer to ``ctl.status``.

    Attributes:
        node: node name (``<name>-<replica>`` under ``agentrt up``).
        pid: OS process id.
        uptime_s: seconds since the node started serving.
        state: ``serving`` or ``draining``.
        agents: counters per agent type hosted.
        malformed: bus messages that could not be decoded (bad bytes, unknown type, bad payload).
        gate: schema-gate counters per (model, tool, outcome) seen by this node.
        tools: the tools this node runs.
        mcp: the MCP servers this node bridges, with their health.
        cache: tool-result cache counters per (tool, outcome) on this node.
        models: model-call counters per (agent type, tier, model), from the node's scheduler.
    """

    node: str
    pid: int
    uptime_s: float
    state: str
    agents: list[AgentStats]
    malformed: int = 0
    gate: list[GateCount] = []
    tools: list[str] = []
    mcp: list[McpServerHealth] = []
    cache: list[CacheCount] = []
    models: list[ModelStats] = []
