"""What the model calls cost: counts, tokens, money and latency per (agent type, tier, model).

Money is ``Decimal`` all the way (prices are decoded as decimals, a call's cost is
``tokens * price / 10**6`` done exactly, totals are sums of those), so totals shown by
``agentrt status`` and ``agentrt metrics`` are exact, not float sums.

Latency is kept as a fixed-bucket histogram (plus sum and count): recording is one bisect and
an increment, nodes' histograms add up bucket by bucket, and p50/p95 are estimated the way
Prometheus' ``histogram_quantile`` does (linear within the bucket), so the status table and a
Prometheus query agree.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

from ._modelconfig import Price

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "LATENCY_BUCKETS_S",
    "Accounting",
    "ModelStats",
    "merge_stats",
    "models_prometheus",
    "models_table",
]

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Upper bounds of the latency buckets (seconds); one more bucket counts everything above."""


class ModelStats(msgspec.Struct, kw_only=True):
    """Counters of one (agent type, tier, model) since the node started.

    Attributes:
        agent: the agent type whose actors made the calls.
        tier: the tier the call was served at (or failed at).
        model: ``"<backend>:<model>"``.
        calls: calls this model answered.
        errors: failed attempts on this model, by error class (``ModelOverloaded``...).
        fallbacks: times a failure here moved the call to another model.
        escalations: times an actor on this tier moved up (counted on the model it was using).
        queued: calls that waited for a slot before this model served them.
        queue_wait_s: total time those calls waited.
        queue_timeouts: calls that gave up waiting (``queue_timeout_s``), counted on the
            tier's first model.
        input_tokens: prompt tokens the provider reported.
        output_tokens: completion tokens the provider reported.
        cost: exact total, in the unit of ``[models.prices]`` (per million tokens).
        latency_sum_s: total time of answered calls (the HTTP exchange).
        latency_count: answered calls timed.
        latency_buckets: answered calls per bucket of ``LATENCY_BUCKETS_S``, the last one for
            everything slower (not cumulative).
    """

    agent: str
    tier: str
    model: str
    calls: int = 0
    errors: dict[str, int] = {}
    fallbacks: int = 0
    escalations: int = 0
    queued: int = 0
    queue_wait_s: float = 0.0
    queue_timeouts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    latency_sum_s: float = 0.0
    latency_count: int = 0
    latency_buckets: list[int] = []

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.agent, self.tier, self.model)

    def quantile(self, q: float) -> float:
        """Estimated latency quantile ``q`` (0..1) in seconds; 0.0 with no calls."""
        total = sum(self.latency_buckets)
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for i, n in enumerate(self.latency_buckets):
            if n and seen + n >= rank:
                if i >= len(LATENCY_BUCKETS_S):
                    return LATENCY_BUCKETS_S[-1]  # above the last bound: the bound is all we know
                lower = LATENCY_BUCKETS_S[i - 1] if i else 0.0
                upper = LATENCY_BUCKETS_S[i]
                return lower + (upper - lower) * (rank - seen) / n
            seen += n
        return LATENCY_BUCKETS_S[-1]

    def copy(self) -> ModelStats:
        return msgspec.structs.replace(
            self, errors=dict(self.errors), latency_buckets=list(self.latency_buckets)
        )

    def add(self, other: ModelStats) -> None:
        """Add ``other``'s counters into this one (same key: merging nodes)."""
        self.calls += other.calls
        for name, n in other.errors.items():
            self.errors[name] = self.errors.get(name, 0) + n
        self.fallbacks += other.fallbacks
        self.escalations += other.escalations
        self.queued += other.queued
        self.queue_wait_s += other.queue_wait_s
        self.queue_timeouts += other.queue_timeouts
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost += other.cost
        self.latency_sum_s += other.latency_sum_s
        self.latency_count += other.latency_count
        if len(self.latency_buckets) < len(other.latency_buckets):
            self.latency_buckets += [0] * (len(other.latency_buckets) - len(self.latency_buckets))
        for i, n in enumerate(other.latency_buckets):
            self.latency_buckets[i] += n


class Accounting:
    """The scheduler's counters; ``snapshot()`` is what a node reports in its status."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        self._rows: dict[tuple[str, str, str], ModelStats] = {}

    def _row(self, agent: str, tier: str, model: str) -> ModelStats:
        row = self._rows.get((agent, tier, model))
        if row is None:
            row = ModelStats(agent=agent, tier=tier, model=model,
                             latency_buckets=[0] * (len(LATENCY_BUCKETS_S) + 1))  # fmt: skip
            self._rows[(agent, tier, model)] = row
        return row

    def cost_of(self, model: str, input_tokens: int, output_tokens: int) -> Decimal:
        """Exact cost of one call (0 for a model without a price)."""
        price = self._prices.get(model)
        if price is None:
            return Decimal(0)
        return (input_tokens * price.input + output_tokens * price.output).scaleb(-6)

    def answered(
        self, agent: str, tier: str, model: str, usage: tuple[int, int], latency_s: float
    ) -> None:
        """Count one answered call: tokens ``(input, output)``, cost, latency."""
        row = self._row(agent, tier, model)
        row.calls += 1
        row.input_tokens += usage[0]
        row.output_tokens += usage[1]
        row.cost += self.cost_of(model, usage[0], usage[1])
        row.latency_sum_s += latency_s
        row.latency_count += 1
        row.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1

    def failed(self, agent: str, tier: str, model: str, error: str) -> None:
        """Count one failed attempt, by error class name."""
        row = self._row(agent, tier, model)
        row.errors[error] = row.errors.get(error, 0) + 1

    def fell_back(self, agent: str, tier: str, model: str) -> None:
        """Count a call that moved on from this (failed) model to another one."""
        self._row(agent, tier, model).fallbacks += 1

    def waited(self, agent: str, tier: str, model: str, seconds: float) -> None:
        """Count a call that queued ``seconds`` for a slot, then got one for ``model``."""
        row = self._row(agent, tier, model)
        row.queued += 1
        row.queue_wait_s += seconds

    def gave_up_waiting(self, agent: str, tier: str, model: str) -> None:
        self._row(agent, tier, model).queue_timeouts += 1

    def escalated(self, agent: str, tier: str, model: str) -> None:
        self._row(agent, tier, model).escalations += 1

    def get(self, agent: str, tier: str, model: str) -> ModelStats:
        """The counters of one key (zeros if nothing was counted)."""
        row = self._rows.get((agent, tier, model))
        return row.copy() if row is not None else ModelStats(agent=agent, tier=tier, model=model)

    def snapshot(self) -> list[ModelStats]:
        return [self._rows[k].copy() for k in sorted(self._rows)]


def merge_stats(groups: Iterable[Iterable[ModelStats]]) -> list[ModelStats]:
    """Sum several nodes' stats key by key (sorted by key)."""
    merged: dict[tuple[str, str, str], ModelStats] = {}
    for stats in groups:
        for s in stats:
            row = merged.get(s.key)
            if row is None:
                merged[s.key] = s.copy()
            else:
                row.add(s)
    return [merged[k] for k in sorted(merged)]


def _labels(s: ModelStats) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return f'agent="{esc(s.agent)}",tier="{esc(s.tier)}",model="{esc(s.model)}"'


def models_prometheus(stats: Iterable[ModelStats]) -> str:
    """The ``agentrt_model_*`` families in the Prometheus text format."""
    rows = list(stats)
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    family("agentrt_model_calls_total", "counter", "Model calls answered, per agent type, tier "
           "and model.")  # fmt: skip
    out += [f"agentrt_model_calls_total{{{_labels(s)}}} {s.calls}" for s in rows]
    family("agentrt_model_errors_total", "counter", "Failed model call attempts, by error class.")
    for s in rows:
        for error, n in sorted(s.errors.items()):
            out.append(f'agentrt_model_errors_total{{{_labels(s)},error="{error}"}} {n}')
    family("agentrt_model_fallbacks_total", "counter", "Failures that moved a call to another "
           "model.")  # fmt: skip
    out += [f"agentrt_model_fallbacks_total{{{_labels(s)}}} {s.fallbacks}" for s in rows]
    family("agentrt_model_escalations_total", "counter", "Actors moved up from this tier.")
    out += [f"agentrt_model_escalations_total{{{_labels(s)}}} {s.escalations}" for s in rows]
    family("agentrt_model_queued_total", "counter", "Calls that waited for a backend slot.")
    out += [f"agentrt_model_queued_total{{{_labels(s)}}} {s.queued}" for s in rows]
    family("agentrt_model_queue_wait_seconds_total", "counter", "Time calls waited for a slot.")
    out += [f"agentrt_model_queue_wait_seconds_total{{{_labels(s)}}} {s.queue_wait_s!r}"
            for s in rows]  # fmt: skip
    family("agentrt_model_queue_timeouts_total", "counter", "Calls that gave up waiting for a "
           "slot (queue_timeout_s).")  # fmt: skip
    out += [f"agentrt_model_queue_timeouts_total{{{_labels(s)}}} {s.queue_timeouts}" for s in rows]
    family("agentrt_model_tokens_total", "counter", "Tokens reported by the provider.")
    for s in rows:
        out.append(f'agentrt_model_tokens_total{{{_labels(s)},direction="input"}} '
                   f"{s.input_tokens}")  # fmt: skip
        out.append(f'agentrt_model_tokens_total{{{_labels(s)},direction="output"}} '
                   f"{s.output_tokens}")  # fmt: skip
    family("agentrt_model_cost_total", "counter", "Exact cost, in the unit of [models.prices].")
    out += [f"agentrt_model_cost_total{{{_labels(s)}}} {_plain(s.cost)}" for s in rows]
    family("agentrt_model_latency_seconds", "histogram", "Duration of answered model calls.")
    for s in rows:
        cumulative = 0
        for bound, n in zip((*LATENCY_BUCKETS_S, None), s.latency_buckets, strict=False):
            cumulative += n
            le = "+Inf" if bound is None else repr(bound)
            out.append(f'agentrt_model_latency_seconds_bucket{{{_labels(s)},le="{le}"}} '
                       f"{cumulative}")  # fmt: skip
        out.append(f"agentrt_model_latency_seconds_sum{{{_labels(s)}}} {s.latency_sum_s!r}")
        out.append(f"agentrt_model_latency_seconds_count{{{_labels(s)}}} {s.latency_count}")
    return "\n".join(out) + "\n"


def models_table(stats: Iterable[ModelStats]) -> Table | None:
    """The ``agentrt status`` models table: a row per (agent type, tier, model); None if no
    model was called."""
    from rich import box
    from rich.table import Table

    rows = list(stats)
    if not rows:
        return None
    table = Table(title="models", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1))  # fmt: skip
    columns = ("agent", "tier", "model", "calls", "err", "fallb", "escal", "tok in", "tok out",
               "cost", "p50", "p95")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("agent", "tier", "model") else "right")
    for s in rows:
        errors = sum(s.errors.values())
        table.add_row(
            s.agent, s.tier, s.model, str(s.calls), str(errors), str(s.fallbacks),
            str(s.escalations), str(s.input_tokens), str(s.output_tokens), _plain(s.cost),
            _seconds(s.quantile(0.5)) if s.calls else "-",
            _seconds(s.quantile(0.95)) if s.calls else "-",
        )  # fmt: skip
    return table


def _plain(value: Decimal) -> str:
    """``0.0012500`` -> ``0.00125``, never ``1.25E-3``."""
    return f"{value.normalize():f}"


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"
