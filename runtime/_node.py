"""A node: one OS process's actors, their bus subscriptions, and the send/publish paths.

Requests to an agent type hosted on this node never touch the bus: the message object goes
straight into the actor's mailbox and the reply comes back through a one-shot wake-up. Other
requests become an ``Envelope`` on the subject ``agentrt.<cluster>.agent.<type>.<key>``, which
every node hosting that type subscribes to in one queue group, so replicas share the load.
"""

from __future__ import annotations

import contextvars
import enum
import functools
import logging
import math
import os
import random
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar, overload

import msgspec
import outcome
import trio

from ._actor import ActorHost, Delivery, current_trace_id
from ._agent import Agent
from ._bus import InboundMsg, Subscription, Transport
from ._cache import MISS, ToolCache, ToolRule
from ._connect import open_bus
from ._control import NodeStatus
from ._envelope import (
    ContentType,
    Envelope,
    ErrorCode,
    ErrorInfo,
    Kind,
    decode_envelope,
    decode_error,
    encode,
    error_from_info,
    new_id,
)
from ._errors import (
    AgentDefinitionError,
    AgentUnavailable,
    DeadlineExceeded,
    DeliveryError,
    GateError,
    MalformedMessage,
    Overloaded,
    PayloadTooLarge,
    UnexpectedReply,
    UnknownMessageType,
)
from ._gate import Checked, Escalate, Gate, GateResult, Proposer, outcome_of
from ._ids import AgentId
from ._messages import lookup_message, message_tag
from ._registry import ToolBucket
from ._scheduler import Scheduler
from ._tools import Tool, ToolRegistry

__all__ = [
    "Node",
    "NodeConfig",
    "Subjects",
    "ToolPolicy",
    "executing_node",
    "open_client",
    "open_node",
    "partition_of",
]

log = logging.getLogger("agentrt.node")

R = TypeVar("R", bound=msgspec.Struct)

_CLUSTER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a node needs to run; ``agentrt up`` builds it from ``agentrt.toml``.

    Attributes:
        cluster: cluster name; every subject is namespaced by it.
        name: this node's name, shown in ``agentrt status``.
        servers: NATS URLs to connect to.
        user / password: NATS credentials.
        default_deadline_s: deadline for requests made without one, so nothing waits forever.
        idle_timeout_s: an actor idle this long is deactivated (within a quarter more).
        drain_timeout_s: on shutdown, how long queued messages may take before actors are cancelled.
        partitions: agent type -> how many replicas serve it cluster-wide (default 1). A key
            always maps to partition ``crc32(key) % partitions``, so one key is one actor on
            one replica and its state stays consistent; every sender must agree on this map,
            which ``agentrt up`` derives from agentrt.toml.
        owned: agent type -> the partition this node serves (default 0).
        share_tools: publish this node's tool specs to, and follow, the cluster's JetStream
            tool bucket (see ``_registry.py``); without JetStream the registry stays local.
        tool_rules: ``[tools."<name-or-glob>"]`` of agentrt.toml: result-cache TTLs and skip
            rules (``_cache.py``).
    """

    cluster: str = "default"
    name: str = "node"
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    user: str | None = None
    password: str | None = None
    default_deadline_s: float = 30.0
    idle_timeout_s: float = 600.0
    drain_timeout_s: float = 10.0
    share_tools: bool = True
    partitions: dict[str, int] = msgspec.field(default_factory=dict)
    owned: dict[str, int] = msgspec.field(default_factory=dict)
    tool_rules: dict[str, ToolRule] = msgspec.field(default_factory=dict)


def _new_trace_id() -> str:
    return f"{random.getrandbits(128):032x}"


def partition_of(key: str, partitions: int) -> int:
    """The partition that owns ``key``: stable across processes (Python's ``hash`` is not)."""
    return zlib.crc32(key.encode()) % partitions if partitions > 1 else 0


def _decode_payload(
    env: Envelope, from_json: Callable[[bytes], Any], from_msgpack: Callable[[bytes], Any]
) -> Any:
    """Decode an envelope's payload by its content type (JSON from the CLI, else msgpack)."""
    if env.content_type is ContentType.JSON:
        return from_json(env.payload)
    return from_msgpack(env.payload)


def _gate_info(err: GateError) -> ErrorInfo:
    return ErrorInfo(
        code=ErrorCode.GATE_REJECTED, message=str(err), remote_type="GateError",
        agent_id=err.tool, stage=err.stage, violations=err.violations,
    )  # fmt: skip


executing_node: contextvars.ContextVar[tuple[str, ToolPolicy | None]] = contextvars.ContextVar(
    "agentrt_executing_node"
)
"""(name, policy) of the node running the current tool call: lets a tool apply the policy of
the node it runs on (transform tools check ``[transforms]``)."""


class ToolPolicy(Protocol):
    """What a node needs of its policy (``agentrt.sandbox.Policy`` implements it)."""

    def check_tool(self, tool: str, *, node: str) -> None:
        """Return if ``node`` may call ``tool``; raise ``PolicyDenied`` (and audit) if not."""

    def allowed_tools(self, known: Iterable[str]) -> list[str]:
        """The names in ``known`` this policy allows (no audit: nothing was attempted)."""


class Subjects:
    """The NATS subjects of one cluster (``agentrt.<cluster>.*``)."""

    def __init__(self, cluster: str) -> None:
        if not _CLUSTER_RE.match(cluster):
            raise ValueError(
                f"cluster name {cluster!r} is not valid: use 1-64 letters, digits, '_' or '-'"
            )
        self.root = f"agentrt.{cluster}"

    def agent(self, agent_id: AgentId, partition: int = 0) -> str:
        return f"{self.root}.agent.{agent_id.type}.p{partition}.{agent_id.key}"

    def agent_prefix(self, agent_type: str, partition: int = 0) -> str:
        return f"{self.root}.agent.{agent_type}.p{partition}."

    def topic(self, topic: str) -> str:
        if not _TOPIC_RE.match(topic):
            raise ValueError(
                f"topic {topic!r} is not valid: use letters, digits, '_' or '-' "
                "in dot-separated parts"
            )
        return f"{self.root}.topic.{topic}"

    def tool(self, name: str) -> str:
        return f"{self.root}.tool.{name}"

    def ctl(self, name: str) -> str:
        return f"{self.root}.ctl.{name}"


class _State(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class _LocalReply:
    """One-shot reply slot for an in-process request; the answer may come before the wait."""

    __slots__ = ("_outcome", "_recipient", "_task")

    def __init__(self, recipient: str) -> None:
        self._recipient = recipient
        self._outcome: outcome.Outcome[Any] | None = None
        self._task: trio.lowlevel.Task | None = None

    def _set(self, result: outcome.Outcome[Any]) -> None:
        if self._outcome is not None:
            return
        self._outcome = result
        if self._task is not None:
            task, self._task = self._task, None
            trio.lowlevel.reschedule(task, result)

    def ok(self, value: msgspec.Struct | None) -> None:
        self._set(outcome.Value(value))

    def err(self, info: ErrorInfo) -> None:
        self._set(outcome.Error(error_from_info(info, self._recipient, deadline_s=0, elapsed_s=0)))

    async def wait(self) -> Any:
        if self._outcome is not None:
            await trio.lowlevel.checkpoint()
            return self._outcome.unwrap()
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._task = None
            self._outcome = outcome.Value(None)  # late answers are dropped
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


@functools.lru_cache(maxsize=4096)
def _reply_tag(cls: type) -> str:
    # Cached: a handler's reply type is the same on every call.
    return message_tag(cls)


class _BusReply:
    """Answers one request that came over the bus by publishing to its reply subject."""

    __slots__ = ("_bus", "_env", "_reply")

    def __init__(self, bus: Transport, reply: str, env: Envelope) -> None:
        self._bus, self._reply, self._env = bus, reply, env

    def ok(self, value: msgspec.Struct | None) -> None:
        env = self._env
        if value is None:
            tag, payload = "", b""
        else:
            try:
                tag = _reply_tag(type(value))
                payload = encode(value)
            except (AgentDefinitionError, TypeError, msgspec.EncodeError) as exc:
                self.err(
                    ErrorInfo(
                        code=ErrorCode.HANDLER_FAILED,
                        message=f"handler returned a value that cannot be sent back: {exc}",
                        remote_type=type(exc).__name__,
                        agent_id=env.recipient,
                    )
                )
                return
        self._publish(Kind.REPLY, tag, payload)

    def err(self, info: ErrorInfo) -> None:
        self._publish(Kind.ERROR, "agentrt.error", encode(info))

    def ok_json(self, tag: str, payload: bytes) -> None:
        self._publish(Kind.REPLY, tag, payload, ContentType.JSON)

    def _publish(
        self, kind: Kind, tag: str, payload: bytes,
        content_type: ContentType = ContentType.MSGPACK,
    ) -> None:  # fmt: skip
        env = self._env
        data = encode(
            Envelope(
                id=new_id(), kind=kind, type=tag, sender=env.recipient, recipient=env.sender,
                payload=payload, correlation_id=env.id, deadline=env.deadline,
                trace_id=env.trace_id, content_type=content_type,
            )
        )  # fmt: skip
        try:
            self._bus.publish_nowait(self._reply, data)
        except PayloadTooLarge as exc:
            if kind is Kind.REPLY:
                self.err(
                    ErrorInfo(
                        code=ErrorCode.HANDLER_FAILED,
                        message=str(exc),
                        remote_type="PayloadTooLarge",
                        agent_id=env.recipient,
                    )
                )
            else:
                log.error("cannot answer %s: %s", env.id, exc)
        except DeliveryError as exc:
            log.error("cannot answer %s: %s", env.id, exc)


class Node:
    """Hosts actors and sends messages; run it with ``open_node()`` or ``nursery.start(serve)``."""

    def __init__(
        self, config: NodeConfig, agents: Sequence[type[Agent]], bus: Transport, *,
        control: bool = True, tools: Sequence[Tool] = (), registry: ToolRegistry | None = None,
        policy: ToolPolicy | None = None, scheduler: Scheduler | None = None,
    ) -> None:  # fmt: skip
        self.config, self._bus, self._control = config, bus, control
        self.policy = policy
        self.registry = registry if registry is not None else ToolRegistry()
        for t in tools:
            if t.func is None:
                raise AgentDefinitionError(f"tool {t.name!r} has no implementation to host")
            self.registry.register(t)
        self._tools = {t.name: t for t in tools}
        self._tool_subs: dict[str, Subscription] = {}
        self._actors: trio.Nursery | None = None
        self._serving_subs: list[Subscription] | None = None
        self._bucket: ToolBucket | None = None
        self.gate = Gate(self.registry)
        self.cache = ToolCache(bus, config.cluster, self.registry, config.tool_rules)
        self.name = config.name
        self.subjects = Subjects(config.cluster)
        types: dict[str, type[Agent]] = {}
        for cls in agents:
            if not (isinstance(cls, type) and issubclass(cls, Agent)):
                raise AgentDefinitionError(f"{cls!r} is not an agentrt.Agent subclass")
            if cls.agent_type in types and types[cls.agent_type] is not cls:
                raise AgentDefinitionError(
                    f"two agent classes on node {self.name} use the type {cls.agent_type!r}: "
                    f"{types[cls.agent_type].__qualname__} and {cls.__qualname__}"
                )
            types[cls.agent_type] = cls
        self._agent_classes = types
        self._hosts: dict[str, ActorHost] = {}
        self._tags: dict[type, str] = {}
        self._state = _State.STARTING
        self._stop = trio.Event()
        self._started_at = 0.0
        self.malformed = 0
        # Components that run beside the node (the MCP bridge) add their part of the status.
        self.status_hooks: list[Callable[[NodeStatus], None]] = []
        self.scheduler = scheduler  # actors reach it through Agent.models (issue 5)
        if scheduler is not None:
            scheduler.register_agents(agents)
            self.status_hooks.append(scheduler.add_to_status)

    # ------------------------------------------------------------------ sending

    def _tag(self, msg: msgspec.Struct) -> str:
        cls = type(msg)
        tag = self._tags.get(cls)
        if tag is None:
            tag = self._tags[cls] = message_tag(cls)
        return tag

    def _deadline(self) -> float:
        return min(
            trio.current_effective_deadline(),
            trio.current_time() + self.config.default_deadline_s,
        )

    @overload
    async def send(
        self, to: AgentId, msg: msgspec.Struct, *, expect: type[R], sender: str = ...
    ) -> R: ...

    @overload
    async def send(
        self, to: AgentId, msg: msgspec.Struct, *, expect: None = ..., sender: str = ...
    ) -> msgspec.Struct | None: ...

    async def send(
        self, to: AgentId, msg: msgspec.Struct, *, expect: type[R] | None = None,
        sender: str = "",
    ) -> msgspec.Struct | None:  # fmt: skip
        """Send a request and return the typed reply (``None`` if the handler returns nothing).

        Raises:
            DeadlineExceeded: no reply before the caller's deadline (or the default one).
            AgentUnavailable: no node serves ``to.type``, or the actor is stopped.
            RemoteError: the recipient failed: ``HandlerFailed``, ``NoHandler``, ...
            UnexpectedReply: ``expect`` was given and the reply is of another type.
        """
        tag = self._tag(msg)
        deadline = self._deadline()
        sender = sender or f"client:{self.name}"
        partition = partition_of(to.key, self.config.partitions.get(to.type, 1))
        host = self._hosts.get(to.type)
        if host is not None and host.partition == partition:
            result = await self._send_local(host, to, msg, tag, deadline, sender)
        else:
            env = self._envelope(Kind.REQUEST, tag, sender, str(to), encode(msg), deadline)
            reply = await self.request_envelope(self.subjects.agent(to, partition), env, deadline)
            result = self._decode_reply(reply, str(to))
        if expect is not None and not isinstance(result, expect):
            raise UnexpectedReply(
                f"{to} answered {type(result).__name__}, not the expected {expect.__name__}",
                recipient=str(to),
            )
        return result

    def agent_subject(self, to: AgentId) -> str:
        """The subject of the replica that owns ``to`` (its key's partition)."""
        return self.subjects.agent(to, partition_of(to.key, self.config.partitions.get(to.type, 1)))

    def _envelope(
        self, kind: Kind, tag: str, sender: str, recipient: str, payload: bytes, deadline: float,
        content_type: ContentType = ContentType.MSGPACK,
    ) -> Envelope:  # fmt: skip
        wall_deadline = 0.0
        if deadline != math.inf:
            wall_deadline = time.time() + (deadline - trio.current_time())
        return Envelope(
            id=new_id(), kind=kind, type=tag, sender=sender, recipient=recipient,
            payload=payload, deadline=wall_deadline,
            trace_id=current_trace_id.get() or _new_trace_id(), content_type=content_type,
        )  # fmt: skip

    async def _send_local(
        self, host: ActorHost, to: AgentId, msg: msgspec.Struct, tag: str, deadline: float,
        sender: str,
    ) -> msgspec.Struct | None:  # fmt: skip
        reply = _LocalReply(str(to))
        delivery = Delivery(
            msg, tag, sender=sender, deadline=deadline,
            trace_id=current_trace_id.get() or _new_trace_id(), responder=reply,
        )  # fmt: skip
        started = trio.current_time()
        with trio.CancelScope(deadline=deadline) as scope:
            await host.deliver(to.key, delivery)
            result: msgspec.Struct | None = await reply.wait()
            return result
        assert scope.cancelled_caught
        raise DeadlineExceeded(str(to), deadline - started, trio.current_time() - started)

    async def request_envelope(self, subject: str, env: Envelope, deadline: float) -> Envelope:
        """Send an envelope over the bus and return the reply envelope (errors raised typed).

        This is the raw path under ``send()``; the CLI uses it to send JSON payloads.
        """
        started = trio.current_time()
        # The bus enforces our deadline only when it is tighter than the caller's own scope
        # (which then governs, with the caller's own timeout exception).
        ours = deadline if deadline < trio.current_effective_deadline() else math.inf
        try:
            msg = await self._bus.request(subject, encode(env), deadline=ours)
        except trio.TooSlowError:
            raise DeadlineExceeded(
                env.recipient, deadline - started, trio.current_time() - started
            ) from None
        except AgentUnavailable:
            agent_type = env.recipient.partition("/")[0]
            raise AgentUnavailable(
                f"no node of cluster {self.config.cluster!r} serves agent type "
                f"{agent_type!r}; check the agents listed under [[nodes]] in agentrt.toml "
                "and whether those nodes are up (`agentrt status`)",
                recipient=env.recipient,
            ) from None
        except PayloadTooLarge as exc:
            raise PayloadTooLarge(env.recipient, exc.size, exc.limit) from None
        reply = decode_envelope(msg.data)
        if reply.kind is Kind.ERROR:
            raise error_from_info(
                decode_error(reply), env.recipient, deadline_s=deadline - started,
                elapsed_s=trio.current_time() - started,
            )  # fmt: skip
        return reply

    def _decode_reply(self, reply: Envelope, recipient: str) -> msgspec.Struct | None:
        if not reply.type:
            return None
        codec = lookup_message(reply.type)
        if codec is None:
            raise UnknownMessageType(
                f"reply type {reply.type!r} is not known in this process; import the module "
                "that defines it (or subclass agentrt.Message) before sending",
                recipient=recipient,
            )
        try:
            return _decode_payload(reply, codec.json.decode, codec.msgpack.decode)  # type: ignore[no-any-return]
        except msgspec.DecodeError as exc:
            raise MalformedMessage(
                f"reply of type {reply.type!r} does not decode: {exc}", recipient=recipient
            ) from exc

    async def publish(
        self, topic: str, msg: msgspec.Struct, *, key: str = "default", sender: str = ""
    ) -> None:
        """Publish an event: each agent type subscribed to ``topic`` gets one copy.

        Raises:
            ValueError: the topic or key is not valid.
            PayloadTooLarge: the encoded message is over the bus limit.
        """
        AgentId("topic", key)  # validates the key
        env = self._envelope(
            Kind.EVENT, self._tag(msg), sender or f"client:{self.name}", key, encode(msg),
            math.inf,
        )  # fmt: skip
        self._bus.publish_nowait(self.subjects.topic(topic), encode(env))
        await trio.lowlevel.checkpoint()

    async def call_tool(self, name: str, args: Any, *, sender: str = "", model: str = "") -> Any:
        """Call a tool through the gate: repaired and validated here, validated again by the
        node that runs it, its result validated against the output schema on both sides.

        ``args`` may be a mapping or a model's raw text (fenced, sloppy JSON is repaired).
        ``model`` labels the gate's counters (which model proposed the call); without it the
        sender is the label.

        Raises:
            PolicyDenied: this node's policy does not allow the tool (audited).
            GateError: the call (or the result) is invalid; an invalid call never runs.
            DeliveryError: the tool's node failed, timed out or is not there.
        """
        if self.policy is not None:
            self.policy.check_tool(name, node=self.name)
        try:
            checked = self.gate.check_call(name, args)
        except GateError:
            self.gate.rejected(name, model or sender)
            raise
        return await self._run_checked(name, checked, sender, model)

    async def call_checked_tool(
        self, name: str, checked: Checked, *, sender: str = "", model: str = ""
    ) -> Any:
        """``call_tool`` for arguments that already passed ``gate.check_call`` here (an LLM
        agent checks a proposal first, to count a bad one as a retry): not repaired again,
        only re-validated (cheap), so a ``Checked`` built by hand can never run invalid.

        Raises:
            PolicyDenied, GateError, DeliveryError: as ``call_tool``.
        """
        if self.policy is not None:
            self.policy.check_tool(name, node=self.name)
        try:
            self.gate.check_received(name, checked.args)
        except GateError:
            self.gate.rejected(name, model or sender)
            raise
        return await self._run_checked(name, checked, sender, model)

    async def _run_checked(self, name: str, checked: Checked, sender: str, model: str) -> Any:
        try:
            result = await self._call_checked(name, checked.args, sender=sender)
            self.gate.check_result(name, result)
        except GateError:
            self.gate.rejected(name, model or sender)
            raise
        self.gate.metrics.count(model or sender, name, outcome_of(checked.steps))
        return result

    async def call_tool_with(
        self, name: str, model: Proposer, *, escalate: Escalate | None = None, sender: str = ""
    ) -> GateResult:
        """Let ``model`` propose the arguments and run the tool's whole fallback ladder: retry
        with the error fed back, escalate, degrade (``Gate.call``), executing over the bus.

        Raises:
            GateError: every rung failed and the tool's fallback is ``fail``.
        """
        if self.policy is not None:
            self.policy.check_tool(name, node=self.name)
        return await self.gate.call(
            name, model, functools.partial(self._call_checked, name, sender=sender),
            escalate=escalate,
        )  # fmt: skip

    async def _call_checked(self, name: str, args: dict[str, Any], *, sender: str = "") -> Any:
        """Gated arguments -> result: a skip rule's value, the cluster's cached result, or the
        tool run (a local run is cached here; a remote node caches its own runs)."""
        rule = self.cache.skip_rule(name)
        if rule is not None:
            return rule.result
        cached = await self.cache.lookup(name, args)
        if cached is not MISS:
            return cached
        result = await self._execute_tool(name, args, sender=sender)
        if name in self._tools:
            await self.cache.store(name, args, result)
        return result

    async def _execute_tool(self, name: str, args: dict[str, Any], *, sender: str = "") -> Any:
        """Run already-checked arguments, here or on the tool's node; returns the raw result."""
        deadline = self._deadline()
        local = self._tools.get(name)
        if local is not None:
            return await self._run_tool(local, args, deadline)
        env = self._envelope(
            Kind.REQUEST, "agentrt.tool_call", sender or f"client:{self.name}", name,
            msgspec.json.encode(args), deadline, ContentType.JSON,
        )  # fmt: skip
        reply = await self.request_envelope(self.subjects.tool(name), env, deadline)
        try:
            return msgspec.json.decode(reply.payload) if reply.payload else None
        except msgspec.DecodeError as exc:
            raise MalformedMessage(f"tool {name!r} returned invalid JSON: {exc}") from exc

    async def _run_tool(self, t: Tool, args: dict[str, Any], deadline: float) -> Any:
        assert t.func is not None
        started = trio.current_time()
        limit = min(deadline, started + t.spec.timeout_s)
        token = executing_node.set((self.name, self.policy))
        try:
            with trio.CancelScope(deadline=limit) as scope:
                return await t.func(args)
        finally:
            executing_node.reset(token)
        assert scope.cancelled_caught
        raise DeadlineExceeded(f"tool {t.name}", limit - started, trio.current_time() - started)

    async def _subscribe_tool(self, name: str) -> None:
        assert self._serving_subs is not None
        sub = await self._bus.subscribe(
            self.subjects.tool(name), queue=f"agentrt.tool.{name}",
            handler=functools.partial(self._on_tool_call, name),
        )  # fmt: skip
        self._tool_subs[name] = sub
        self._serving_subs.append(sub)

    async def host_tool(self, t: Tool) -> None:
        """Run a tool on this node from now on (a tool that appears at run time, e.g. one an
        MCP server lists): registered, subscribed, and its spec published to the cluster.

        Hosting a name again replaces the tool (new schema, new implementation).

        Raises:
            AgentDefinitionError: ``t`` has no implementation.
            AgentUnavailable: the node is not serving.
        """
        if t.func is None:
            raise AgentDefinitionError(f"tool {t.name!r} has no implementation to host")
        if self._state is not _State.SERVING:
            raise AgentUnavailable(f"node {self.name} is {self._state.value}; it hosts no tools")
        self.registry.register(t)
        self._tools[t.name] = t
        if t.name not in self._tool_subs:
            await self._subscribe_tool(t.name)
        if self._bucket is not None:  # kept for the next reconnection if JetStream is missing
            await self._bucket.put(t.spec)

    async def unhost_tool(self, name: str) -> None:
        """Stop running a tool here for good (its MCP server dropped it, or went away).

        The tool leaves the cluster: it is unregistered here and its key in the tool bucket
        gets a delete marker, so every node unregisters it and callers get the gate's
        unknown-tool error (a node that still hosts it puts it back). Not for outages: a
        server being reconnected keeps its tools hosted.

        Raises:
            BusError: JetStream did not store the delete marker.
        """
        if self._tools.pop(name, None) is None:
            return  # not hosted here: another node's tool is none of this node's business
        sub = self._tool_subs.pop(name, None)
        if sub is not None:
            if self._serving_subs is not None and sub in self._serving_subs:
                self._serving_subs.remove(sub)
            await sub.unsubscribe()
        self.registry.unregister(name)
        if self._bucket is not None:
            await self._bucket.remove(name)

    def _on_tool_call(self, name: str, m: InboundMsg) -> None:
        t = self._tools.get(name)
        if t is None or self._actors is None:
            return  # unhosted between delivery and now: the caller's deadline answers it
        self._on_tool_message(t, self._actors, m)

    def _on_tool_message(self, t: Tool, nursery: trio.Nursery, m: InboundMsg) -> None:
        try:
            env = decode_envelope(m.data)
        except MalformedMessage as exc:
            self._reject(m, ErrorCode.MALFORMED, str(exc), None)
            return
        try:
            args = _decode_payload(env, msgspec.json.decode, msgspec.msgpack.decode)
        except msgspec.DecodeError as exc:
            self._reject(m, ErrorCode.MALFORMED, f"tool arguments do not decode: {exc}", env)
            return
        responder = _BusReply(self._bus, m.reply, env) if m.reply else None
        try:
            self.gate.check_received(t.name, args)
        except GateError as err:
            # Whoever sent it, and whatever its gate said: an invalid call never runs here.
            self.gate.rejected(t.name, env.sender)
            log.warning("refused call to %s from %s: %s", t.name, env.sender, err)
            if responder is not None:
                responder.err(_gate_info(err))
            return
        nursery.start_soon(self._serve_tool_call, t, args, env, responder)

    async def _serve_tool_call(
        self, t: Tool, args: dict[str, Any], env: Envelope, responder: _BusReply | None
    ) -> None:
        def fail(code: ErrorCode, message: str, remote_type: str = "") -> None:
            if responder is not None:
                responder.err(
                    ErrorInfo(code=code, message=message, remote_type=remote_type, agent_id=t.name)
                )

        try:
            result = await self._run_tool(t, args, self._trio_deadline(env))
        except DeadlineExceeded:
            fail(ErrorCode.DEADLINE, f"tool {t.name} ran past its deadline")
            return
        except Exception as exc:
            log.exception("tool %s failed on call %s from %s", t.name, env.id, env.sender)
            fail(ErrorCode.HANDLER_FAILED, str(exc) or repr(exc), type(exc).__qualname__)
            return
        try:
            self.gate.check_result(t.name, result)
            payload = msgspec.json.encode(result)
        except GateError as err:
            self.gate.rejected(t.name, env.sender)
            if responder is not None:
                responder.err(_gate_info(err))
            return
        except (TypeError, msgspec.EncodeError) as exc:
            fail(ErrorCode.HANDLER_FAILED, f"result is not JSON-encodable: {exc}", "TypeError")
            return
        # Stored before answering, so the caller's next identical call finds it.
        await self.cache.store(t.name, args, result)
        if responder is not None:
            responder.ok_json("agentrt.tool_result", payload)

    # ------------------------------------------------------------------ receiving

    def _reject(self, m: InboundMsg, code: ErrorCode, problem: str, env: Envelope | None) -> None:
        self.malformed += 1
        log.warning("rejected message on %s: %s", m.subject, problem)
        if m.reply:
            info = ErrorInfo(code=code, message=problem)
            if env is not None:
                _BusReply(self._bus, m.reply, env).err(info)
            else:
                self._bus.publish_nowait(
                    m.reply,
                    encode(
                        Envelope(
                            id=new_id(), kind=Kind.ERROR, type="agentrt.error", sender=self.name,
                            recipient="", payload=encode(info),
                        )
                    ),
                )  # fmt: skip

    def _decode_inbound(self, m: InboundMsg) -> tuple[Envelope, msgspec.Struct] | None:
        try:
            env = decode_envelope(m.data)
        except MalformedMessage as exc:
            self._reject(m, ErrorCode.MALFORMED, str(exc), None)
            return None
        codec = lookup_message(env.type)
        if codec is None:
            self._reject(
                m, ErrorCode.UNKNOWN_TYPE,
                f"node {self.name} has no message type {env.type!r}; the agent module that "
                "defines it must be importable on the receiving node",
                env,
            )  # fmt: skip
            return None
        try:
            msg = _decode_payload(env, codec.json.decode, codec.msgpack.decode)
        except msgspec.DecodeError as exc:
            self._reject(
                m, ErrorCode.MALFORMED,
                f"payload does not match {env.type!r} ({codec.type.__qualname__}): {exc}", env,
            )  # fmt: skip
            return None
        return env, msg

    def _trio_deadline(self, env: Envelope) -> float:
        if not env.deadline:
            return trio.current_time() + self.config.default_deadline_s
        return trio.current_time() + (env.deadline - time.time())

    def _on_agent_message(self, host: ActorHost, prefix_len: int, m: InboundMsg) -> None:
        decoded = self._decode_inbound(m)
        if decoded is None:
            return
        env, msg = decoded
        responder = _BusReply(self._bus, m.reply, env) if m.reply else None
        key = m.subject[prefix_len:]
        try:
            AgentId(host.type, key)
        except ValueError as exc:
            self._reject(m, ErrorCode.MALFORMED, str(exc), env)
            return
        delivery = Delivery(
            msg, env.type, sender=env.sender, deadline=self._trio_deadline(env),
            trace_id=env.trace_id, envelope_id=env.id, responder=responder,
        )  # fmt: skip
        self._deliver_nowait(host, key, delivery)

    def _on_topic_message(self, host: ActorHost, m: InboundMsg) -> None:
        decoded = self._decode_inbound(m)
        if decoded is None:
            return
        env, msg = decoded
        try:
            target = AgentId(host.type, env.recipient)
        except ValueError as exc:
            self._reject(m, ErrorCode.MALFORMED, str(exc), env)
            return
        partition = partition_of(target.key, self.config.partitions.get(host.type, 1))
        if partition != host.partition:
            # The queue group picked this replica, but the key lives on another: pass it on
            # so the actor that owns the key (and its state) handles it.
            self._bus.publish_nowait(self.subjects.agent(target, partition), m.data)
            return
        delivery = Delivery(
            msg, env.type, sender=env.sender, deadline=math.inf, trace_id=env.trace_id,
            envelope_id=env.id,
        )  # fmt: skip
        self._deliver_nowait(host, env.recipient, delivery)

    def _deliver_nowait(self, host: ActorHost, key: str, delivery: Delivery) -> None:
        try:
            host.deliver_nowait(key, delivery)
        except DeliveryError as exc:
            code = ErrorCode.OVERLOADED if isinstance(exc, Overloaded) else ErrorCode.UNAVAILABLE
            if delivery.responder is None:
                log.warning("dropped event %s for %s/%s: %s", delivery.envelope_id, host.type,
                            key, exc)  # fmt: skip
            delivery.fail(code, str(exc), agent=f"{host.type}/{key}")

    def status(self) -> NodeStatus:
        """A snapshot of this node's counters (``status_hooks`` fill in their parts)."""
        status = NodeStatus(
            node=self.name,
            pid=os.getpid(),
            uptime_s=round(trio.current_time() - self._started_at, 3) if self._started_at else 0,
            state=self._state.value,
            agents=[msgspec.structs.replace(h.stats) for h in self._hosts.values()],
            malformed=self.malformed,
            gate=self.gate.metrics.snapshot(),
            tools=sorted(self._tools),
            cache=self.cache.metrics.snapshot(),
        )
        for hook in self.status_hooks:
            hook(status)
        return status

    def _on_control(self, m: InboundMsg) -> None:
        if m.subject.endswith(".status"):
            if m.reply:
                self._bus.publish_nowait(m.reply, encode(self.status()))
        elif m.subject.endswith(".drain"):
            self.stop()

    # ------------------------------------------------------------------ lifecycle

    @property
    def bus(self) -> Transport:
        """The node's bus connection, for control-plane code that needs raw subjects."""
        return self._bus

    async def gather(self, subject: str, *, expected: int | None, window_s: float) -> list[bytes]:
        """Publish an empty request to ``subject`` and collect every reply.

        Returns when ``expected`` replies arrived or after ``window_s`` seconds, whichever is
        first, so a missing responder costs the timeout and never a hang.
        """
        inbox = f"_INBOX.{new_id()}"
        sub = await self._bus.subscribe(inbox, capacity=1024)
        replies: list[bytes] = []
        try:
            self._bus.publish_nowait(subject, b"", reply=inbox)
            with trio.move_on_after(window_s):
                while expected is None or len(replies) < expected:
                    replies.append((await sub.receive()).data)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await sub.unsubscribe()
        return replies

    def stop(self) -> None:
        """Begin a graceful drain: stop taking messages, finish queued ones, then return."""
        self._stop.set()

    async def _pump(self, sub: Subscription, handle: Any) -> None:
        async for m in sub:
            handle(m)
        if not self._stop.is_set():
            raise AgentUnavailable(
                f"node {self.name}: subscription {sub.subject} ended: the NATS connection was "
                "lost and could not be re-established"
            )

    async def serve(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, serve until ``stop()``, then drain. ``task_status.started`` = subscribed."""
        subs: list[Subscription] = []
        async with trio.open_nursery() as actors:
            async with trio.open_nursery() as pumps:
                for agent_type, cls in self._agent_classes.items():
                    partition = self.config.owned.get(agent_type, 0)
                    host = self._hosts[agent_type] = ActorHost(cls, self, actors, partition)
                    actors.start_soon(host.reap_idle)  # cancelled with the actors
                    prefix = self.subjects.agent_prefix(agent_type, partition)
                    # Handlers run right in the bus's reader: decoding and the mailbox put
                    # never block, and the mailbox is the bound (full -> Overloaded).
                    sub = await self._bus.subscribe(
                        prefix + ">", queue=f"agentrt.{agent_type}.p{partition}",
                        handler=functools.partial(self._on_agent_message, host, len(prefix)),
                    )  # fmt: skip
                    subs.append(sub)
                    for topic in cls.topics:
                        sub = await self._bus.subscribe(
                            self.subjects.topic(topic), queue=f"agentrt.{agent_type}",
                            handler=functools.partial(self._on_topic_message, host),
                        )  # fmt: skip
                        subs.append(sub)
                self._actors, self._serving_subs = actors, subs
                for tname in list(self._tools):
                    await self._subscribe_tool(tname)
                if self.config.share_tools:
                    # Ready only once this node's tools are visible cluster-wide and every
                    # published spec is known here.
                    self._bucket = ToolBucket(self._bus, self.config.cluster, self.registry)
                    specs = [t.spec for t in self._tools.values()]
                    await actors.start(self._bucket.share, specs)  # cancelled with the actors
                await actors.start(self.cache.serve)  # retries after reconnects; cancelled
                for name in ("status", "drain") if self._control else ():
                    sub = await self._bus.subscribe(self.subjects.ctl(name), capacity=64)
                    subs.append(sub)
                    pumps.start_soon(self._pump, sub, self._on_control)
                self._state = _State.SERVING
                self._started_at = trio.current_time()
                log.info("node %s serving %s", self.name, ", ".join(self._hosts) or "no agents")
                task_status.started(self)
                await self._stop.wait()
                self._state = _State.DRAINING
                with trio.move_on_after(self.config.drain_timeout_s) as scope:
                    scope.shield = True
                    for sub in subs:
                        await sub.unsubscribe()
            # Every message taken off the bus is now in a mailbox; let actors finish them.
            for host in self._hosts.values():
                host.close()
            with trio.move_on_after(self.config.drain_timeout_s) as scope:
                scope.shield = True
                for host in self._hosts.values():
                    await host.wait_stopped()
            if scope.cancelled_caught:
                log.error("node %s: actors still busy after %ss; cancelling them", self.name,
                          self.config.drain_timeout_s)  # fmt: skip
            actors.cancel_scope.cancel()
        self._state = _State.STOPPED


@asynccontextmanager
async def open_node(
    config: NodeConfig, agents: Sequence[type[Agent]] = (), *, bus: Transport | None = None,
    control: bool = True, tools: Sequence[Tool] = (), registry: ToolRegistry | None = None,
    policy: ToolPolicy | None = None, scheduler: Scheduler | None = None,
) -> AsyncIterator[Node]:  # fmt: skip
    """Connect to NATS, serve ``agents``, and drain them when the block exits.

    Raises:
        BusError: NATS cannot be reached.
        AgentDefinitionError: two agent classes share a type name.
    """
    if bus is not None:
        async with _serving(config, agents, bus, control, tools, registry, policy,
                            scheduler) as node:  # fmt: skip
            yield node
        return
    async with (
        open_bus(
            config.servers, name=f"agentrt:{config.cluster}:{config.name}", user=config.user,
            password=config.password,
        ) as nats_bus,
        _serving(config, agents, nats_bus, control, tools, registry, policy, scheduler) as node,
    ):  # fmt: skip
        yield node


@asynccontextmanager
async def _serving(
    config: NodeConfig, agents: Sequence[type[Agent]], bus: Transport, control: bool,
    tools: Sequence[Tool], registry: ToolRegistry | None, policy: ToolPolicy | None,
    scheduler: Scheduler | None = None,
) -> AsyncIterator[Node]:  # fmt: skip
    node = Node(config, agents, bus, control=control, tools=tools, registry=registry, policy=policy,
                scheduler=scheduler)  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        try:
            yield node
        finally:
            node.stop()


def open_client(
    config: NodeConfig, *, registry: ToolRegistry | None = None, policy: ToolPolicy | None = None
) -> AbstractAsyncContextManager[Node]:
    """A node with no agents: for programs and scripts that only send and publish.

    Clients do not answer ``ctl.status``, so ``agentrt status`` lists only real nodes.
    """
    return open_node(config, (), control=False, registry=registry, policy=policy)
