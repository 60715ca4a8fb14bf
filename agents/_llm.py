"""The LLM agent: model -> tool calls -> gate -> tool -> results -> model, until an answer.

Why a loop of our own instead of a framework's: every tool call must go through the node's gate
and policy (``Node.call_tool``), every failure must be fed back to the model in the gate's compact
form, and a model that keeps failing must be moved up a tier by the scheduler rather than burn its
step budget. Small models loop: they repeat the same invalid call with the same arguments. The
loop detects that (same tool, same arguments, failed again) and escalates at once.

The agent sees the model only through a ``ChatSession`` (the scheduler's ``ModelSession``
implements it): the agent never knows which provider or tier answers.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import msgspec
from agentrt import Agent, Message, Outcome
from agentrt._errors import (
    AgentrtError,
    GateError,
    MalformedModelOutput,
    PolicyDenied,
    StepLimitExceeded,
)
from agentrt.models import ChatMessage, ChatResponse, ToolCall, ToolDef

__all__ = [
    "ChatSession",
    "LlmAgent",
    "LlmReply",
    "LlmTask",
    "ModelProposer",
    "Offered",
    "fill_tool_call",
    "offered_tools",
    "run_tool_loop",
]

log = logging.getLogger("agentrt.llm")

_WIRE_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")
_WIRE_NAME_MAX = 64  # OpenAI and Anthropic both refuse longer function names


class ChatSession(Protocol):
    """What the loop needs of a model: the scheduler's ``ModelSession`` is one."""

    actor: str

    @property
    def tier(self) -> str:
        """The tier the next call goes to."""

    @property
    def model(self) -> str:
        """``backend:model`` that serves the next call (or served the last)."""

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolDef] = (),
        tool_choice: str = "auto",
        response_schema: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> ChatResponse: ...

    def escalate(self, reason: str) -> bool: ...


class LlmTask(Message, kw_only=True, tag="agentrt.llm_task"):  # type: ignore[misc,call-arg]  # agentrt is opaque to mypy here
    """Ask an LLM agent to do something; it answers with an ``LlmReply``."""

    prompt: str
    system: str = ""


class LlmReply(Message, kw_only=True, tag="agentrt.llm_reply"):  # type: ignore[misc,call-arg]
    """The agent's final answer and how it got there.

    Attributes:
        text: the model's final text.
        steps: model calls made.
        tool_calls: tool calls executed successfully.
        failed_calls: tool calls refused (gate, policy) or failed (tool error) and fed back.
        escalations: times the scheduler moved the task up a tier.
        model: the model that gave the final answer (``backend:model``).
        tier: its tier.
    """

    text: str
    steps: int
    tool_calls: int
    failed_calls: int
    escalations: int
    model: str
    tier: str


class _Node(Protocol):
    """What the loop needs of the node: the registry (to offer tools), the gate (to check a
    proposal before counting it), its policy, and the gated tool path."""

    name: str
    registry: Any
    gate: Any
    policy: Any

    async def call_checked_tool(
        self, name: str, checked: Any, *, sender: str = "", model: str = ""
    ) -> Any: ...

    async def call_tool_with(
        self, name: str, model: Any, *, escalate: Any = None, sender: str = ""
    ) -> Any: ...


def _wire_name(name: str, taken: set[str]) -> str:
    """Provider function names allow ``[A-Za-z0-9_-]{1,64}``; tool names have dots."""
    wire = _WIRE_NAME_RE.sub("_", name.replace(".", "__"))
    if len(wire) > _WIRE_NAME_MAX or wire in taken:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        wire = f"{wire[: _WIRE_NAME_MAX - 9]}_{digest}"
    return wire


@dataclass(frozen=True)
class Offered:
    """A tool as offered to a model: the cluster's name and the definition the model sees."""

    name: str
    definition: ToolDef


def offered_tools(node: _Node, patterns: Sequence[str]) -> dict[str, Offered]:
    """The tools this agent may show its model: matching ``patterns`` and allowed by the
    node's policy, keyed by the name the model sees."""
    names = sorted(
        t.name for t in node.registry if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)
    )
    if node.policy is not None:
        names = node.policy.allowed_tools(names)
    offered: dict[str, Offered] = {}
    for name in names:
        one = _offer(node, name, set(offered))
        offered[one.definition.name] = one
    return offered


def _offer(node: _Node, name: str, taken: set[str]) -> Offered:
    """One tool as the model sees it: provider-safe name, description, full input schema (a
    tool the registry does not know gets an empty object schema: the gate refuses its calls)."""
    known = node.registry.get(name)
    return Offered(
        name,
        ToolDef(
            name=_wire_name(name, taken),
            description=(known.spec.description or name) if known else name,
            parameters=known.spec.input_schema if known else {"type": "object"},
        ),
    )


@dataclass
class _LoopState:
    """Counters of one task, and the memory of failed calls that detects a looping model."""

    steps: int = 0
    tool_calls: int = 0
    failed_calls: int = 0
    escalations: int = 0
    consecutive_failures: int = 0
    last_problem: str = ""
    failed_signatures: Counter[tuple[str, str]] = field(default_factory=Counter)


def _signature(name: str, arguments: str) -> tuple[str, str]:
    """Same tool, same arguments up to whitespace: the model is repeating itself."""
    return name, re.sub(r"\s+", "", arguments)


def _result_text(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


async def run_tool_loop(
    node: _Node,
    session: ChatSession,
    messages: list[ChatMessage],
    *,
    tools: dict[str, Offered],
    sender: str,
    max_steps: int = 8,
    escalate_after: int = 2,
    repeat_limit: int = 2,
) -> LlmReply:
    """Run the model/tool loop until the model answers without calling a tool.

    ``messages`` grows in place (the conversation, for the caller to keep or log).
    Escalation: after ``escalate_after`` failures in a row, or when the same failing call comes
    back ``repeat_limit`` times, the session moves up a tier (once per trigger; at the top tier
    the loop goes on until ``max_steps``).

    Raises:
        StepLimitExceeded: ``max_steps`` model calls without a final answer.
        ModelError: the scheduler found no model to answer (``NoModelAvailable``) and the like.
    """
    state = _LoopState()
    defs = tuple(o.definition for o in tools.values())

    def failed(tool: str, signature: tuple[str, str], problem: str, *, gate: bool = True) -> None:
        """Count a failed step; escalate on a repeat or a run of failures. ``gate``: the
        model's proposal was at fault (counted per model and tool), not the tool itself."""
        state.failed_calls += 1
        state.consecutive_failures += 1
        state.last_problem = problem
        state.failed_signatures[signature] += 1
        repeated = state.failed_signatures[signature] >= repeat_limit
        if repeated or state.consecutive_failures >= escalate_after:
            why = "repeated the same failing call" if repeated else "failed calls in a row"
            before = session.model
            if session.escalate(f"{why}: {problem[:200]}"):
                state.escalations += 1
                node.gate.metrics.count(before, tool, Outcome.ESCALATED)
                state.consecutive_failures = 0
                state.failed_signatures.clear()
                log.info("%s escalated from %s to %s: %s", sender, before, session.model, why)
                return
        if gate:
            node.gate.metrics.count(session.model, tool, Outcome.RETRIED)

    while state.steps < max_steps:
        state.steps += 1
        try:
            response = await session.chat(messages, tools=defs)
        except MalformedModelOutput as exc:
            # A tool call written as text, or unreadable output: tell the model what to do.
            messages.append(ChatMessage(role="assistant", content=exc.raw))
            messages.append(
                ChatMessage(
                    role="user",
                    content=f"Your last reply could not be used: {exc.problem}. Call tools "
                    "through the tool-call interface, or answer in plain text.",
                )
            )
            failed("<malformed>", _signature("<malformed>", exc.raw), exc.problem)
            continue
        reply = response.message
        if not reply.tool_calls:
            return LlmReply(
                text=reply.content, steps=state.steps, tool_calls=state.tool_calls,
                failed_calls=state.failed_calls, escalations=state.escalations,
                model=session.model, tier=session.tier,
            )  # fmt: skip
        messages.append(reply)
        for call in reply.tool_calls:
            messages.append(await _run_call(node, session, tools, call, sender, state, failed))
    raise StepLimitExceeded(sender, state.steps, session.model, state.last_problem)


async def _run_call(
    node: _Node,
    session: ChatSession,
    tools: dict[str, Offered],
    call: ToolCall,
    sender: str,
    state: _LoopState,
    failed: Callable[..., None],
) -> ChatMessage:
    """Run one proposed call through the gate and the tool; its result (or precise error)
    becomes the ``tool`` message the model reads next."""

    def answer(content: str) -> ChatMessage:
        return ChatMessage(role="tool", content=content, tool_call_id=call.id, name=call.name)

    signature = _signature(call.name, call.arguments)
    offered = tools.get(call.name)
    if offered is None:
        problem = f"there is no tool {call.name!r}; the tools are: {', '.join(tools) or 'none'}"
        failed(call.name, signature, problem)
        return answer(f"error: {problem}")
    name = offered.name
    try:
        # Check first, so that an invalid proposal counts as a retry (fed back), not a
        # rejection; the checked arguments then run without a second repair.
        checked = node.gate.check_call(name, call.arguments)
    except GateError as err:
        failed(name, signature, err.render_compact())
        return answer(f"error: {err.render_compact()}\nFix the arguments and call again.")
    try:
        result = await node.call_checked_tool(name, checked, sender=sender, model=session.model)
    except PolicyDenied as exc:
        failed(name, signature, str(exc), gate=False)
        return answer(f"error: this agent may not call {name}; do without it")
    except GateError as err:  # the result broke the tool's output schema, or a node refused
        failed(name, signature, err.render_compact())
        return answer(f"error: the tool failed: {err.render_compact()}")
    except Exception as exc:  # the tool itself failed (here or on its node): the model decides
        log.info("%s: tool %s failed: %r", sender, name, exc)
        problem = str(exc) if isinstance(exc, AgentrtError) else f"{type(exc).__name__}: {exc}"
        failed(name, signature, problem, gate=False)
        return answer(f"error: the tool failed: {problem}")
    state.tool_calls += 1
    state.consecutive_failures = 0
    return answer(_result_text(result))


class LlmAgent(Agent):  # type: ignore[misc]
    """An agent whose handler is a model with tools.

    Subclass it and set the class attributes; the scheduler picks the model from the tier (or
    ``[models.agents.<type>]`` in agentrt.toml). Send it an ``LlmTask``; it answers ``LlmReply``.

    * ``system_prompt``: the system message of every task (a task's own ``system`` overrides).
    * ``tools``: globs of tool names the model is offered (further limited by the node's policy).
    * ``max_steps``: model calls per task before ``StepLimitExceeded``.
    * ``escalate_after`` / ``repeat_limit``: when a failing model is moved up a tier.
    """

    agent_type: ClassVar[str] = "LlmAgent"
    tier: ClassVar[str | None] = "small"
    system_prompt: ClassVar[str] = ""
    tools: ClassVar[tuple[str, ...]] = ()
    max_steps: ClassVar[int] = 8
    escalate_after: ClassVar[int] = 2
    repeat_limit: ClassVar[int] = 2

    async def on_task(self, msg: LlmTask) -> LlmReply:
        """Run one task: a fresh conversation and a fresh model session (tier reset)."""
        session = self._new_session()
        messages = [ChatMessage(role="user", content=msg.prompt)]
        system = msg.system or self.system_prompt
        if system:
            messages.insert(0, ChatMessage(role="system", content=system))
        node = self._node
        return await run_tool_loop(
            node, session, messages, tools=offered_tools(node, self.tools), sender=str(self.id),
            max_steps=self.max_steps,
            escalate_after=getattr(session, "escalate_after", self.escalate_after),
            repeat_limit=self.repeat_limit,
        )  # fmt: skip

    def _new_session(self) -> ChatSession:
        scheduler = getattr(self._node, "scheduler", None)
        if scheduler is None:
            raise AgentrtError(
                f"{self.id}: node {self.node_name} has no model scheduler; add a [models] "
                "section to agentrt.toml (backends and tiers, see docs/scheduler.md)"
            )
        session: ChatSession = scheduler.session(str(self.id), self.agent_type)
        return session


class ModelProposer:
    """Asks a model for the arguments of one tool (the tool forced with ``tool_choice``): the
    ``Proposer`` the gate's fallback ladder drives (``Node.call_tool_with``).

    A reply that is text instead of a tool call (small models do that) is handed to the gate
    as it is: the gate's repair often recovers the JSON, and if not, its compact error goes back
    to the model on the next attempt.
    """

    def __init__(self, session: ChatSession, offered: Offered, messages: Sequence[ChatMessage]):
        self.session, self.offered, self.messages = session, offered, list(messages)
        self.model = session.model  # the label the gate counts this proposer's calls under
        self._last = ""

    async def propose(self, feedback: str | None) -> Any:
        messages = list(self.messages)
        if feedback is not None:
            messages.append(ChatMessage(role="assistant", content=self._last))
            messages.append(
                ChatMessage(
                    role="user", content=f"{feedback}\nCall {self.offered.definition.name} again."
                )
            )
        tool = self.offered.definition
        try:
            response = await self.session.chat(messages, tools=(tool,), tool_choice=tool.name)
        except MalformedModelOutput as exc:
            self._last = exc.raw
        else:
            calls = response.message.tool_calls
            self._last = calls[0].arguments if calls else response.message.content
        self.model = self.session.model
        return self._last


async def fill_tool_call(
    node: _Node, session: ChatSession, tool: str, messages: Sequence[ChatMessage], *, sender: str
) -> Any:
    """Have the session's model fill in one call of ``tool`` from ``messages``, and run it.

    The gate's ladder applies (retry with the error fed back, then escalation to the next tier
    through the scheduler, then the tool's ``Fallback.degrade``). Returns the ``GateResult``.

    Raises:
        GateError: every rung failed and the tool's fallback is ``fail``.
        PolicyDenied: the node's policy does not allow ``tool``.
    """
    offered = _offer(node, tool, set())  # unknown: the gate raises its GateError below
    proposer = ModelProposer(session, offered, messages)

    async def escalate(err: GateError) -> ModelProposer | None:
        if not session.escalate(f"gate failures on {tool}: {err.render_compact()[:200]}"):
            return None
        return ModelProposer(session, offered, messages)

    return await node.call_tool_with(tool, proposer, escalate=escalate, sender=sender)
