"""``agentrt eval``: measure which tier each task really needs, instead of guessing.

Each task of an eval file runs ``repeats`` times on every tier, pinned there (no escalation, no
fallback to another tier), through the same tool loop and gate the LLM agent uses, against the
running cluster's real tools. A run passes when the model called the expected tool with the
expected arguments (a subset match after the gate's repair) and/or its answer contains the
expected text. The report gives, per task and tier, the pass rate, the steps and gate failures it
took, tokens, cost and latency, and recommends the cheapest tier whose pass rate reaches the
threshold — per agent type, the tier to put in ``[models.agents.<type>]``.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
from agentrt._config import decode_toml
from agentrt._errors import AgentrtError, ConfigError, StepLimitExceeded
from agentrt.models import ChatMessage, ChatResponse

from ._llm import ChatSession, offered_tools, run_tool_loop

__all__ = [
    "EvalFile",
    "EvalReport",
    "EvalTask",
    "TierResult",
    "evaluate",
    "load_eval_file",
    "render_report",
]


class EvalTask(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One task of an eval file (``[[tasks]]``).

    Attributes:
        name: shown in the report.
        agent: the agent type whose tier this task informs (default: the file's ``agent``).
        prompt / system: the conversation's start.
        tools: globs of the tools the model is offered.
        expect_tool / expect_args: the run must call this tool, with these arguments (a subset:
            keys not listed are not checked).
        expect_text: the final answer must contain it (case-insensitive); ``expect_regex``: match.
        max_steps: model calls per run.
    """

    name: str
    prompt: str
    agent: str = ""
    system: str = ""
    tools: list[str] = []
    expect_tool: str = ""
    expect_args: dict[str, Any] = {}
    expect_text: str = ""
    expect_regex: str = ""
    max_steps: int = 6


class EvalFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An eval file: defaults, then ``[[tasks]]``."""

    agent: str = ""
    tiers: list[str] = msgspec.field(default_factory=lambda: ["small", "medium", "large"])
    repeats: int = 3
    threshold: float = 1.0
    tasks: list[EvalTask] = []


def load_eval_file(path: str | Path) -> EvalFile:
    """Read and check an eval file.

    Raises:
        ConfigError: unreadable, wrong keys/types, no tasks, a task with nothing to check, a
            bad regex, a threshold outside 0..1.
    """
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(where, "", f"cannot read the eval file: {exc.strerror}") from None
    spec: EvalFile = decode_toml(raw, EvalFile, where)
    if not spec.tasks:
        raise ConfigError(where, "$.tasks", "no tasks: add at least one [[tasks]] entry")
    if not 0 < spec.threshold <= 1:
        raise ConfigError(where, "$.threshold", f"must be in (0, 1], got {spec.threshold}")
    if spec.repeats < 1:
        raise ConfigError(where, "$.repeats", f"must be at least 1, got {spec.repeats}")
    for i, task in enumerate(spec.tasks):
        key = f"$.tasks[{i}]"
        if not (task.expect_tool or task.expect_text or task.expect_regex):
            raise ConfigError(
                where, key,
                f"task {task.name!r} checks nothing: give expect_tool, expect_text or "
                "expect_regex",
            )  # fmt: skip
        if task.expect_args and not task.expect_tool:
            raise ConfigError(where, f"{key}.expect_args", "needs expect_tool (which tool?)")
        if task.expect_regex:
            try:
                re.compile(task.expect_regex)
            except re.error as exc:
                raise ConfigError(where, f"{key}.expect_regex", f"not a regex: {exc}") from None
        if not (task.agent or spec.agent):
            raise ConfigError(where, f"{key}.agent", "which agent type? set agent here or at top")
    return spec


class TierResult(msgspec.Struct, kw_only=True):
    """One task on one tier, over all its repeats."""

    task: str
    agent: str
    tier: str
    runs: int = 0
    passed: int = 0
    steps: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: str = "0"  # Decimal as text: exact
    latencies_s: list[float] = []
    errors: list[str] = []

    @property
    def pass_rate(self) -> float:
        return self.passed / self.runs if self.runs else 0.0

    @property
    def p50_s(self) -> float:
        return statistics.median(self.latencies_s) if self.latencies_s else 0.0


class EvalReport(msgspec.Struct, kw_only=True):
    """Every (task, tier) result, and the recommendations drawn from them."""

    threshold: float
    results: list[TierResult]
    task_tiers: dict[str, str]  # task -> cheapest passing tier ("" = none passed)
    agent_tiers: dict[str, str]  # agent type -> the tier its hardest task needs


class _Metered:
    """Wraps a session pinned to one tier: counts tokens and latency, never escalates."""

    def __init__(self, inner: ChatSession, price: Callable[[str, int, int], Decimal]) -> None:
        self.inner, self.price = inner, price
        self.input_tokens = self.output_tokens = 0
        self.cost = Decimal(0)
        self.actor = inner.actor

    @property
    def tier(self) -> str:
        return self.inner.tier

    @property
    def model(self) -> str:
        return self.inner.model

    async def chat(self, messages: Sequence[ChatMessage], **kw: Any) -> ChatResponse:
        response = await self.inner.chat(messages, **kw)
        u = response.usage
        self.input_tokens += u.input_tokens
        self.output_tokens += u.output_tokens
        self.cost += self.price(self.inner.model, u.input_tokens, u.output_tokens)
        return response

    def escalate(self, reason: str) -> bool:
        return False  # pinned: the eval measures this tier alone


def _subset(expected: Any, got: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(
            k in got and _subset(v, got[k]) for k, v in expected.items()
        )
    return bool(expected == got)


class _CallRecorder:
    """A node view that records the checked arguments of every executed call."""

    def __init__(self, node: Any) -> None:
        self._node = node
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.name, self.registry, self.gate = node.name, node.registry, node.gate
        self.policy = node.policy

    async def call_checked_tool(
        self, name: str, checked: Any, *, sender: str = "", model: str = ""
    ) -> Any:
        result = await self._node.call_checked_tool(name, checked, sender=sender, model=model)
        self.calls.append((name, checked.args))
        return result

    async def call_tool_with(self, *a: Any, **kw: Any) -> Any:
        return await self._node.call_tool_with(*a, **kw)


def _passed(task: EvalTask, text: str, calls: list[tuple[str, dict[str, Any]]]) -> bool:
    if task.expect_tool and not any(
        name == task.expect_tool and _subset(task.expect_args, args) for name, args in calls
    ):
        return False
    if task.expect_text and task.expect_text.lower() not in text.lower():
        return False
    return not (task.expect_regex and not re.search(task.expect_regex, text))


async def evaluate(
    node: Any,
    spec: EvalFile,
    session_for: Callable[[str, str], ChatSession],
    *,
    price: Callable[[str, int, int], Decimal] = lambda model, i, o: Decimal(0),
    on_result: Callable[[TierResult], None] | None = None,
) -> EvalReport:
    """Run every task on every tier ``spec.repeats`` times; recommend the cheapest tier.

    ``session_for(agent_type, tier)`` returns a fresh session pinned to ``tier``; ``price``
    gives the exact cost of a call's tokens on a model (the scheduler's price table).
    """
    results: list[TierResult] = []
    for task in spec.tasks:
        agent = task.agent or spec.agent
        for tier in spec.tiers:
            r = TierResult(task=task.name, agent=agent, tier=tier)
            cost = Decimal(0)
            for _ in range(spec.repeats):
                session = _Metered(session_for(agent, tier), price)
                view = _CallRecorder(node)
                messages = [ChatMessage(role="user", content=task.prompt)]
                if task.system:
                    messages.insert(0, ChatMessage(role="system", content=task.system))
                r.runs += 1
                started = time.perf_counter()
                try:
                    reply = await run_tool_loop(
                        view, session, messages, tools=offered_tools(view, task.tools),
                        sender=f"eval/{task.name}", max_steps=task.max_steps,
                        escalate_after=10**6, repeat_limit=10**6,
                    )  # fmt: skip
                except StepLimitExceeded as exc:
                    r.steps += exc.steps
                    r.errors.append(f"step limit ({exc.steps})")
                except AgentrtError as exc:
                    r.errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    r.steps += reply.steps
                    r.failed_calls += reply.failed_calls
                    if _passed(task, reply.text, view.calls):
                        r.passed += 1
                r.latencies_s.append(time.perf_counter() - started)
                r.input_tokens += session.input_tokens
                r.output_tokens += session.output_tokens
                cost += session.cost
            r.cost = str(cost)
            results.append(r)
            if on_result is not None:
                on_result(r)
    return _recommend(spec, results)


def _recommend(spec: EvalFile, results: list[TierResult]) -> EvalReport:
    task_tiers: dict[str, str] = {}
    agent_tiers: dict[str, str] = {}
    rank = {tier: i for i, tier in enumerate(spec.tiers)}
    for task in spec.tasks:
        ok = [
            r.tier for r in results
            if r.task == task.name and r.pass_rate >= spec.threshold
        ]  # fmt: skip
        task_tiers[task.name] = min(ok, key=rank.__getitem__) if ok else ""
        agent = task.agent or spec.agent
        need = task_tiers[task.name] or spec.tiers[-1]
        if agent not in agent_tiers or rank[need] > rank[agent_tiers[agent]]:
            agent_tiers[agent] = need
    return EvalReport(
        threshold=spec.threshold, results=results, task_tiers=task_tiers, agent_tiers=agent_tiers
    )


def render_report(report: EvalReport) -> tuple[Any, str]:
    """A rich table of every (task, tier), and the ``[models.agents]`` TOML to paste."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title="agentrt eval")
    for col in ("task", "agent", "tier", "pass", "steps", "gate fails", "tokens in/out", "cost",
                "p50 s", "errors"):  # fmt: skip
        table.add_column(col)
    for r in report.results:
        mark = "*" if report.task_tiers.get(r.task) == r.tier else ""
        table.add_row(
            r.task, r.agent, r.tier + mark, f"{r.passed}/{r.runs}", str(r.steps),
            str(r.failed_calls), f"{r.input_tokens}/{r.output_tokens}", r.cost,
            f"{r.p50_s:.3f}", "; ".join(dict.fromkeys(r.errors))[:60],
        )  # fmt: skip
    lines = [f"# cheapest tier passing >= {report.threshold:.0%} of runs (* in the table)"]
    for task, tier in report.task_tiers.items():
        if not tier:
            lines.append(f"# task {task!r}: no tier passed; the agent keeps the largest")
    for agent, tier in sorted(report.agent_tiers.items()):
        lines += [f"[models.agents.{agent}]", f'tier = "{tier}"']
    return table, "\n".join(lines)
