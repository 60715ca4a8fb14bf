"""Repair benchmark: what ``repair()`` costs per tool call, on the paths a call can take.

Four calls to one realistic search-tool schema (nested object, array, ``$ref``, defaults):

1. **valid**: strict JSON that needs nothing: the fast path (``msgspec.json.decode``, then a
   schema walk that finds nothing to change).
2. **fenced**: the same JSON inside a `````json`` fence with a sentence before it.
3. **syntax**: single quotes and a trailing comma, so json-repair (pure Python) parses it.
4. **coercion**: strict JSON whose values are all strings: integers, a number, a boolean, a scalar
   that must become an array, a double-encoded object, and two missing defaults.

Each case is timed two ways: ``repair(text, schema, tool=...)``, which reads the schema on every
call, and ``Repairer(schema).repair(text, tool=...)`` with the repairer built once, as the gate
should keep it per tool. Each call is timed on its own (``perf_counter_ns``, about 0.1 us of
overhead) after a warm-up; the script prints p50 and p99 in microseconds. Beside them, the same
run times a bare ``msgspec.json.decode`` of the valid text: absolute figures on shared machines
move by 10-30% between runs, the ratio to that baseline much less. Before timing, each case is
checked to take the path it is named for (its repair rules), so a change in behaviour cannot pass
as a speed-up.

Usage::

    .venv/bin/python bench/repair.py            # a few seconds
    .venv/bin/python bench/repair.py --quick    # under a second, smaller samples
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from agentrt._repair import Repairer, repair

SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string"},
        "limit": {"type": "integer", "default": 10},
        "tags": {"type": "array", "items": {"type": "string"}},
        "case_sensitive": {"type": "boolean", "default": False},
        "window": {"$ref": "#/$defs/Window"},
        "filter": {"anyOf": [{"$ref": "#/$defs/Filter"}, {"type": "null"}]},
        "offset": {"type": "integer", "default": 0},
    },
    "required": ["query"],
    "$defs": {
        "Window": {
            "type": "object",
            "properties": {"days": {"type": "integer"}, "ratio": {"type": "number"}},
        },
        "Filter": {
            "type": "object",
            "properties": {"field": {"type": "string"}, "min": {"type": "integer"}},
        },
    },
}

_VALID = {
    "query": "error budget burn",
    "limit": 5,
    "tags": ["ops", "sre"],
    "case_sensitive": False,
    "window": {"days": 7, "ratio": 0.5},
    "filter": {"field": "service", "min": 1},
    "offset": 0,
}
_VALID_TEXT = json.dumps(_VALID)
_SYNTAX_TEXT = (
    "{'query': 'error budget burn', 'limit': 5, 'tags': ['ops', 'sre',], 'case_sensitive': False,"
    " 'window': {'days': 7, 'ratio': 0.5}, 'filter': {'field': 'service', 'min': 1}, 'offset': 0,}"
)
_COERCION_TEXT = json.dumps(
    {
        "query": "error budget burn",
        "limit": "5",
        "tags": "ops",
        "window": {"days": "7", "ratio": "0.5"},
        "filter": json.dumps({"field": "service", "min": "1"}),
    }
)

# name -> (raw text, the repair rules that text must trigger)
CASES: dict[str, tuple[str, list[str]]] = {
    "valid": (_VALID_TEXT, []),
    "fenced": (f"Here is the call:\n```json\n{_VALID_TEXT}\n```", ["extract_from_fence"]),
    "syntax": (_SYNTAX_TEXT, ["fix_syntax"] * 3),
    "coercion": (
        _COERCION_TEXT,
        [
            "coerce_integer",
            "wrap_in_array",
            "coerce_integer",
            "coerce_number",
            "parse_embedded_json",
            "coerce_integer",
            "fill_default",
            "fill_default",
        ],
    ),
}


def _check(name: str, text: str, rules: list[str]) -> None:
    result = repair(text, SCHEMA, tool="search")
    got = [s.rule for s in result.steps]
    if got != rules:
        sys.exit(f"case {name!r} took rules {got}, expected {rules}: the benchmark is stale")


def _timings_ns(call: Callable[[], object], warmup: int, n: int) -> list[int]:
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        t0 = clock()
        call()
        out.append(clock() - t0)
    return sorted(out)


def _pct_us(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples")
    parser.add_argument("-n", type=int, default=0, help="timed calls per case")
    args = parser.parse_args()
    n = args.n or (2_000 if args.quick else 20_000)
    warmup = n // 10

    for name, (text, rules) in CASES.items():
        _check(name, text, rules)

    print(f"python {platform.python_version()} on {platform.machine()}, {n} calls per case")
    base = _timings_ns(lambda: msgspec.json.decode(_VALID_TEXT), warmup, n)
    base_p50 = _pct_us(base, 0.5)
    print(f"{'case':<20} {'p50 us':>9} {'p99 us':>9} {'mean us':>9} {'x baseline':>11}  steps")
    _row("baseline (decode)", base, base_p50, "bare msgspec.json.decode(valid)")
    repairer = Repairer(SCHEMA)
    for name, (text, rules) in CASES.items():
        once = _timings_ns(functools.partial(repairer.repair, text, tool="search"), warmup, n)
        each = _timings_ns(functools.partial(repair, text, SCHEMA, tool="search"), warmup, n)
        _row(f"{name} Repairer", once, base_p50, str(len(rules)))
        _row(f"{name} repair()", each, base_p50, str(len(rules)))


def _row(label: str, times: list[int], base_p50: float, note: str) -> None:
    p50 = _pct_us(times, 0.5)
    print(
        f"{label:<20} {p50:>9.1f} {_pct_us(times, 0.99):>9.1f} "
        f"{statistics.fmean(times) / 1000:>9.1f} {p50 / base_p50:>11.1f}  {note}"
    )


if __name__ == "__main__":
    main()
