"""Every exception agentrt raises, in one tree.

```
AgentrtError
├── ConfigError                  agentrt.toml is wrong: file, key path, what is expected
├── SchemaError                  a tool's JSON Schema is refused at registration
├── GateError                    a tool call or result failed the gate: every violation listed
├── AgentDefinitionError         an Agent class or message type is malformed (raised at import)
├── PolicyDenied                 the node's policy does not allow an action (audited)
├── BusError                     the NATS connection failed or closed (cause chained)
│   ├── NatsServerError          the embedded nats-server could not start
│   └── PermissionViolation      nats-server refused a publish/subscribe (broker-side policy)
├── DeliveryError                a message did not produce a reply
│   ├── DeadlineExceeded         (also TimeoutError) no reply before the deadline
│   ├── AgentUnavailable         nobody serves that agent type (no responders) or it is failing
│   ├── Overloaded               the recipient's mailbox was full; retry later
│   ├── PayloadTooLarge          the encoded message exceeds the bus limit
│   ├── UnexpectedReply          the reply's type is not the one the caller expected
│   └── RemoteError              the recipient refused or failed the message
│       ├── HandlerFailed        its handler raised: remote type + message + agent id
│       ├── NoHandler            the agent has no handler for that message type
│       ├── UnknownMessageType   the receiving node does not know that type tag
│       └── MalformedMessage     the bytes did not decode into the declared type
├── ClusterNotRunning            `agentrt status/call/down` found no running cluster
├── McpServerError               an MCP server failed a call, crashed mid-call or timed out
├── ModelError                   a model backend failed a call (backend, model, what, fix)
│   ├── RateLimited              429: the provider asks to wait ``retry_after`` seconds
│   ├── ModelOverloaded          the provider is down or overloaded (5xx, 529, refused)
│   ├── ModelTimeout             (also TimeoutError) no complete answer before the deadline
│   ├── ContextTooLong           the prompt does not fit the model's context window
│   ├── MalformedModelOutput     the answer (or a tool call in it) could not be read
│   │   └── ToolCallAsText       the model wrote a tool call in its text, not the tool-call field
│   ├── ModelRequestRejected     the provider refused the request (auth, unknown model, 4xx)
│   └── NoModelAvailable         the scheduler ran out of models (every tier failed or is full)
├── StepLimitExceeded            an LLM agent used its step budget without a final answer
└── TransformError               a wasm transform failed to load, run, or fit its output cap
    ├── TransformTimeout         (also TimeoutError) it ran past its wall-clock limit
    ├── TransformOutOfFuel       it executed more instructions than its fuel budget
    ├── TransformMemoryExceeded  it needed more linear memory than its cap
    └── TransformTrapped         it trapped (unreachable, out of bounds) or exited non-zero
```

Errors carry their facts as attributes, and `str()` is one sentence: what failed, where, and how
to fix it. Errors that cross the bus are rebuilt on the caller's side from `ErrorInfo`, so a
caller always gets the most specific class.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

__all__ = [
    "AgentDefinitionError",
    "AgentUnavailable",
    "AgentrtError",
    "BusError",
    "ClusterNotRunning",
    "ConfigError",
    "ContextTooLong",
    "DeadlineExceeded",
    "DeliveryError",
    "GateError",
    "HandlerFailed",
    "MalformedMessage",
    "MalformedModelOutput",
    "McpServerError",
    "ModelError",
    "ModelOverloaded",
    "ModelRequestRejected",
    "ModelTimeout",
    "NatsServerError",
    "NoHandler",
    "NoModelAvailable",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionViolation",
    "PolicyDenied",
    "RateLimited",
    "RemoteError",
    "SchemaError",
    "StepLimitExceeded",
    "ToolCallAsText",
    "TransformError",
    "TransformMemoryExceeded",
    "TransformOutOfFuel",
    "TransformTimeout",
    "TransformTrapped",
    "UnexpectedReply",
    "UnknownMessageType",
    "Violation",
]


class AgentrtError(Exception):
    """Root of every error agentrt raises on purpose."""


class ConfigError(AgentrtError):
    """The cluster configuration is invalid; nothing was started.

    Attributes:
        path: the file that was read.
        key: the key path inside it (``$.nodes[0].agents``), or ``""`` for the whole file.
        problem: what is wrong and what is expected.
    """

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path, self.key, self.problem = path, key, problem
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {problem}")


class SchemaError(AgentrtError):
    """A JSON Schema was refused when a tool was registered; nothing was registered.

    Attributes:
        tool: the tool whose schema it is.
        pointer: JSON pointer into the schema where the problem is (``""`` = the root).
        problem: what is wrong and how to fix it.
    """

    def __init__(self, tool: str, pointer: str, problem: str) -> None:
        self.tool, self.pointer, self.problem = tool, pointer, problem
        super().__init__(f"tool {tool!r}: schema at {pointer or '/'}: {problem}")


class GateError(AgentrtError):
    """A tool call (or its result) failed the gate; it was not executed (or not returned).

    Attributes:
        tool: the tool name.
        stage: ``"parse"`` (no JSON could be recovered), ``"input"`` or ``"output"``.
        violations: every violation found, each with JSON pointer, keyword, expected and got.
    """

    def __init__(self, tool: str, stage: str, violations: Sequence[Violation]) -> None:
        self.tool, self.stage, self.violations = tool, stage, list(violations)
        super().__init__(self.render_human())

    def render_compact(self) -> str:
        """Token-cheap, for feeding back to a model: one line per violation."""
        lines = [f"{self.tool} {self.stage} invalid:"]
        lines += [f"{v.pointer or '/'}: {v.keyword}: want {v.expected}, got {v.got}"
                  for v in self.violations]  # fmt: skip
        return "\n".join(lines)

    def render_human(self) -> str:
        """Readable, for logs and people: what failed, where, and what to send instead."""
        n = len(self.violations)
        head = f"tool {self.tool!r}: {self.stage} failed the schema gate ({n} violation"
        head += "s)" if n != 1 else ")"
        body = [
            f"  at {v.pointer or '/'}: {v.keyword!r} expects {v.expected}; got {v.got}"
            for v in self.violations
        ]
        return "\n".join([head, *body])


class Violation(msgspec.Struct, frozen=True, kw_only=True):
    """One schema violation.

    Attributes:
        pointer: JSON pointer into the instance (``/items/0/name``; ``""`` is the root).
        keyword: the JSON Schema keyword that failed (``type``, ``required``, ``maximum`` ...).
        expected: what the schema wants, short (``integer``, ``<= 10``, ``property 'q'``).
        got: what came, short and truncated (``"5"``, ``missing``, ``12``).
    """

    pointer: str
    keyword: str
    expected: str
    got: str


class AgentDefinitionError(AgentrtError, TypeError):
    """An agent class or message type cannot work as written; raised when the class is defined."""


class PolicyDenied(AgentrtError):
    """The node's policy does not allow this; nothing was done, and the denial was audited.

    Attributes:
        action: what was attempted (``call tool``).
        target: what it was attempted on (the tool name).
        rule: the rule that decided (``tools.deny[0] = 'shell.*'``, or no allow matched).
        policy: the policy file.
    """

    def __init__(self, action: str, target: str, rule: str, policy: str) -> None:
        self.action, self.target, self.rule, self.policy = action, target, rule, policy
        super().__init__(
            f"policy {policy} does not allow {action} {target!r} ({rule}); "
            "change the node's policy file if this node should be allowed to"
        )


class BusError(AgentrtError):
    """The NATS connection failed, closed, or refused an operation. The cause is chained."""


class PermissionViolation(BusError):
    """nats-server refused a publish or subscribe: the node's NATS user may not use the subject.

    This is the broker enforcing the node's policy, independently of the node's own checks.

    Attributes:
        subject: the subject that was refused.
    """

    def __init__(self, operation: str, subject: str) -> None:
        self.operation, self.subject = operation, subject
        super().__init__(
            f"nats-server refused to {operation} {subject!r}: this node's NATS user has no "
            "permission for it (its policy file decides which subjects it may use)"
        )


class NatsServerError(BusError):
    """The embedded ``nats-server`` could not be started or did not become ready."""


class ClusterNotRunning(AgentrtError):
    """No running cluster was found for this configuration (no state file, or it is stale)."""


class McpServerError(AgentrtError):
    """An MCP server behind the bridge failed a tool call: it answered with an error result,
    did not answer in time, or its process ended while the call was in flight.

    The bridge raises it on the node that hosts the tool; a caller on another node gets a
    ``HandlerFailed`` whose ``remote_type`` is ``McpServerError`` and whose message names the
    server, so the failure is typed on both sides and never a silent hang.

    Attributes:
        server: the server's name in the bridge configuration (``mcp.<server>.<tool>``).
        problem: what went wrong (the server's error text, a timeout, a crash).
    """

    def __init__(self, server: str, problem: str) -> None:
        self.server, self.problem = server, problem
        super().__init__(f"MCP server {server!r}: {problem}")


class ModelError(AgentrtError):
    """A model backend did not produce a usable answer.

    The scheduler decides from the subclass what to do next: wait and retry (``RateLimited``),
    fall back to the next model (``ModelOverloaded``, ``ModelTimeout``), move up a tier
    (``MalformedModelOutput``, ``ContextTooLong``) or give up (``ModelRequestRejected``).

    Attributes:
        backend: the backend's name in ``agentrt.toml``.
        model: the model asked.
        problem: what went wrong, with the provider's own words where it gave some.
        status: the HTTP status, or 0 when there was none (connection, stream, parse).
    """

    def __init__(self, backend: str, model: str, problem: str, *, status: int = 0) -> None:
        self.backend, self.model, self.problem, self.status = backend, model, problem, status
        super().__init__(f"model {model!r} on backend {backend!r}: {problem}")


class RateLimited(ModelError):
    """The provider answered 429; ``retry_after`` is how long it asked to wait (seconds)."""

    def __init__(
        self, backend: str, model: str, problem: str, *, retry_after: float, status: int = 429
    ) -> None:
        self.retry_after = retry_after
        super().__init__(backend, model, problem, status=status)


class ModelOverloaded(ModelError):
    """The provider is unreachable, failing (5xx) or overloaded (Anthropic 529); try another."""


class ModelTimeout(ModelError, TimeoutError):
    """No complete answer before the deadline (the stream stalled or never started)."""


class ContextTooLong(ModelError):
    """The conversation does not fit the model's context window: shorten it or use a larger
    model."""


class MalformedModelOutput(ModelError):
    """The provider's answer could not be read: invalid JSON on the wire, or a tool call the
    model wrote as plain text instead of in the tool-call field.

    Attributes:
        raw: the offending text (truncated), so the error can be fed back to the model.
    """

    def __init__(
        self, backend: str, model: str, problem: str, *, raw: str = "", status: int = 0
    ) -> None:
        self.raw = raw[:2000]
        super().__init__(backend, model, problem, status=status)


class ToolCallAsText(MalformedModelOutput):
    """The model answered with a tool call written as text (JSON, ``<tool_call>`` tags, a
    fenced block) instead of the provider's tool-call field.

    Unlike a broken stream, this is the model's own behaviour, not the provider's: the
    scheduler does not fall back to another model for it, it reaches the caller, and the LLM
    agent feeds it back to the model (which counts towards escalation).
    """


class ModelRequestRejected(ModelError):
    """The provider refused the request itself (bad key, unknown model, invalid request):
    retrying the same request elsewhere will not help until the configuration is fixed."""


class NoModelAvailable(ModelError):
    """The scheduler tried every model it may use for this call and none answered.

    Attributes:
        attempts: each model tried and why it failed, in order.
    """

    def __init__(self, actor: str, tier: str, attempts: Sequence[str]) -> None:
        self.attempts = list(attempts)
        self.backend, self.model, self.status = "scheduler", "", 0
        tried = "; ".join(self.attempts) or "no model is configured for it"
        self.problem = (
            f"no model could serve {actor!r} from tier {tier!r} up: {tried} "
            "(check the backends in agentrt.toml [models] and that they are running)"
        )
        AgentrtError.__init__(self, self.problem)


class StepLimitExceeded(AgentrtError):
    """An LLM agent's model kept calling tools (or failing to) for its whole step budget.

    Attributes:
        actor: the agent id (``type/key``).
        steps: model calls made.
        model: the model of the last step (``backend:model``).
        last_problem: the last failure fed back to the model, if the loop was failing.
    """

    def __init__(self, actor: str, steps: int, model: str, last_problem: str = "") -> None:
        self.actor, self.steps, self.model, self.last_problem = actor, steps, model, last_problem
        tail = f"; last problem: {last_problem}" if last_problem else ""
        super().__init__(
            f"{actor}: no final answer after {steps} model steps (last model {model}){tail}; "
            "raise the agent's max_steps, give it fewer tools, or move it to a larger tier"
        )


class DeliveryError(AgentrtError):
    """A message was sent but no normal reply came back.

    Attributes:
        recipient: the agent id (``type/key``) or subject the message was for.
    """

    def __init__(self, message: str, *, recipient: str = "") -> None:
        self.recipient = recipient
        super().__init__(message)


class DeadlineExceeded(DeliveryError, TimeoutError):
    """No reply arrived before the deadline.

    The message may or may not have been handled: request/reply is at-most-once.

    Attributes:
        deadline_s: the time budget the request had, in seconds.
        elapsed_s: how long the caller actually waited.
    """

    def __init__(self, recipient: str, deadline_s: float, elapsed_s: float) -> None:
        self.deadline_s, self.elapsed_s = deadline_s, elapsed_s
        super().__init__(
            f"no reply from {recipient} within {deadline_s:.3g}s (waited {elapsed_s:.3g}s); "
            "the recipient may be slow, overloaded or down: check `agentrt status`, "
            "or give the call a longer deadline",
            recipient=recipient,
        )


class AgentUnavailable(DeliveryError):
    """No node currently serves the recipient's agent type, or the actor has stopped."""


class Overloaded(DeliveryError):
    """The recipient's bounded mailbox was full; the message was refused, not queued."""


class PayloadTooLarge(DeliveryError):
    """The encoded message is larger than the bus accepts.

    Attributes:
        size: encoded size in bytes.
        limit: the largest size allowed.
    """

    def __init__(self, recipient: str, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(
            f"message for {recipient} is {size} bytes, over the {limit}-byte limit; "
            "send a reference (file transfer / object store) instead of the bytes",
            recipient=recipient,
        )


class UnexpectedReply(DeliveryError):
    """The reply arrived but is not of the type passed as ``expect=``."""


class RemoteError(DeliveryError):
    """The recipient received the message and answered with a failure.

    Attributes:
        code: machine-readable reason (``handler_failed``, ``no_handler``, ...).
        remote_type: the exception type name raised on the remote side, if any.
        remote_message: the remote side's message.
        agent_id: the actor that answered (``type/key``), or ``""`` if no actor was reached.
    """

    code = "remote_error"

    def __init__(
        self, message: str, *, remote_type: str = "", agent_id: str = "", recipient: str = ""
    ) -> None:
        self.remote_type, self.remote_message, self.agent_id = remote_type, message, agent_id
        where = agent_id or recipient or "remote"
        prefix = f"{remote_type} in {where}" if remote_type else where
        super().__init__(f"{prefix}: {message}", recipient=recipient or agent_id)


class HandlerFailed(RemoteError):
    """The recipient's handler raised; the actor was restarted per its policy."""

    code = "handler_failed"


class NoHandler(RemoteError):
    """The recipient agent has no handler for this message type."""

    code = "no_handler"


class UnknownMessageType(RemoteError):
    """The receiving node has no message type registered under this tag."""

    code = "unknown_type"


class MalformedMessage(RemoteError):
    """The bytes received do not decode into the declared message type."""

    code = "malformed"


class TransformError(AgentrtError):
    """A wasm transform could not be loaded or run, or its result was refused.

    The subclasses name the limit that stopped it; this class itself covers the rest (an
    unknown name, a module that is not a WASI command, output over ``max_output_bytes``). The
    host that raised it keeps serving: the failed call's store was discarded.

    Attributes:
        transform: the registered transform name.
        problem: what went wrong and how to fix it.
    """

    def __init__(self, transform: str, problem: str) -> None:
        self.transform, self.problem = transform, problem
        super().__init__(f"transform {transform!r}: {problem}")


class TransformTimeout(TransformError, TimeoutError):
    """The transform ran past its wall-clock limit and was interrupted (epoch deadline).

    Attributes:
        timeout_s: the limit it had.
        elapsed_s: how long it ran before it was stopped.
    """

    def __init__(self, transform: str, timeout_s: float, elapsed_s: float) -> None:
        self.timeout_s, self.elapsed_s = timeout_s, elapsed_s
        super().__init__(
            transform,
            f"interrupted after {elapsed_s:.3g}s, over its {timeout_s:.3g}s time limit; "
            "give it a larger Limits.timeout_s or smaller input, or fix a loop that never ends",
        )


class TransformOutOfFuel(TransformError):
    """The transform executed more wasm instructions than its fuel budget allows.

    Attributes:
        fuel: the budget it had (roughly one unit per wasm instruction).
    """

    def __init__(self, transform: str, fuel: int) -> None:
        self.fuel = fuel
        super().__init__(
            transform,
            f"used all of its {fuel} units of fuel; raise Limits.fuel if the input "
            "really needs that much work, or fix a loop that never ends",
        )


class TransformMemoryExceeded(TransformError):
    """The transform needed more linear memory than its cap (``memory.grow`` was refused).

    Attributes:
        memory_bytes: the cap it had.
    """

    def __init__(self, transform: str, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        super().__init__(
            transform,
            f"needed more than its {memory_bytes}-byte memory cap; raise "
            "Limits.memory_bytes or send it smaller input",
        )


class TransformTrapped(TransformError):
    """The transform trapped (``unreachable``, out-of-bounds access ...) or exited non-zero.

    Attributes:
        reason: the trap message, or ``exit status N``.
        exit_code: the WASI exit code for a non-zero ``proc_exit``, else ``None``.
        stderr: the first bytes the module wrote to stderr (often the real explanation).
    """

    def __init__(
        self, transform: str, reason: str, *, exit_code: int | None = None, stderr: bytes = b""
    ) -> None:
        self.reason, self.exit_code, self.stderr = reason, exit_code, stderr
        said = stderr.decode("utf-8", "replace").strip()
        super().__init__(
            transform,
            f"failed: {reason}"
            + (f" (stderr: {said})" if said else "")
            + "; this is a bug in the transform or input it does not accept, fix one of them",
        )
