"""Repair a model's tool call into the JSON value its schema describes, and record each change.

Why repair at all: models write tool calls as text, and even good models get it slightly wrong.
They wrap the JSON in a Markdown fence or in a sentence, leave a trailing comma, use Python's
quotes and literals, stop mid-object when they run out of tokens, or send ``"5"`` where the schema
says integer. Refusing such a call costs a retry: another round trip to the model, in seconds and
tokens, to fix something that can be fixed without guessing. So the gate repairs first and
validates after (``_schema.py``). Repair never decides whether a call is valid; the validator
does. Every change is returned as a `RepairStep`: the gate counts a call as "valid" when no step
was needed and "repaired" otherwise, and the log says what was assumed.

Three phases, cheapest first:

1. **Text to value.** Strict JSON first (``msgspec.json.decode``): the fast path, with no steps.
   Then extraction: the body of the first Markdown fence (```` ```json ````), then the first
   balanced ``{...}`` or ``[...]`` in the surrounding prose (the first one that is strict JSON,
   else the first one). If the text is still not strict JSON, its syntax is repaired by the
   `json-repair` library. A mapping (from a provider that returns parsed arguments) skips this
   phase.
2. **Schema-guided coercion.** The schema and the value are walked together, following local
   ``$ref`` (into ``$defs`` or anywhere in the schema), a one-branch ``allOf``, ``properties``,
   ``additionalProperties`` when it is a schema, ``prefixItems`` and ``items``. A value is only
   coerced where the schema declares a ``type`` that the value does not already have, so a
   ``"5"`` in a string field stays ``"5"``.
3. **Defaults.** A property missing from an object that is present, whose schema has a
   ``default``, gets a copy of it, walked in turn (so an object default gets its own defaults).

Why a library for the syntax: `json-repair` (package ``json_repair``) is a maintained parser built
for LLM output. It closes truncated strings, arrays and objects in the right order, handles quotes
of both kinds and quotes inside strings, comments, trailing and missing commas, unquoted keys and
Python literals. Regexes for these go wrong as soon as the same characters appear inside a
string, and truncation needs a real parser. It does not report everything it changed, so the
``fix_syntax`` steps are named by inspecting the input with a small string-aware tokenizer: the
repaired *value* is exact, the *list* of syntax problems is a close approximation.

The rules, a closed set (`RULES`); the pointer is into the repaired value, ``""`` is the root:

- ``extract_from_fence``: the JSON was taken from the first fenced block (a ``json``-labelled one
  if any); detail names the fence.
- ``extract_from_prose``: the JSON was cut out of surrounding text; detail counts what was dropped.
- ``fix_syntax``: json-repair fixed the syntax; one step per problem found: ``comments removed``,
  ``single quotes -> double quotes``, ``unquoted keys quoted``, ``python literals
  True/False/None -> true/false/null``, ``trailing comma removed``, ``truncated: appended <the
  closers>``; or ``other syntax repaired`` when none of these was recognised.
- ``coerce_integer``: a string holding a JSON integer, or a JSON number whose fraction is all zeros
  (``"5"``, ``"-3"``, ``"5.0"`` -> ``5``; not ``"5.5"``, ``"1e3"``, ``"007"``, ``"+5"``; spaces
  around are ignored).
- ``coerce_number``: a string holding a JSON number (``"2.5"`` -> ``2.5``, ``"5"`` -> ``5``,
  ``"1e3"`` -> ``1000.0``; not ``"NaN"``, ``"inf"``, nor a number that overflows to infinity).
- ``coerce_boolean``: ``"true"`` / ``"false"`` in any case -> ``True`` / ``False`` (not ``"1"``,
  ``"yes"``).
- ``coerce_null``: ``"null"`` in any case -> ``None``.
- ``wrap_in_array``: a scalar (not ``None``) where an array is wanted -> ``[scalar]``, only if the
  element, after its own coercion, has a type the item schema admits.
- ``parse_embedded_json``: a string holding strict JSON text of an object or array, where the
  schema wants that type (a double-encoded argument) -> the parsed value, then walked in turn.
- ``fill_default``: a missing property -> a copy of its schema's ``default``, then walked like
  a value sent (an object default gets its own properties' defaults).

The coercions are tried in that order (embedded JSON, integer, number, boolean, null, then
wrapping); the first that applies wins. Under ``anyOf`` / ``oneOf`` a value is left alone when
one branch already admits it or when several could; it is coerced only when exactly one branch's
declared type admits the coerced value. A branch without a ``type`` admits anything, so it
disables coercion there. Not followed: remote ``$ref`` and ``$anchor`` names,
``patternProperties``, ``if``/``then``/``else``, ``dependentSchemas``, ``allOf`` with several
branches; values under them are left to the validator.

`repair` is pure (its inputs are never mutated; changed containers are copied) and raises nothing
but `GateError` (stage ``"parse"``, when no JSON can be recovered from the text). It reads the
schema on every call; `Repairer` reads it once (``$ref`` resolved, types parsed) and is the one
to keep per tool: on an already valid call, reading the schema costs more than walking the value.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final, TypeAlias, TypeGuard
from urllib.parse import unquote

import json_repair
import msgspec

from ._errors import GateError, Violation

__all__ = ["RULES", "RepairStep", "Repaired", "Repairer", "repair"]

RULES: Final = (
    "extract_from_fence",
    "extract_from_prose",
    "fix_syntax",
    "coerce_integer",
    "coerce_number",
    "coerce_boolean",
    "coerce_null",
    "wrap_in_array",
    "fill_default",
    "parse_embedded_json",
)
"""Every `RepairStep.rule` there is; see the module docstring for what each one means."""


class RepairStep(msgspec.Struct, frozen=True, kw_only=True):
    """One change made to a tool call before validation.

    Attributes:
        rule: what kind of change, one of `RULES`.
        pointer: RFC 6901 JSON pointer into the repaired value (``/items/0/count``; ``""`` is the
            root, and is where every text step points).
        detail: what exactly, short (``"5" -> 5``, ``trailing comma removed``).
    """

    rule: str
    pointer: str
    detail: str


class Repaired(msgspec.Struct, frozen=True):
    """The result of `repair`.

    Attributes:
        value: the repaired value, ready for validation.
        steps: every change, in the order made; empty when the input needed none.
    """

    value: Any
    steps: tuple[RepairStep, ...]


def repair(
    raw: str | bytes | Mapping[str, Any], schema: Mapping[str, Any], *, tool: str
) -> Repaired:
    """Recover the JSON value of a tool call and coerce it towards ``schema``.

    Reads ``schema`` on each call; keep a `Repairer` per tool to read it once.

    Args:
        raw: the call's arguments: model text (``str`` or UTF-8 ``bytes``), or a mapping when
            the provider already parsed them (then no text repair is attempted).
        schema: the tool's JSON Schema (2020-12); it guides coercion and defaults only.
        tool: the tool's name, for the error.

    Returns:
        The repaired value and the steps taken. The value is not validated: a call can come out
        of here and still fail the schema.

    Raises:
        GateError: stage ``"parse"``, one violation at ``""`` with keyword ``json``, when no
            JSON value can be recovered from the text (empty, prose only, or nothing the schema
            could want).
    """
    return Repairer(schema).repair(raw, tool=tool)


class Repairer:
    """`repair` for one schema, read once: build one per tool and reuse it.

    The schema must not change afterwards (copy it instead), as with a compiled validator.
    """

    __slots__ = ("_root",)

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._root = _Compiler(schema).node(schema, 0)

    def repair(self, raw: str | bytes | Mapping[str, Any], *, tool: str) -> Repaired:
        """Same as `repair` with this repairer's schema; see there."""
        value, text_steps = _to_value(raw, self._root.types or _NO_TYPES, tool)
        value, value_steps = _walk(value, self._root, "", 0)
        return Repaired(value, (*text_steps, *value_steps))


# ---------------------------------------------------------------------------------------------
# Phase 1: text to value. `types` is what the root schema declares (it picks what to look for).


_NOT_JSON: Final[Any] = object()  # "this did not decode" / "no default"; never a JSON value
_NO_TYPES: Final[frozenset[str]] = frozenset()
_SNIPPET_CHARS: Final = 60
_MAX_SPANS: Final = 16  # candidate spans tried in prose before settling for the first one

_FENCE: Final = re.compile(r"```[ \t]*(json5?|jsonc)?[ \t]*\r?\n?(.*?)(?:```|\Z)", re.I | re.S)

# Tokens of JSON-ish text. Strings (closed or running to the end) and comments come first, so
# that brackets, commas and words inside them are never seen as syntax.
_TOKEN: Final = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<single>'(?:[^'\\]|\\.)*')
    | (?P<unclosed>"(?:[^"\\]|\\.)*\\?\Z|'(?:[^'\\]|\\.)*\\?\Z)
    | (?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z)|\#[^\n]*)
    | (?P<number>-?\d[\w.+-]*)
    | (?P<word>[A-Za-z_$][\w$]*)
    | (?P<punct>[{}\[\],:])
    """,
    re.VERBOSE | re.DOTALL,
)
_CLOSER: Final = {"{": "}", "[": "]"}
_PYTHON_LITERALS: Final = frozenset({"True", "False", "None"})

_COMMENTS: Final = "comments removed"
_SINGLE_QUOTES: Final = "single quotes -> double quotes"
_UNQUOTED_KEYS: Final = "unquoted keys quoted"
_PYTHON: Final = "python literals True/False/None -> true/false/null"
_TRAILING_COMMA: Final = "trailing comma removed"
_SYNTAX_ORDER: Final = (_COMMENTS, _SINGLE_QUOTES, _UNQUOTED_KEYS, _PYTHON, _TRAILING_COMMA)


def _to_value(
    raw: str | bytes | Mapping[str, Any], types: frozenset[str], tool: str
) -> tuple[Any, list[RepairStep]]:
    """Phase 1: the value the call holds, and the text steps that recovered it."""
    if isinstance(raw, Mapping):
        return (raw if isinstance(raw, dict) else dict(raw)), []
    if isinstance(raw, bytes | bytearray):
        value = _decode_strict(raw)
        if value is not _NOT_JSON:
            return value, []
        return _parse_text(bytes(raw).decode("utf-8", errors="replace"), types, tool)
    if isinstance(raw, str):
        return _parse_text(raw, types, tool)
    raise _parse_error(tool, types, f"a {type(raw).__name__}, not text")


def _parse_text(text: str, types: frozenset[str], tool: str) -> tuple[Any, list[RepairStep]]:
    """Strict JSON, else extract from a fence and/or prose, else repair the syntax."""
    value = _decode_strict(text)
    if value is not _NOT_JSON:
        return value, []
    steps: list[RepairStep] = []
    candidate = text
    for extract in (_extract_from_fence, _extract_from_prose):
        extracted = extract(candidate, types)
        if extracted is None:
            continue
        candidate, step = extracted
        steps.append(step)
        value = _decode_strict(candidate)
        if value is not _NOT_JSON:
            return value, steps
    value, fixes = _fix_syntax(candidate)
    if not _recovered(value, types):
        raise _parse_error(tool, types, _snippet(text))
    return value, steps + fixes


def _decode_strict(text: str | bytes | bytearray) -> Any:
    """The JSON value of ``text``, or `_NOT_JSON`."""
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, UnicodeEncodeError, RecursionError):
        # malformed; lone surrogates in a str; nesting deeper than msgspec decodes
        return _NOT_JSON


def _extract_from_fence(text: str, types: frozenset[str]) -> tuple[str, RepairStep] | None:
    """The body of the first ``json`` fence, else of the first fence holding a bracket."""
    fences = list(_FENCE.finditer(text))
    chosen = next((f for f in fences if f.group(1)), None)
    chosen = chosen or next((f for f in fences if "{" in f.group(2) or "[" in f.group(2)), None)
    if chosen is None:
        return None
    label = chosen.group(1) or ""
    return chosen.group(2), _step("extract_from_fence", "", f"```{label} fence")


def _extract_from_prose(text: str, types: frozenset[str]) -> tuple[str, RepairStep] | None:
    """The JSON span inside surrounding prose; None if there is no span or no prose."""
    span = _locate_json(text, types)
    if span is None:
        return None
    start, end = span
    before, after = len(text[:start].strip()), len(text[end:].strip())
    if not before and not after:
        return None
    detail = f"dropped {before} chars before, {after} after"
    return text[start:end], _step("extract_from_prose", "", detail)


def _locate_json(text: str, types: frozenset[str]) -> tuple[int, int] | None:
    """Where the JSON is: the first balanced span that is strict JSON, else the first span.

    An object schema looks for ``{`` (``[`` only if there is none), an array schema the other
    way round, and a schema without either type takes whichever comes first.
    """
    for openers in _opener_order(types):
        spans = _spans(text, openers)
        first = next(spans, None)
        if first is None:
            continue
        for start, end in itertools.islice(itertools.chain([first], spans), _MAX_SPANS):
            if _decode_strict(text[start:end]) is not _NOT_JSON:
                return start, end
        return first
    return None


def _opener_order(types: frozenset[str]) -> tuple[str, ...]:
    if "object" in types and "array" not in types:
        return ("{", "[")
    if "array" in types and "object" not in types:
        return ("[", "{")
    return ("{[",)


def _spans(text: str, openers: str) -> Iterator[tuple[int, int]]:
    """Successive non-nested spans starting at one of ``openers``; the last may run to the end."""
    pos = 0
    while (start := _find_any(text, openers, pos)) >= 0:
        end = _balanced_end(text, start)
        yield start, end
        pos = end


def _find_any(text: str, chars: str, pos: int) -> int:
    found = [i for i in (text.find(c, pos) for c in chars) if i >= 0]
    return min(found, default=-1)


def _balanced_end(text: str, start: int) -> int:
    """The index just past the bracket closing the one at ``start``, or ``len(text)``."""
    depth = 0
    for token in _TOKEN.finditer(text, start):
        if token.lastgroup != "punct":
            continue
        if token.group() in _CLOSER:
            depth += 1
        elif token.group() in "}]":
            depth -= 1
            if depth == 0:
                return token.end()
    return len(text)


def _fix_syntax(text: str) -> tuple[Any, list[RepairStep]]:
    """json-repair's reading of ``text`` (or `_NOT_JSON`), and one step per problem seen."""
    try:
        value = json_repair.repair_json(text, return_objects=True, skip_json_loads=True)
    except Exception:
        # The one seam to json-repair, a heuristic parser run on arbitrary text: whatever it
        # raises (it refuses deep nesting with ValueError) means "no JSON recovered", which
        # the caller turns into a GateError naming the text.
        return _NOT_JSON, []
    details = _syntax_problems(text) or ["other syntax repaired"]
    return value, [_step("fix_syntax", "", d) for d in details]


def _syntax_problems(text: str) -> list[str]:
    """Name what json-repair will have to fix in ``text``, in `_SYNTAX_ORDER`, truncation last."""
    tokens = [(m.lastgroup or "", m.group()) for m in _TOKEN.finditer(text)]
    syntax = [t for t in tokens if t[0] != "comment"]
    found = {_COMMENTS} if len(syntax) < len(tokens) else set()
    stack: list[str] = []
    for i, (kind, tok) in enumerate(syntax):
        before = syntax[i - 1][1] if i else ""
        after = syntax[i + 1][1] if i + 1 < len(syntax) else ""
        if kind == "single" or (kind == "unclosed" and tok.startswith("'")):
            found.add(_SINGLE_QUOTES)
        elif kind == "word" and tok in _PYTHON_LITERALS:
            found.add(_PYTHON)
        elif kind == "word" and after == ":" and before in ("{", ","):
            found.add(_UNQUOTED_KEYS)
        elif kind == "punct" and tok == "," and after in ("}", "]"):
            found.add(_TRAILING_COMMA)
        elif kind == "punct" and tok in _CLOSER:
            stack.append(_CLOSER[tok])
        elif kind == "punct" and stack and tok == stack[-1]:
            stack.pop()
    problems: list[str] = [p for p in _SYNTAX_ORDER if p in found]
    unclosed = syntax[-1][1][0] if syntax and syntax[-1][0] == "unclosed" else ""
    closers = unclosed + "".join(reversed(stack))
    if closers:
        problems.append(f"truncated: appended {closers}")
    return problems


def _recovered(value: Any, types: frozenset[str]) -> bool:
    """Whether json-repair found something: a container, or a scalar the schema declares.

    json-repair answers ``""`` when it finds nothing, so ``""`` never counts.
    """
    if isinstance(value, dict | list):
        return True
    if value is _NOT_JSON or value == "":
        return False
    return _has_type(value, types)


def _parse_error(tool: str, types: frozenset[str], got: str) -> GateError:
    expected = "a JSON array" if types == {"array"} else "a JSON object"
    violation = Violation(pointer="", keyword="json", expected=expected, got=got)
    return GateError(tool, "parse", [violation])


def _snippet(text: str) -> str:
    """The start of ``text`` as a JSON string, with how much was cut."""
    text = text.strip()
    if not text:
        return "empty input"
    shown = _show(text[:_SNIPPET_CHARS], limit=_SNIPPET_CHARS + 20)
    cut = len(text) - _SNIPPET_CHARS
    return f"{shown} (+{cut} chars)" if cut > 0 else shown


# ---------------------------------------------------------------------------------------------
# The schema, read once: only what coercion and defaults use


_MAX_DEPTH: Final = 64  # deeper values (and schemas) are left to the validator
_MAX_REF_HOPS: Final = 32  # a $ref chain longer than this is a cycle


class _Node:
    """One (sub)schema with its ``$ref`` merged in, reduced to what the walk reads."""

    __slots__ = (
        "default",
        "extra",
        "items",
        "prefix",
        "properties",
        "rejects_all",
        "types",
        "unions",
    )

    def __init__(self) -> None:
        self.rejects_all = False  # the schema `false`
        self.types: frozenset[str] | None = None  # None: no `type` keyword, anything goes
        self.default: Any = _NOT_JSON
        self.properties: dict[str, _Node] = {}
        self.extra: _Node | None = None  # additionalProperties, when it is a schema object
        self.prefix: list[_Node] = []
        self.items: _Node | None = None
        self.unions: list[list[_Node]] = []  # the branches of anyOf, of oneOf ("false" dropped)

    def admits(self, value: Any) -> bool:
        """Whether the declared type (if any) takes ``value``."""
        if self.rejects_all:
            return False
        return self.types is None or _has_type(value, self.types)

    def item(self, index: int) -> _Node | None:
        """The schema of element ``index``: ``prefixItems[index]``, else ``items``."""
        return self.prefix[index] if index < len(self.prefix) else self.items


class _Compiler:
    """Reads one schema into `_Node`s; each subschema once, so ``$ref`` cycles end."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self._root = root
        # keyed by id(); the schema object is kept so that its id cannot be reused meanwhile
        self._nodes: dict[int, tuple[object, _Node]] = {}

    def node(self, schema: object, depth: int) -> _Node:
        seen = self._nodes.get(id(schema))
        if seen is not None and seen[0] is schema:
            return seen[1]
        node = _Node()
        self._nodes[id(schema)] = (schema, node)
        resolved = self._resolve(schema)
        if resolved is None:
            node.rejects_all = True
        elif depth < _MAX_DEPTH:
            self._read(node, resolved, depth + 1)
        return node

    def _read(self, node: _Node, schema: Mapping[str, Any], depth: int) -> None:
        node.types = _declared_types(schema)
        node.default = schema.get("default", _NOT_JSON)
        properties = schema.get("properties")
        if _is_mapping(properties):
            node.properties = {
                k: self.node(v, depth) for k, v in properties.items() if isinstance(k, str)
            }
        extra = schema.get("additionalProperties")
        if _is_mapping(extra):  # `true` / `false` leave nothing to coerce
            node.extra = self.node(extra, depth)
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            node.prefix = [self.node(p, depth) for p in prefix]
        items = schema.get("items")
        if _is_mapping(items) or isinstance(items, bool):
            node.items = self.node(items, depth)
        for keyword in ("anyOf", "oneOf"):
            branches = schema.get(keyword)
            if isinstance(branches, list) and branches:
                compiled = [self.node(b, depth) for b in branches]
                node.unions.append([b for b in compiled if not b.rejects_all])

    def _resolve(self, schema: object) -> Mapping[str, Any] | None:
        """The schema with ``$ref`` and a one-branch ``allOf`` merged in; None for ``false``.

        Keywords beside a ``$ref`` win over the target's: enough for coercion, which reads
        only ``type``, ``properties``, ``items``, the unions and ``default``.
        """
        if schema is False:
            return None
        if not _is_mapping(schema):
            return {}  # `true`, or something the validator will refuse
        node: Mapping[str, Any] = schema
        for _ in range(_MAX_REF_HOPS):
            keyword, target = self._referenced(node)
            if not keyword:
                break
            if target is False:
                return None
            siblings = {k: v for k, v in node.items() if k != keyword}
            node = {**target, **siblings} if _is_mapping(target) else siblings
        return node

    def _referenced(self, node: Mapping[str, Any]) -> tuple[str, object]:
        """(keyword, target) for a local ``$ref`` or a one-branch ``allOf``; else ``("", None)``."""
        ref = node.get("$ref")
        if isinstance(ref, str):
            return "$ref", _lookup(self._root, ref)
        all_of = node.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1:
            return "allOf", all_of[0]
        return "", None


def _lookup(root: Mapping[str, Any], ref: str) -> object:
    """The schema a local ``$ref`` (``#/$defs/Item``) points at, or None if it points nowhere."""
    if not ref.startswith("#"):
        return None  # remote or $id-relative: not followed
    pointer = unquote(ref[1:])
    if not pointer:
        return root
    if not pointer.startswith("/"):
        return None  # an $anchor name: not followed
    target: object = root
    for part in pointer[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if _is_mapping(target) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return None
    return target


# ---------------------------------------------------------------------------------------------
# Phases 2 and 3: walk the value and the schema together; coerce, then fill defaults

_INTEGER: Final = re.compile(r"-?(?:0|[1-9]\d*)(?:\.0+)?")
_NUMBER: Final = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_SCALARS: Final = (str, int, float, bool)

# a value (never the input, mutated) and the steps that made it
_Walked: TypeAlias = tuple[Any, list[RepairStep]]


def _walk(value: Any, node: _Node, pointer: str, depth: int) -> _Walked:
    """``value`` repaired towards ``node``, and the steps that took."""
    if node.rejects_all or depth > _MAX_DEPTH:
        return value, []
    steps: list[RepairStep] = []
    if not node.admits(value):
        value, steps = _coerce(value, node, pointer, depth)
    if isinstance(value, list):
        value, inner = _walk_array(value, node, pointer, depth)
        steps = steps + inner
    elif _is_mapping(value):
        value, inner = _walk_object(value, node, pointer, depth)
        steps = steps + inner
    if node.unions:
        value, picked = _unions(value, node, pointer, depth)
        steps = steps + picked
    return value, steps


def _coerce(value: Any, node: _Node, pointer: str, depth: int) -> _Walked:
    """Coerce ``value``, which ``node`` does not admit, to a type ``node`` declares."""
    types = node.types or _NO_TYPES
    if isinstance(value, str):
        coerced = _coerce_string(value, types)
        if coerced is not None:
            rule, new = coerced
            return new, [_step(rule, pointer, _change(rule, value, new))]
    if "array" in types and isinstance(value, _SCALARS):
        return _wrap(value, node, pointer, depth)
    return value, []


def _wrap(value: Any, node: _Node, pointer: str, depth: int) -> _Walked:
    """``[value]``, if the element (coerced in turn) is admitted by the item schema."""
    item = node.item(0)
    element, steps = (value, []) if item is None else _walk(value, item, f"{pointer}/0", depth + 1)
    if item is not None and not item.admits(element):
        return value, []
    wrapped = _step("wrap_in_array", pointer, f"{_show(value)} -> {_show([value])}")
    return [element], [wrapped, *steps]


def _walk_object(value: Mapping[Any, Any], node: _Node, pointer: str, depth: int) -> _Walked:
    """Walk each property with its schema, then fill the defaults of missing ones."""
    changed: dict[Any, Any] = {}
    steps: list[RepairStep] = []
    if node.properties or node.extra:
        for key, item in value.items():
            sub = node.properties.get(key, node.extra) if isinstance(key, str) else None
            if sub is None:
                continue
            new, sub_steps = _walk(item, sub, f"{pointer}/{_escape(key)}", depth + 1)
            if sub_steps:
                changed[key] = new
                steps += sub_steps
    defaults, filled = _defaults(value, node, pointer, depth)
    if changed or defaults:
        value = {**value, **changed, **defaults}
    return value, steps + filled


def _defaults(
    value: Mapping[Any, Any], node: _Node, pointer: str, depth: int
) -> tuple[dict[str, Any], list[RepairStep]]:
    """Copies of the defaults of missing properties, in schema order, with their steps.

    A default is walked like a value sent, so an object default gets its own properties'
    defaults too, and a second repair finds nothing left to do.
    """
    defaults: dict[str, Any] = {}
    steps: list[RepairStep] = []
    for key, sub in node.properties.items():
        if sub.default is _NOT_JSON or key in value:
            continue
        where = f"{pointer}/{_escape(key)}"
        filled, inner = _walk(copy.deepcopy(sub.default), sub, where, depth + 1)
        defaults[key] = filled
        steps += [_step("fill_default", where, f"missing -> {_show(sub.default)}"), *inner]
    return defaults, steps


def _walk_array(value: list[Any], node: _Node, pointer: str, depth: int) -> _Walked:
    out: list[Any] | None = None
    steps: list[RepairStep] = []
    for i, item in enumerate(value):
        sub = node.item(i)
        if sub is None:
            break  # past prefixItems with no items: nothing more to walk
        new, sub_steps = _walk(item, sub, f"{pointer}/{i}", depth + 1)
        if sub_steps:
            out = out if out is not None else list(value)
            out[i] = new
            steps += sub_steps
    return (value if out is None else out), steps


def _unions(value: Any, node: _Node, pointer: str, depth: int) -> _Walked:
    steps: list[RepairStep] = []
    for branches in node.unions:
        value, picked = _pick_branch(value, branches, pointer, depth)
        steps += picked
    return value, steps


def _pick_branch(value: Any, branches: list[_Node], pointer: str, depth: int) -> _Walked:
    """Walk into the one branch that admits ``value``; else coerce if exactly one can."""
    admitting = [b for b in branches if b.admits(value)]
    if len(admitting) == 1:
        return _walk(value, admitting[0], pointer, depth + 1)
    if admitting:  # several branches take it as it is: nothing to choose
        return value, []
    tried = [(b, *_walk(value, b, pointer, depth + 1)) for b in branches]
    fits = [(new, steps) for b, new, steps in tried if steps and b.admits(new)]
    return fits[0] if len(fits) == 1 else (value, [])


def _coerce_string(text: str, types: frozenset[str]) -> tuple[str, Any] | None:
    """(rule, value) for the first coercion of ``text`` that gives a declared type."""
    if "object" in types or "array" in types:
        parsed = _embedded_json(text)
        if parsed is not _NOT_JSON and _has_type(parsed, types):
            return "parse_embedded_json", parsed
    s = text.strip()
    if "integer" in types and _INTEGER.fullmatch(s):
        return _maybe("coerce_integer", _to_int(s.partition(".")[0]))
    if "number" in types and (match := _NUMBER.fullmatch(s)):
        return _maybe("coerce_number", _to_number(s, exact=not any(match.groups())))
    if "boolean" in types and s.lower() in ("true", "false"):
        return "coerce_boolean", s.lower() == "true"
    if "null" in types and s.lower() == "null":
        return "coerce_null", None
    return None


def _maybe(rule: str, value: Any) -> tuple[str, Any] | None:
    return None if value is _NOT_JSON else (rule, value)


def _to_int(s: str) -> Any:
    try:
        return int(s)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return _NOT_JSON


def _to_number(s: str, *, exact: bool) -> Any:
    """An int for a plain integer, else a finite float; `_NOT_JSON` if it overflows."""
    if exact:
        return _to_int(s)
    number = float(s)
    return number if math.isfinite(number) else _NOT_JSON


def _embedded_json(text: str) -> Any:
    s = text.strip()
    return _decode_strict(s) if s[:1] in ("{", "[") else _NOT_JSON


def _change(rule: str, old: Any, new: Any) -> str:
    if rule == "parse_embedded_json":
        return f"JSON text -> {'object' if isinstance(new, dict) else 'array'}"
    return f"{_show(old)} -> {_show(new)}"


# ---------------------------------------------------------------------------------------------
# Small helpers


def _declared_types(schema: Mapping[str, Any]) -> frozenset[str] | None:
    """The names in ``type`` (string or list), or None when the schema declares none."""
    declared = schema.get("type")
    if isinstance(declared, str):
        return frozenset((declared,))
    if isinstance(declared, list) and all(isinstance(t, str) for t in declared):
        return frozenset(declared)
    return None


def _has_type(value: Any, types: frozenset[str]) -> bool:
    names = _JSON_TYPES.get(type(value))
    if names is None:  # a subclass (IntEnum, OrderedDict ...) or another Mapping: the long way
        return any(_is_type(value, t) for t in types)
    if type(value) is float and "integer" in types and value.is_integer():
        return True
    return not types.isdisjoint(names)


_JSON_TYPES: Final[Mapping[type, frozenset[str]]] = {
    str: frozenset({"string"}),
    bool: frozenset({"boolean"}),
    int: frozenset({"integer", "number"}),
    float: frozenset({"number"}),
    type(None): frozenset({"null"}),
    dict: frozenset({"object"}),
    list: frozenset({"array"}),
}


def _is_type(value: Any, name: str) -> bool:
    """JSON Schema's type check (an integer is any number without a fraction, 5.0 included)."""
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "object":
        return _is_mapping(value)
    kind = _KINDS.get(name)
    return kind is not None and isinstance(value, kind)


_KINDS: Final[Mapping[str, type]] = {
    "string": str,
    "boolean": bool,
    "array": list,
    "null": type(None),
}


def _is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    """``isinstance(value, Mapping)``, without the ABC check for the usual dict."""
    return type(value) is dict or isinstance(value, Mapping)


def _escape(key: str) -> str:
    """One RFC 6901 reference token."""
    if "~" not in key and "/" not in key:
        return key
    return key.replace("~", "~0").replace("/", "~1")


def _step(rule: str, pointer: str, detail: str) -> RepairStep:
    return RepairStep(rule=rule, pointer=pointer, detail=detail)


def _show(value: Any, limit: int = 40) -> str:
    """``value`` as short JSON, for a step's detail or a violation's ``got``."""
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
