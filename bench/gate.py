"""Gate benchmark, validation part: what checking a tool call's arguments costs per call.

Every tool call is validated against its tool's JSON Schema before the tool runs
(``agentrt._schema``), so this cost is paid on every call. Five schemas:

1. **small**: 2 properties (a string and a bounded integer), ``additionalProperties: false``.
2. **medium**: 15 properties: nested objects, an array of objects, enums, patterns, formats
   (``date-time``, ``uuid``, ``email``), ``anyOf``, ``uniqueItems``.
3. **mcp fetch**, **mcp git_log**, **mcp convert_time**: the input schemas the MCP reference
   servers list (``mcp-server-fetch`` 2026.10.24, ``mcp-server-git`` / ``mcp-server-time``
   2026.10.19), copied verbatim from their ``tools/list`` so the script needs no server. The
   tests (``tests/mcp_schemas.py``) check the live ones.

For each schema, in the same run:

- ``ours is_valid``: ``CompiledSchema.is_valid`` on a valid instance: the gate's fast path;
- ``ours violations (valid)``: ``CompiledSchema.violations`` on the same valid instance;
- ``ours violations (invalid)``: the full report for an instance with several errors;
- ``jsonschema-rs bare``: the bare ``jsonschema_rs`` validator's ``is_valid``, to show what our
  wrapper adds;
- ``jsonschema is_valid`` / ``jsonschema iter_errors (invalid)``: python-jsonschema 4.x
  (``Draft202012Validator``, built once, with its format checker so formats are asserted as
  ours are): the baseline, in the same run.

Method: calls are timed in batches (``perf_counter_ns`` around a loop of N calls, N chosen so a
batch takes ~1 ms) because one sub-microsecond call is below the timer's resolution. "p50" is
the median over batches of the per-call time; "mean" is total time over total calls. The loop
itself costs ~0.03 us per call and is included. Rounds interleave schemas and methods
(``--rounds``, default 3) so a burst of load on this shared machine hits all of them. Before
timing, each case is checked: the valid instance is valid and the invalid one invalid for both
libraries, so a change in behaviour cannot pass as a speed-up.

Target: ours ``is_valid`` p50 <= 2 us per call for a typical tool schema. The script exits 0
whether it is met or missed: it measures, it does not test.

Usage::

    .venv/bin/python bench/gate.py            # ~15 s
    .venv/bin/python bench/gate.py --quick    # ~2 s, smaller samples, one round

Needs python-jsonschema (the ``test`` extra) for the baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import jsonschema_rs
from agentrt._schema import CompiledSchema, compile_schema

try:
    import jsonschema
except ImportError:  # pragma: no cover - the baseline is a test dependency
    sys.exit("bench/gate.py needs python-jsonschema for its baseline: pip install -e '.[test]'")

TARGET_P50_US = 2.0
TYPICAL = ("small", "mcp fetch", "mcp git_log", "mcp convert_time")  # what the target is about
BATCH_NS = 1_000_000  # aim for ~1 ms per timed batch

clock = time.perf_counter_ns

SMALL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "q": {"type": "string", "minLength": 1},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100},
    },
    "required": ["q"],
    "additionalProperties": False,
}

MEDIUM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 500},
        "mode": {"enum": ["exact", "fuzzy", "regex"]},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100},
        "offset": {"type": "integer", "minimum": 0},
        "sort": {
            "type": "object",
            "properties": {
                "field": {"enum": ["date", "score", "title"]},
                "order": {"enum": ["asc", "desc"]},
            },
            "required": ["field"],
            "additionalProperties": False,
        },
        "filters": {
            "type": "array",
            "maxItems": 10,
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
                    "op": {"enum": ["eq", "ne", "lt", "gt", "in"]},
                    "value": {"type": ["string", "number", "boolean", "array"]},
                },
                "required": ["field", "op", "value"],
                "additionalProperties": False,
            },
        },
        "tags": {
            "type": "array",
            "items": {"type": "string", "pattern": "^[a-z0-9-]{1,32}$"},
            "uniqueItems": True,
            "maxItems": 20,
        },
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "language": {"type": "string", "pattern": "^[a-z]{2}(-[A-Z]{2})?$"},
        "include_snippets": {"type": "boolean"},
        "snippet_length": {"type": "integer", "minimum": 10, "maximum": 1000},
        "user": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "email": {"type": "string", "format": "email"},
            },
            "required": ["id"],
        },
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
        "trace": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["query", "mode"],
    "additionalProperties": False,
}

MCP_FETCH: dict[str, Any] = {
    "properties": {
        "url": {
            "description": "URL to fetch",
            "format": "uri",
            "minLength": 1,
            "title": "Url",
            "type": "string",
        },
        "max_length": {
            "default": 5000,
            "description": "Maximum number of characters to return.",
            "maximum": 999999,
            "minimum": 1,
            "title": "Max Length",
            "type": "integer",
        },
        "start_index": {
            "default": 0,
            "description": "On return output starting at this character index, useful if a "
            "previous fetch was truncated and more context is required.",
            "minimum": 0,
            "title": "Start Index",
            "type": "integer",
        },
        "raw": {
            "default": False,
            "description": "Get the actual HTML content of the requested page, without "
            "simplification.",
            "title": "Raw",
            "type": "boolean",
        },
    },
    "required": ["url"],
    "type": "object",
    "title": "fetchArguments",
}

_TIMESTAMP_HELP = (
    "Accepts: ISO 8601 format (e.g., '2024-01-15T14:30:25'), relative dates (e.g., '2 weeks "
    "ago', 'yesterday'), or absolute dates (e.g., '2024-01-15', 'Jan 15 2024')"
)
MCP_GIT_LOG: dict[str, Any] = {
    "properties": {
        "repo_path": {"title": "Repo Path", "type": "string"},
        "max_count": {"default": 10, "title": "Max Count", "type": "integer"},
        "start_timestamp": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "default": None,
            "description": f"Start timestamp for filtering commits. {_TIMESTAMP_HELP}",
            "title": "Start Timestamp",
        },
        "end_timestamp": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "default": None,
            "description": f"End timestamp for filtering commits. {_TIMESTAMP_HELP}",
            "title": "End Timestamp",
        },
    },
    "required": ["repo_path"],
    "type": "object",
    "title": "logArguments",
}

MCP_CONVERT_TIME: dict[str, Any] = {
    "properties": {
        "source_timezone": {
            "description": "Source IANA timezone name (e.g., 'America/New_York', "
            "'Europe/London'). Use 'Etc/UTC' as local timezone if no source timezone provided "
            "by the user.",
            "title": "Source Timezone",
            "type": "string",
        },
        "time": {
            "description": "Time to convert in 24-hour format (HH:MM)",
            "title": "Time",
            "type": "string",
        },
        "target_timezone": {
            "description": "Target IANA timezone name (e.g., 'Asia/Tokyo', "
            "'America/San_Francisco'). Use 'Etc/UTC' as local timezone if no target timezone "
            "provided by the user.",
            "title": "Target Timezone",
            "type": "string",
        },
    },
    "required": ["source_timezone", "time", "target_timezone"],
    "type": "object",
    "title": "convert_timeArguments",
}

CASES: dict[str, tuple[dict[str, Any], object, object]] = {
    "small": (SMALL, {"q": "trio nursery", "limit": 10}, {"q": "", "limit": 0, "x": 1}),
    "medium": (
        MEDIUM,
        {
            "query": "structured concurrency",
            "mode": "fuzzy",
            "limit": 20,
            "offset": 40,
            "sort": {"field": "date", "order": "desc"},
            "filters": [
                {"field": "lang", "op": "eq", "value": "python"},
                {"field": "stars", "op": "gt", "value": 100},
            ],
            "tags": ["async", "trio", "nats"],
            "since": "2024-01-15T14:30:25Z",
            "language": "en-GB",
            "include_snippets": True,
            "snippet_length": 200,
            "user": {"id": "8c5f3a52-1c1e-4d7e-9a57-2b8f0f6b9f0e", "email": "a@example.com"},
            "timeout_s": 2.5,
            "trace": None,
        },
        {
            "query": "",
            "mode": "semantic",
            "limit": "20",
            "sort": {"order": "up"},
            "filters": [{"field": "Lang", "op": "eq"}],
            "tags": ["a", "a"],
            "since": "yesterday",
            "user": {"id": "nope"},
            "extra": 1,
        },
    ),
    "mcp fetch": (
        MCP_FETCH,
        {"url": "https://example.com/docs", "max_length": 10000, "raw": False},
        {"url": "example dot com", "max_length": 0, "start_index": -1},
    ),
    "mcp git_log": (
        MCP_GIT_LOG,
        {"repo_path": "/srv/repo", "max_count": 5, "start_timestamp": "2 weeks ago"},
        {"max_count": "5", "start_timestamp": 3},
    ),
    "mcp convert_time": (
        MCP_CONVERT_TIME,
        {"source_timezone": "Europe/London", "time": "14:30", "target_timezone": "Asia/Tokyo"},
        {"source_timezone": "Europe/London", "time": 1430},
    ),
}

METHODS = (
    "ours is_valid",
    "ours violations (valid)",
    "ours violations (invalid)",
    "jsonschema-rs bare is_valid",
    "jsonschema is_valid",
    "jsonschema iter_errors (invalid)",
)


@dataclass
class Samples:
    """Per-call times (ns) of every timed batch of one (schema, method)."""

    per_call_ns: list[float] = field(default_factory=list)
    total_ns: int = 0
    calls: int = 0

    def p50_us(self) -> float:
        return statistics.median(self.per_call_ns) / 1000

    def mean_us(self) -> float:
        return self.total_ns / self.calls / 1000


def _calls(
    ours: CompiledSchema,
    bare: jsonschema_rs.Validator,
    baseline: Any,
    valid: object,
    invalid: object,
) -> dict[str, Callable[[], object]]:
    return {
        "ours is_valid": lambda: ours.is_valid(valid),
        "ours violations (valid)": lambda: ours.violations(valid),
        "ours violations (invalid)": lambda: ours.violations(invalid),
        "jsonschema-rs bare is_valid": lambda: bare.is_valid(valid),
        "jsonschema is_valid": lambda: baseline.is_valid(valid),
        "jsonschema iter_errors (invalid)": lambda: list(baseline.iter_errors(invalid)),
    }


def _batch_size(call: Callable[[], object]) -> int:
    """How many calls make a ~1 ms batch (at least 1), judged on the fastest of 5 tries so a
    burst of load during calibration does not shrink the batches."""

    def run(n: int) -> int:
        t0 = clock()
        for _ in range(n):
            call()
        return clock() - t0

    n = 1
    while run(n) < BATCH_NS // 5 and n < 1 << 20:
        n *= 2
    fastest = min(run(n) for _ in range(5))
    return max(1, round(n * BATCH_NS / max(fastest, 1)))


def _time(call: Callable[[], object], batch: int, batches: int, into: Samples) -> None:
    for _ in range(batches):
        t0 = clock()
        for _ in range(batch):
            call()
        elapsed = clock() - t0
        into.per_call_ns.append(elapsed / batch)
        into.total_ns += elapsed
        into.calls += batch


def _check(name: str, ours: CompiledSchema, baseline: Any, valid: object, invalid: object) -> None:
    """Refuse to time a case that does not behave as named."""
    problems = []
    if not ours.is_valid(valid) or ours.violations(valid):
        problems.append(f"ours rejects the valid instance: {ours.violations(valid)}")
    if ours.is_valid(invalid) or not ours.violations(invalid):
        problems.append("ours accepts the invalid instance")
    if not baseline.is_valid(valid):
        problems.append(f"jsonschema rejects the valid instance: {baseline.iter_errors(valid)}")
    if baseline.is_valid(invalid):
        problems.append("jsonschema accepts the invalid instance")
    if problems:
        sys.exit(f"bench/gate.py: case {name!r} is broken: " + "; ".join(problems))


def _compile_us(schema: dict[str, Any], repeats: int) -> float:
    """p50 of compile_schema on a cache miss (a unique $comment makes each schema new)."""
    samples = []
    for i in range(repeats):
        fresh = {**schema, "$comment": f"bench {time.time_ns()} {i}"}
        t0 = clock()
        compile_schema(fresh, tool="bench")
        samples.append(clock() - t0)
    return statistics.median(samples) / 1000


def main(argv: Sequence[str] | None = None) -> None:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples, one round")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument(
        "--batches", type=int, help="timed ~1 ms batches per method per round (default 100)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    batches = args.batches or (15 if args.quick else 100)

    print(
        f"python {platform.python_version()}, jsonschema-rs {version('jsonschema-rs')}, "
        f"jsonschema {version('jsonschema')}, msgspec {version('msgspec')}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    setups: dict[str, dict[str, Callable[[], object]]] = {}
    sizes: dict[tuple[str, str], int] = {}
    compile_us: dict[str, float] = {}
    for name, (schema, valid, invalid) in CASES.items():
        ours = compile_schema(schema, tool=name)
        bare = jsonschema_rs.Draft202012Validator(
            schema,
            validate_formats=True,
            pattern_options=jsonschema_rs.RegexOptions(),
            offline=True,
        )
        baseline = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        _check(name, ours, baseline, valid, invalid)
        setups[name] = _calls(ours, bare, baseline, valid, invalid)
        for method, call in setups[name].items():
            sizes[name, method] = _batch_size(call)
        compile_us[name] = _compile_us(schema, 20 if args.quick else 200)

    samples = {key: Samples() for key in sizes}
    for _ in range(rounds):
        for name, calls in setups.items():
            for method, call in calls.items():
                _time(call, sizes[name, method], batches, samples[name, method])

    print(f"\n{rounds} round(s) x {batches} batches of ~1 ms per method; us per call\n")
    header = f"{'schema':<18}{'method':<34}{'p50':>9}{'mean':>9}{'calls':>11}"
    print(header)
    print("-" * len(header))
    for name in setups:
        for method in METHODS:
            s = samples[name, method]
            print(f"{name:<18}{method:<34}{s.p50_us():>9.3f}{s.mean_us():>9.3f}{s.calls:>11,}")
        print(f"{name:<18}{'(compile_schema, cache miss)':<34}{compile_us[name]:>9.1f}")
        print()

    print("ratios (p50): jsonschema / ours, and ours / bare jsonschema-rs\n")
    print(
        f"{'schema':<18}{'is_valid':>12}{'errors (invalid)':>18}"
        f"{'wrapper overhead':>18}{'ours is_valid p50':>19}"
    )
    for name in setups:

        def p50(method: str, name: str = name) -> float:
            return samples[name, method].p50_us()

        ours_p50 = p50("ours is_valid")
        verdict = "<= target" if ours_p50 <= TARGET_P50_US else "> target"
        print(
            f"{name:<18}"
            f"{p50('jsonschema is_valid') / ours_p50:>11.0f}x"
            f"{p50('jsonschema iter_errors (invalid)') / p50('ours violations (invalid)'):>17.0f}x"
            f"{ours_p50 / p50('jsonschema-rs bare is_valid'):>17.2f}x"
            f"{ours_p50:>12.3f} us {verdict}"
        )
    typical = max(samples[name, "ours is_valid"].p50_us() for name in TYPICAL)
    print(
        f"\ntarget: ours is_valid p50 <= {TARGET_P50_US} us per call for a typical tool schema "
        f"({', '.join(TYPICAL)}): worst {typical:.3f} us, "
        + ("met" if typical <= TARGET_P50_US else "MISSED")
    )
    heavy = samples["medium", "ours is_valid"].p50_us()
    bare = samples["medium", "jsonschema-rs bare is_valid"].p50_us()
    print(
        f"medium (15 properties, all filled, 3 formats, 3 patterns): {heavy:.3f} us "
        f"(bare jsonschema-rs {bare:.3f} us)"
    )


if __name__ == "__main__":
    main()
