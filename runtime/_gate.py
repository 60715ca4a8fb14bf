"""The schema gate: every tool call and result passes it, at the sender and at the receiver.

Sender side (``check_call``): parse and repair the model's output, then validate; what fails
goes back to the model as a compact error. Receiver side (``check_received``): validate only,
never repair — a node never executes a call that is not valid as received, whoever sent it.
``call()`` runs the whole fallback ladder: retry with the error fed back, escalate to a bigger
model, then degrade as the tool's ``Fallback`` says. Every step is counted per (model, tool,
outcome) so the scheduler and the operator can see which models break which tools.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from ._errors import GateError, Violation
from ._repair import RepairStep
from ._tools import Tool, ToolRegistry

__all__ = [
    "Checked",
    "Escalate",
    "Execute",
    "Gate",
    "GateCount",
    "GateMetrics",
    "GateResult",
    "Outcome",
    "Proposer",
    "outcome_of",
]


class Outcome(enum.StrEnum):
    """How a tool call went through the gate (one count per step, per model and tool)."""

    VALID = "valid"  # valid as proposed
    REPAIRED = "repaired"  # valid after repair (fences, syntax, coercion, defaults)
    RETRIED = "retried"  # invalid; the model was asked again with the error
    ESCALATED = "escalated"  # invalid after retries; handed to a bigger model
    DEGRADED = "degraded"  # gave up; answered with a cached/default/skipped result
    REJECTED = "rejected"  # gave up; the caller got a GateError (or a node refused a call)


def outcome_of(steps: tuple[RepairStep, ...]) -> Outcome:
    """VALID unless a step fixed something: filling a declared default is not a repair."""
    return Outcome.REPAIRED if any(s.rule != "fill_default" for s in steps) else Outcome.VALID


class GateCount(msgspec.Struct, frozen=True, kw_only=True):
    """One counter of the gate: calls of ``tool`` by ``model`` that ended in ``outcome``."""

    model: str
    tool: str
    outcome: str
    count: int


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class GateMetrics:
    """Counters per (model, tool, outcome); ``prometheus()`` renders the text format."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, Outcome]] = Counter()

    def count(self, model: str, tool: str, outcome: Outcome, n: int = 1) -> None:
        self._counts[(model, tool, outcome)] += n

    def get(self, model: str, tool: str, outcome: Outcome) -> int:
        return self._counts[(model, tool, outcome)]

    def snapshot(self) -> list[GateCount]:
        return [
            GateCount(model=m, tool=t, outcome=o.value, count=n)
            for (m, t, o), n in sorted(self._counts.items())
        ]

    def prometheus(self) -> str:
        lines = [
            "# HELP agentrt_gate_calls_total Tool calls through the schema gate, by outcome.",
            "# TYPE agentrt_gate_calls_total counter",
        ]
        for (model, tool, outcome), n in sorted(self._counts.items()):
            lines.append(
                f'agentrt_gate_calls_total{{model="{_label(model)}",tool="{_label(tool)}",'
                f'outcome="{outcome.value}"}} {n}'
            )
        return "\n".join(lines) + "\n"


class Checked(msgspec.Struct, frozen=True):
    """Arguments that passed the sender's gate, with the repairs that made them pass."""

    args: dict[str, Any]
    steps: tuple[RepairStep, ...] = ()


class GateResult(msgspec.Struct, frozen=True, kw_only=True):
    """What ``Gate.call`` returns: the result and how the call got there."""

    value: Any
    outcome: Outcome
    model: str
    attempts: int
    steps: tuple[RepairStep, ...] = ()


class Proposer(Protocol):
    """A model proposing tool-call arguments; ``feedback`` is the last compact gate error."""

    model: str

    async def propose(self, feedback: str | None) -> Any: ...


Escalate = Callable[[GateError], Awaitable[Proposer | None]]
Execute = Callable[[dict[str, Any]], Awaitable[Any]]


class Gate:
    """Validates tool calls against the registry's schemas and runs the fallback ladder."""

    def __init__(self, registry: ToolRegistry, metrics: GateMetrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics or GateMetrics()
        self._last_good: dict[str, Any] = {}

    def _tool(self, name: str) -> Tool:
        t = self.registry.get(name)
        if t is None:
            known = ", ".join(x.name for x in self.registry) or "none"
            raise GateError(
                name, "input",
                [Violation(pointer="", keyword="tool", expected=f"a known tool ({known})",
                           got=repr(name)[:60])],
            )  # fmt: skip
        return t

    def check_call(self, name: str, raw: Any) -> Checked:
        """Sender side: repair and validate a proposed call.

        Raises:
            GateError: unknown tool, no JSON recoverable (stage ``parse``), or violations.
        """
        t = self._tool(name)
        repaired = t.repairer.repair(raw, tool=name)
        value = repaired.value
        if not t.input.is_valid(value):
            raise GateError(name, "input", t.input.violations(value))
        return Checked(value, repaired.steps)

    def check_received(self, name: str, args: Any) -> Tool:
        """Receiver side: validate exactly what arrived; nothing is repaired here.

        Raises:
            GateError: the call is not valid; it must not be executed.
        """
        t = self._tool(name)
        if not t.input.is_valid(args):
            raise GateError(name, "input", t.input.violations(args))
        return t

    def check_result(self, name: str, result: Any) -> None:
        """Validate a tool's result against its output schema (if it declares one).

        Raises:
            GateError: stage ``output``: the tool broke its own contract.
        """
        t = self._tool(name)
        if t.output is not None and not t.output.is_valid(result):
            raise GateError(name, "output", t.output.violations(result))

    async def call(
        self, name: str, model: Proposer, execute: Execute, *, escalate: Escalate | None = None
    ) -> GateResult:
        """Ask ``model`` for arguments, gate them, execute, gate the result; fall back per tool.

        Raises:
            GateError: the tool's fallback is ``fail`` and every rung failed.
        """
        t = self._tool(name)
        policy = t.spec.fallback
        attempts, retries_left, escalated = 0, policy.retries, False
        feedback: str | None = None
        while True:
            attempts += 1
            raw = await model.propose(feedback)
            try:
                checked = self.check_call(name, raw)
            except GateError as err:
                if retries_left > 0:
                    retries_left -= 1
                    self.metrics.count(model.model, name, Outcome.RETRIED)
                    feedback = err.render_compact()
                    continue
                if policy.escalate and escalate is not None and not escalated:
                    bigger = await escalate(err)
                    if bigger is not None:
                        self.metrics.count(model.model, name, Outcome.ESCALATED)
                        model, escalated = bigger, True
                        retries_left, feedback = policy.retries, err.render_compact()
                        continue
                return self._degrade(t, model.model, err, attempts)
            result = await execute(checked.args)
            try:
                self.check_result(name, result)
            except GateError as err:
                return self._degrade(t, model.model, err, attempts)
            self._last_good[name] = result
            outcome = outcome_of(checked.steps)
            self.metrics.count(model.model, name, outcome)
            return GateResult(
                value=result, outcome=outcome, model=model.model, attempts=attempts,
                steps=checked.steps,
            )  # fmt: skip

    def _degrade(self, t: Tool, model: str, err: GateError, attempts: int) -> GateResult:
        policy = t.spec.fallback
        if policy.degrade == "cached" and t.name in self._last_good:
            value = self._last_good[t.name]
        elif policy.degrade == "default":
            value = policy.default
        elif policy.degrade == "skip":
            value = None
        else:  # "fail", or "cached" with nothing cached yet
            self.metrics.count(model, t.name, Outcome.REJECTED)
            raise err
        self.metrics.count(model, t.name, Outcome.DEGRADED)
        return GateResult(value=value, outcome=Outcome.DEGRADED, model=model, attempts=attempts)

    def rejected(self, name: str, model: str = "") -> None:
        """Count a call refused by a receiving node (it never executed)."""
        self.metrics.count(model, name, Outcome.REJECTED)
