"""Tool results cached cluster-wide, and rules that skip a call: ``[tools."<name-or-glob>"]``.

Results of tools declared pure (``ToolSpec.pure``) that a rule gives a TTL are kept in the
JetStream KV bucket
``agentrt_cache_<cluster>`` under ``<tool>.<sha256 of the canonical JSON of the validated
arguments>`` (sorted keys, msgspec's one encoding), so the same call from any node is answered
by one direct get instead of running the tool again.

Trust: nothing is believed because of where it came from.

- Only the node that ran the tool writes its entry, after the result passed its output gate;
  the broker lets a node write entries only for the tools it hosts (``nats_permissions``).
- A reader validates a cached value against the tool's output schema again; a value that
  fails (or does not decode) is a miss, counted ``poisoned`` and logged, never a result. (A
  tool without an output schema has only the broker's write permissions to protect it.)
- Age comes from the server: an entry's age is the ``Nats-Time-Stamp`` JetStream stamped when
  it stored it, which the writer cannot choose, against the *reader's* TTL for the tool. (The
  first design stored an expiry in the value; a writer could then make an entry live forever.)
  The stream's ``max_age`` is the longest TTL of the rules, so old entries are purged too.

Rules come from ``agentrt.toml``: ``cache_ttl_s`` (0 = never cache; only for pure tools) and
``skip = true`` with ``value`` (the call is not made; ``value`` is the result). The most
specific rule wins: an exact name, else the longest matching glob.

Caching is opt-in: ``pure`` says a tool *may* be cached, a rule (``[tools."*"] cache_ttl_s =
600`` for every pure tool) says for how long. Why not on by default: code that counts a pure
tool's executions (the gate benchmark, tests, the transform tools' audit) would silently start
measuring cache hits, and a cluster without a rule then needs no bucket at all.

Without JetStream the cache switches itself off with one warning; calls still work, and the
node tries again after each reconnection (``serve``).
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec
import trio

from ._bus import Transport
from ._errors import (
    AgentUnavailable,
    BusError,
    ConfigError,
    DeliveryError,
    PermissionViolation,
)
from ._kv import KvBucket
from ._tools import Tool, ToolRegistry

__all__ = [
    "DEFAULT_TTL_S",
    "MISS",
    "CacheCount",
    "CacheMetrics",
    "CacheOutcome",
    "ToolCache",
    "ToolRule",
    "ToolRules",
    "cache_key",
    "check_tool_rules",
]

log = logging.getLogger("agentrt.cache")

DEFAULT_TTL_S: Final = 0.0
"""TTL of a pure tool's results when no rule sets ``cache_ttl_s``: not cached (opt-in)."""

_LOOKUP_TIMEOUT_S = 1.0  # a cache that does not answer is a miss, not a slow call
_STORE_TIMEOUT_S = 1.0
_PATTERN_RE = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+\Z")


class _Miss(enum.Enum):
    MISS = "miss"


MISS: Final = _Miss.MISS
"""What ``ToolCache.lookup`` returns when the cache does not answer (a cached ``None`` is a hit)."""


class ToolRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[tools."<name-or-glob>"]`` in agentrt.toml: how calls to matching tools are served.

    Attributes:
        cache_ttl_s: how long a pure tool's result is served from the cache (0 = never);
            unset means ``DEFAULT_TTL_S`` (not cached). Impure tools are never cached, even
            when a glob with a TTL matches them.
        skip: do not call the tool at all; ``value`` is the result.
        value: the result of a skipped call (any TOML value; omitted means ``null``).
    """

    cache_ttl_s: float | None = None
    skip: bool = False
    value: Any = msgspec.UNSET

    @property
    def result(self) -> Any:
        """The value a skipped call returns."""
        return None if self.value is msgspec.UNSET else self.value


class ToolRules:
    """The rules of one cluster, matched to tool names (most specific wins, memoised)."""

    def __init__(self, rules: Mapping[str, ToolRule] | None = None) -> None:
        self.rules: dict[str, ToolRule] = dict(rules or {})
        # Globs by specificity: longest first, then file order (dicts keep it).
        self._globs = sorted(
            (p for p in self.rules if any(c in p for c in "*?[")), key=len, reverse=True
        )
        self._memo: dict[str, tuple[str, ToolRule] | None] = {}

    def match(self, name: str) -> tuple[str, ToolRule] | None:
        """(pattern, rule) deciding for tool ``name``, or None if no rule matches."""
        if name in self._memo:
            return self._memo[name]
        found: tuple[str, ToolRule] | None = None
        if name in self.rules:
            found = (name, self.rules[name])
        else:
            for pattern in self._globs:
                if fnmatch.fnmatchcase(name, pattern):
                    found = (pattern, self.rules[pattern])
                    break
        self._memo[name] = found
        return found

    def skip_rule(self, name: str) -> ToolRule | None:
        matched = self.match(name)
        return matched[1] if matched is not None and matched[1].skip else None

    def ttl_s(self, tool: Tool) -> float:
        """How long results of ``tool`` are served from the cache (0: not cached at all)."""
        if not tool.spec.pure:
            return 0.0
        matched = self.match(tool.name)
        if matched is None or matched[1].cache_ttl_s is None:
            return DEFAULT_TTL_S
        return matched[1].cache_ttl_s if not matched[1].skip else 0.0

    @property
    def max_ttl_s(self) -> float:
        """The longest TTL any rule allows: the bucket purges entries older than that (0: no
        rule caches anything, and no bucket is needed)."""
        ttls = [r.cache_ttl_s for r in self.rules.values() if r.cache_ttl_s is not None]
        return max([DEFAULT_TTL_S, *ttls])


def check_tool_rules(rules: Mapping[str, ToolRule], known: Mapping[str, Tool], shown: str) -> None:
    """Check ``[tools.*]`` against each other and against the tools whose specs are known.

    Raises:
        ConfigError: a pattern, a TTL or a skip value is wrong; ``key`` says which.
    """
    table = ToolRules(rules)
    for pattern, rule in rules.items():
        where = f"$.tools['{pattern}']"
        if not _PATTERN_RE.match(pattern):
            raise ConfigError(
                shown, where, f"{pattern!r} is not a tool name or glob: use letters, digits, "
                "'_', '-', '.' and the wildcards '*', '?', '[...]'",
            )  # fmt: skip
        ttl = rule.cache_ttl_s
        if ttl is not None and not (math.isfinite(ttl) and ttl >= 0):
            raise ConfigError(
                shown, f"{where}.cache_ttl_s", "must be a number of seconds >= 0 (0 = no cache)"
            )
        if rule.skip and ttl is not None:
            raise ConfigError(
                shown, f"{where}.cache_ttl_s",
                "a skipped tool is never called, so nothing is cached; remove cache_ttl_s "
                "or skip",
            )  # fmt: skip
        if not rule.skip and rule.value is not msgspec.UNSET:
            raise ConfigError(
                shown, f"{where}.value",
                "`value` is the result of a skipped call; add `skip = true` or remove it",
            )  # fmt: skip
        exact = known.get(pattern)
        if exact is not None and ttl and not exact.spec.pure:
            raise ConfigError(
                shown, f"{where}.cache_ttl_s",
                f"tool {pattern!r} is not declared pure, so its results are never cached; "
                "remove cache_ttl_s, or declare it pure (@agentrt.tool(pure=True)) if the "
                "same arguments always give the same result",
            )  # fmt: skip
    for name, t in sorted(known.items()):
        matched = table.match(name)
        if matched is None or not matched[1].skip or t.output is None:
            continue
        pattern, rule = matched
        if not t.output.is_valid(rule.result):
            v = t.output.violations(rule.result)[0]
            raise ConfigError(
                shown, f"$.tools['{pattern}'].value",
                f"the skip value for tool {name!r} breaks its output schema at "
                f"{v.pointer or '/'} ({v.keyword}: expected {v.expected}, got {v.got}); "
                "declare a value the tool could have returned",
            )  # fmt: skip


class CacheOutcome(enum.StrEnum):
    """What happened to a call at the cache (one count per call and node).

    ``miss`` counts every lookup that did not answer, so hit/(hit+miss) is the hit ratio;
    ``poisoned`` counts the misses whose entry failed validation (a subset of ``miss``).
    """

    HIT = "hit"
    MISS = "miss"
    STORE = "store"  # counted by the node that ran the tool and wrote the entry
    SKIP = "skip"
    POISONED = "poisoned"


class CacheCount(msgspec.Struct, frozen=True, kw_only=True):
    """One counter of the cache: calls of ``tool`` that ended in ``outcome`` on one node."""

    tool: str
    outcome: str
    count: int


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class CacheMetrics:
    """Counters per (tool, outcome); ``prometheus()`` renders the text format."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, CacheOutcome]] = Counter()

    def count(self, tool: str, outcome: CacheOutcome, n: int = 1) -> None:
        self._counts[(tool, outcome)] += n

    def get(self, tool: str, outcome: CacheOutcome) -> int:
        return self._counts[(tool, outcome)]

    def snapshot(self) -> list[CacheCount]:
        return [
            CacheCount(tool=t, outcome=o.value, count=n)
            for (t, o), n in sorted(self._counts.items())
        ]

    def prometheus(self) -> str:
        lines = [
            "# HELP agentrt_tool_cache_total Tool calls at the result cache, by outcome.",
            "# TYPE agentrt_tool_cache_total counter",
        ]
        for (tool, outcome), n in sorted(self._counts.items()):
            lines.append(
                f'agentrt_tool_cache_total{{tool="{_label(tool)}",outcome="{outcome.value}"}} {n}'
            )
        return "\n".join(lines) + "\n"


_canonical = msgspec.json.Encoder(order="sorted")


def cache_key(tool: str, args: Any) -> str:
    """``<tool>.<sha256 hex>`` of the canonical JSON of ``args`` (sorted keys, one encoding).

    The hash is always exactly one subject token, so the broker can allow a node
    ``$KV.<bucket>.<tool>.*`` and nothing of another tool.
    """
    return f"{tool}.{hashlib.sha256(_canonical.encode(args)).hexdigest()}"


class ToolCache:
    """One node's view of the cluster's result cache, and the skip rules.

    Args:
        bus: the node's connection.
        cluster: the cluster name (the bucket is ``agentrt_cache_<cluster>``).
        registry: where tool specs (``pure``, output schema) are looked up.
        rules: ``[tools."<name-or-glob>"]`` from agentrt.toml.

    ``clock`` (wall-clock seconds, ``time.time`` by default) is compared with the server's
    timestamps to age entries; tests replace it to expire entries without waiting.
    """

    def __init__(
        self, bus: Transport, cluster: str, registry: ToolRegistry,
        rules: Mapping[str, ToolRule] | None = None,
    ) -> None:  # fmt: skip
        self.rules = ToolRules(rules)
        self.metrics = CacheMetrics()
        self._bus = bus
        self.clock: Callable[[], float] = time.time
        self._registry = registry
        self._kv = KvBucket(bus, f"agentrt_cache_{cluster}", max_age_s=self.rules.max_ttl_s)
        self.bucket = self._kv.bucket
        self.enabled = False
        self._store_refused: set[str] = set()
        self._warned_off = False
        self._enabled_event = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the bucket; while caching is off (the server had no JetStream), try again
        after every reconnection, as the tool bucket does: a node started against a server
        without JetStream starts caching once it reconnects to one that has it.

        ``task_status.started()`` comes after the first attempt; runs until cancelled.
        """
        await self.open()
        task_status.started()
        if self.rules.max_ttl_s <= 0:
            return  # no rule caches anything: nothing to open, ever
        while True:
            await self._bus.wait_reconnected()
            if not self.enabled and await self.open():
                self._warned_off = False  # a later switch-off is news again
                log.info("tool results are cached again: the cache bucket %s is available "
                         "after reconnecting", self.bucket)  # fmt: skip

    async def wait_enabled(self) -> None:
        """Wait until caching is on (the bucket exists), e.g. after a reconnection; never
        returns on a node where no rule gives a TTL (bound it with a cancel scope)."""
        await self._enabled_event.wait()

    async def open(self) -> bool:
        """Make sure the bucket exists; without it (no JetStream, refused), switch caching
        off with one warning: calls then always run. No rule with a TTL: nothing to open."""
        if self.rules.max_ttl_s <= 0:
            self.enabled = False
            return False
        try:
            self.enabled = await self._kv.ensure()
        except BusError as exc:  # PermissionViolation included: the node still works
            self._switch_off(f"the cache bucket could not be made ({exc})")
            return False
        if not self.enabled:
            self._switch_off("JetStream is not available on this NATS server")
        else:
            self._enabled_event.set()
        return self.enabled

    def _switch_off(self, why: str) -> None:
        self.enabled = False
        if self._enabled_event.is_set():
            self._enabled_event = trio.Event()
        if not self._warned_off:
            self._warned_off = True
            log.warning(
                "tool results are not cached: %s; calls run every time (enable JetStream, "
                "or regenerate the node's NATS permissions, to share results)",
                why,
            )

    def skip_rule(self, name: str) -> ToolRule | None:
        """The rule that skips calls to ``name`` (counted as ``skip``), or None."""
        rule = self.rules.skip_rule(name)
        if rule is not None:
            self.metrics.count(name, CacheOutcome.SKIP)
        return rule

    async def lookup(self, name: str, args: dict[str, Any]) -> Any:
        """The cached result of ``name(args)``, or ``MISS``: a pure tool, a live entry, a
        value that passes the output schema. Never raises for a cache problem: it is a miss.
        """
        t = self._registry.get(name)
        if not self.enabled or t is None:
            return MISS
        ttl = self.rules.ttl_s(t)
        if ttl <= 0:
            return MISS
        key = cache_key(name, args)
        entry = None
        with trio.move_on_after(_LOOKUP_TIMEOUT_S) as scope:
            try:
                entry = await self._kv.get(key)
            except PermissionViolation as exc:
                self._switch_off(f"this node may not read the cache bucket ({exc})")
                return MISS
            except AgentUnavailable:
                # The stream is gone (a server restarted without its store): make it again.
                await self.open()
            except (BusError, trio.TooSlowError) as exc:
                log.warning("cache lookup of %s failed, calling the tool: %s", name, exc)
        if scope.cancelled_caught:
            log.warning("cache lookup of %s took over %ss, calling the tool", name,
                        _LOOKUP_TIMEOUT_S)  # fmt: skip
        if entry is None or not entry.value:
            self.metrics.count(name, CacheOutcome.MISS)
            return MISS
        if entry.stored_at + ttl <= self.clock():
            self.metrics.count(name, CacheOutcome.MISS)  # expired: the next store replaces it
            return MISS
        problem = ""
        value: Any = None
        try:
            value = msgspec.json.decode(entry.value)
        except msgspec.DecodeError as exc:
            problem = f"not JSON ({exc})"
        else:
            if math.isnan(entry.stored_at):
                problem = "no server timestamp"
            elif t.output is not None and not t.output.is_valid(value):
                v = t.output.violations(value)[0]
                problem = (f"breaks the output schema at {v.pointer or '/'} ({v.keyword}: "
                           f"expected {v.expected}, got {v.got})")  # fmt: skip
        if problem:
            self.metrics.count(name, CacheOutcome.POISONED)
            self.metrics.count(name, CacheOutcome.MISS)
            log.warning(
                "refused the cached result of %s under %s%s: %s; calling the tool instead",
                name, self._kv.prefix, key, problem,
            )  # fmt: skip
            return MISS
        self.metrics.count(name, CacheOutcome.HIT)
        return value

    async def store(self, name: str, args: dict[str, Any], result: Any) -> bool:
        """Write the result of a call this node ran (pure tools with a TTL only), if it passes
        the output schema. Never raises for a cache problem; returns whether it was stored.

        Callers should store before answering, so a caller that asks again right after its
        answer finds the entry (read-your-writes); the cost is one JetStream round trip on a
        miss, bounded by a short timeout.
        """
        t = self._registry.get(name)
        if not self.enabled or t is None or name in self._store_refused:
            return False
        if self.rules.ttl_s(t) <= 0 or (t.output is not None and not t.output.is_valid(result)):
            return False
        try:
            payload = msgspec.json.encode(result)
        except (TypeError, msgspec.EncodeError):
            return False
        key = cache_key(name, args)
        with trio.move_on_after(_STORE_TIMEOUT_S):
            try:
                try:
                    await self._kv.put(key, payload)
                except AgentUnavailable:
                    # The stream is gone (a server restarted without its store): make it
                    # again, once.
                    if not await self.open():
                        return False
                    await self._kv.put(key, payload)
            except PermissionViolation as exc:
                self._store_refused.add(name)
                log.warning("results of %s are not cached: %s", name, exc)
                return False
            except (BusError, DeliveryError, trio.TooSlowError) as exc:
                # DeliveryError: AgentUnavailable twice, or PayloadTooLarge (not cached).
                log.warning("could not cache a result of %s: %s", name, exc)
                return False
            self.metrics.count(name, CacheOutcome.STORE)
            return True
        log.warning("caching a result of %s took over %ss; not cached", name, _STORE_TIMEOUT_S)
        return False
