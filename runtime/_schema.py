"""The schema gate's validator: tool schemas checked at registration, tool calls checked per call.

Every tool call's arguments are validated against the tool's JSON Schema before the tool runs,
so this is on the hot path of every call and the one place a model learns what it got wrong.
Two halves, with different jobs:

- ``compile_schema`` runs once per schema, at registration, and refuses anything that would make
  validation slow, unsafe or meaningless. A refusal is a ``SchemaError`` naming the tool, a JSON
  pointer into the schema and the fix. Refused:

  * a schema that is not valid JSON Schema (meta-schema check);
  * ``$schema`` naming anything but 2020-12 or draft-07 (see below);
  * a ``$ref`` / ``$dynamicRef`` that is not local (does not start with ``#``): references are
    never fetched. The validator is also built with ``offline=True``, so nothing could be;
  * ``$id`` below the root (an embedded resource changes what ``#`` means inside it);
  * a reference cycle that can be followed without descending into the value: a ``$ref`` chain
    through ``$ref`` / ``allOf`` / ``anyOf`` / ``oneOf`` / ``not`` / ``if`` / ``then`` / ``else``
    / ``dependentSchemas`` only. jsonschema-rs accepts such schemas and quietly treats the cycle as
    valid, which would let anything through. Recursion through ``properties``, ``items``,
    ``prefixItems``, ``additionalProperties`` and the other keywords that descend into the value
    is fine (trees): each step consumes input, so it ends;
  * a ``pattern`` / ``patternProperties`` regex that the linear-time engine cannot compile
    (backreferences, lookaround). Patterns run on jsonschema-rs's ``regex``-crate engine
    (``RegexOptions``), which matches in time linear in the input, so a model-supplied string
    cannot make a pattern backtrack catastrophically (the default ``fancy-regex`` engine can);
  * a schema nested deeper than ``MAX_SCHEMA_DEPTH`` (64) containers or larger than
    ``MAX_SCHEMA_BYTES`` (256 KiB) of canonical JSON. Real tool schemas are a few levels deep
    and a few KiB at most (the MCP reference servers' tools: 5 levels and 830 bytes at most);
    the limits keep a hostile or generated schema from costing stack depth, memory and prompt
    tokens without bound.

- ``CompiledSchema.is_valid`` is the fast path: one call into Rust, 0.2-0.4 us for the MCP
  reference tools' schemas, ~1.5 us for an instance filling 15 properties. And
  ``CompiledSchema.violations`` lists every violation as a ``Violation`` (instance pointer,
  keyword, expected, got), phrased for a model to fix its call in one retry.

Why jsonschema-rs: measured (``bench/gate.py``, ``docs/benchmarks.md``), it is correct on every
2020-12 keyword our tests exercise and 55-130x faster than ``jsonschema``; ``fastjsonschema``
silently ignores 2020-12 keywords (``prefixItems``, ``unevaluated*``, ``dependent*``), so it is
unusable. This module is jsonschema-rs's only seam: no ``jsonschema_rs`` exception escapes it
(compile-time errors become ``SchemaError``; at validation time a non-JSON Python value, the
only thing jsonschema-rs raises on, becomes a ``type`` violation).

Why draft-07 too: MCP servers written with the TypeScript SDK (zod-to-json-schema) declare
``http://json-schema.org/draft-07/schema#``, and jsonschema-rs implements draft-07 fully, so such
schemas are validated with draft-07 semantics rather than refused. Schemas without ``$schema``
are 2020-12 (what MCP and Pydantic produce). Drafts 4, 6 and 2019-09 are refused.

Formats are asserted (``date-time``, ``email``, ``uri``, ``uuid``, ``ipv4`` ...); unknown format
names are annotations, as the specification says. Compiled schemas are cached for the process by
the sha256 of their canonical JSON (sorted keys), so registering the same schema twice, for the
same or another tool, compiles it once; the cache is a plain dict (a race compiles twice, which is
harmless) and lives as long as the process: tool schemas are few.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, NoReturn
from urllib.parse import unquote

import jsonschema_rs
import msgspec

from ._errors import SchemaError, Violation

__all__ = ["MAX_SCHEMA_BYTES", "MAX_SCHEMA_DEPTH", "CompiledSchema", "compile_schema"]

MAX_SCHEMA_DEPTH: Final = 64
"""Deepest nesting of objects/arrays accepted in a schema document."""

MAX_SCHEMA_BYTES: Final = 256 * 1024
"""Largest schema accepted, in bytes of canonical (sorted, compact) JSON."""

_GOT_MAX: Final = 60  # characters of an offending value shown in a Violation
_EXPECTED_MAX: Final = 120  # characters of an expectation (anyOf/oneOf summaries can be long)

_DIALECTS: Final[dict[str, tuple[str, type[jsonschema_rs.Validator]]]] = {
    "https://json-schema.org/draft/2020-12/schema": ("2020-12", jsonschema_rs.Draft202012Validator),
    "http://json-schema.org/draft/2020-12/schema": ("2020-12", jsonschema_rs.Draft202012Validator),
    "http://json-schema.org/draft-07/schema": ("draft-07", jsonschema_rs.Draft7Validator),
    "https://json-schema.org/draft-07/schema": ("draft-07", jsonschema_rs.Draft7Validator),
}

# Subschema keywords, by whether following them descends into the instance. A reference cycle
# made only of "in place" steps never consumes input, so it would recurse forever.
_IN_PLACE_ONE: Final = frozenset({"not", "if", "then", "else"})
_IN_PLACE_LIST: Final = frozenset({"allOf", "anyOf", "oneOf"})
_IN_PLACE_MAP: Final = frozenset({"dependentSchemas", "dependencies"})
_CHILD_ONE: Final = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "contentSchema",
        "propertyNames",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_CHILD_LIST: Final = frozenset({"prefixItems"})
_CHILD_MAP: Final = frozenset({"properties", "patternProperties"})
_DEFS_MAP: Final = frozenset({"$defs", "definitions"})
_ONE: Final = _IN_PLACE_ONE | _CHILD_ONE
_LIST: Final = _IN_PLACE_LIST | _CHILD_LIST
_MAP: Final = _IN_PLACE_MAP | _CHILD_MAP | _DEFS_MAP
_IN_PLACE: Final = _IN_PLACE_ONE | _IN_PLACE_LIST | _IN_PLACE_MAP
_REFS: Final = ("$ref", "$dynamicRef")

_ITEM_KEYWORDS: Final = frozenset({"items", "prefixItems", "additionalItems", "unevaluatedItems"})
_PROPERTY_KEYWORDS: Final = frozenset(
    {"properties", "patternProperties", "additionalProperties", "unevaluatedProperties"}
)

_cache: dict[str, CompiledSchema] = {}


class CompiledSchema:
    """A tool schema that passed registration, ready to validate instances.

    Built only by ``compile_schema``; shared between every tool registered with the same schema.

    Attributes:
        hash: sha256 hex digest of the canonical JSON; the cache key and a stable schema id.
        canonical: the schema as canonical JSON bytes (sorted keys, compact), exactly what was
            compiled; immutable, so safe to hand to a model prompt or a log.
        draft: ``"2020-12"`` or ``"draft-07"``, the dialect the schema is validated under.
    """

    __slots__ = ("_doc", "_validator", "canonical", "draft", "hash")

    def __init__(
        self, validator: jsonschema_rs.Validator, doc: dict[str, Any], canonical: bytes, draft: str
    ) -> None:
        self._validator = validator
        self._doc = doc
        self.canonical = canonical
        self.hash = hashlib.sha256(canonical).hexdigest()
        self.draft = draft

    def __repr__(self) -> str:
        return f"<CompiledSchema {self.draft} {self.hash[:12]}>"

    def is_valid(self, instance: object) -> bool:
        """Whether ``instance`` satisfies the schema; stops at the first violation.

        The fast path for the gate: call ``violations`` only when this says no.
        A value that is not JSON (a set, bytes, a non-string key) is invalid where the schema
        looks at it.

        Depth: jsonschema-rs recurses as deep as the schema takes it into the instance; with a
        recursive schema, an instance nested some 30,000 levels overflows its native stack (a
        crash, not an exception). JSON decoded by msgspec or ``json`` stops at ~1,000 levels
        (Python's recursion limit), so instances from the wire are safe; do not validate
        hand-built objects of unbounded depth.
        """
        try:
            return self._validator.is_valid(instance)
        except ValueError:  # jsonschema-rs: "Unsupported type" for non-JSON Python values
            return False

    def violations(self, instance: object) -> list[Violation]:
        """Every violation in ``instance``, in a stable order; ``[]`` when it is valid.

        Each violation has the JSON pointer into the instance (for a missing required property,
        the pointer of where it should go), the failing keyword, what was expected and what came.
        """
        try:
            errors = list(self._validator.iter_errors(instance))
        except ValueError:
            return [_not_json(instance)]
        out: list[Violation] = []
        for error in errors:
            out.extend(_translate(error, self._doc))
        return out


def compile_schema(schema: dict[str, Any], *, tool: str) -> CompiledSchema:
    """Check a tool's input schema and compile it, or refuse it with the fix.

    Args:
        schema: the JSON Schema, as decoded JSON (dicts, lists, str, int, float, bool, None).
        tool: the tool's name, for the error message only; the compiled schema is shared by
            every tool with the same canonical schema.

    Returns:
        The compiled schema, from the process-wide cache if this schema was compiled before.

    Raises:
        SchemaError: the schema is refused; ``pointer`` locates the problem in the schema and
            ``problem`` says what is wrong and how to fix it. Nothing is cached.
    """
    if not isinstance(schema, dict):
        raise SchemaError(
            tool, "", f"the schema is a {type(schema).__name__}; a tool schema is a JSON object"
        )
    _check_shape(schema, tool)
    canonical = msgspec.json.encode(schema, order="sorted")
    if len(canonical) > MAX_SCHEMA_BYTES:
        raise SchemaError(
            tool,
            "",
            f"the schema is {len(canonical)} bytes of JSON, "
            f"over the {MAX_SCHEMA_BYTES}-byte limit; "
            "every prompt that offers this tool carries it: split the tool, or shorten "
            "descriptions and move shared parts into '$defs'",
        )
    key = hashlib.sha256(canonical).hexdigest()  # == CompiledSchema.hash
    cached = _cache.get(key)
    if cached is not None:
        return cached
    doc: dict[str, Any] = msgspec.json.decode(canonical)
    draft, cls = _dialect(doc, tool)
    try:
        jsonschema_rs.meta.validate(doc)
    except jsonschema_rs.ValidationError as exc:
        raise SchemaError(tool, _pointer(exc.instance_path), _meta_problem(exc, draft)) from exc
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        raise SchemaError(tool, "", f"not valid JSON Schema {draft}: {exc}") from exc
    _check_references(doc, tool, draft)
    try:
        validator = cls(
            doc,
            validate_formats=True,
            pattern_options=jsonschema_rs.RegexOptions(),
            offline=True,
        )
    except jsonschema_rs.ValidationError as exc:
        raise SchemaError(tool, _pointer(exc.instance_path), _compile_problem(exc)) from exc
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        raise SchemaError(tool, "", f"refused by the validator: {exc}") from exc
    compiled = CompiledSchema(validator, doc, canonical, draft)  # hashes again: once per schema
    _cache[key] = compiled
    return compiled


# -- registration checks ---------------------------------------------------------------------


def _check_shape(schema: dict[str, Any], tool: str) -> None:
    """Plain JSON only, and no deeper than the limit: checked iteratively, before anything
    recursive (encoding, meta-validation) touches the document."""
    stack: list[tuple[object, str, int]] = [(schema, "", 1)]
    while stack:
        node, pointer, depth = stack.pop()
        if isinstance(node, dict | list | tuple) and depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(
                tool,
                pointer,
                f"the schema is nested more than {MAX_SCHEMA_DEPTH} levels deep here; "
                "flatten it: define repeated parts once under '$defs' and use '$ref'",
            )
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise SchemaError(
                        tool, pointer, f"key {k!r} is not a string; JSON object keys are strings"
                    )
                stack.append((v, f"{pointer}/{_escape(k)}", depth + 1))
        elif isinstance(node, list | tuple):
            stack.extend((v, f"{pointer}/{i}", depth + 1) for i, v in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            raise SchemaError(tool, pointer, f"{node} is not a JSON number; use a finite number")
        elif not (node is None or isinstance(node, str | int | float)):
            raise SchemaError(
                tool,
                pointer,
                f"a Python {type(node).__name__} is not JSON; a schema holds only objects, "
                "arrays, strings, numbers, booleans and null (decode it from JSON)",
            )


def _dialect(doc: dict[str, Any], tool: str) -> tuple[str, type[jsonschema_rs.Validator]]:
    uri = doc.get("$schema")
    if uri is None:
        return "2020-12", jsonschema_rs.Draft202012Validator
    if isinstance(uri, str) and uri.rstrip("#") in _DIALECTS:
        return _DIALECTS[uri.rstrip("#")]
    raise SchemaError(
        tool,
        "/$schema",
        f"$schema is {uri!r}; only JSON Schema 2020-12 "
        "('https://json-schema.org/draft/2020-12/schema', also assumed when $schema is absent) "
        "and draft-07 ('http://json-schema.org/draft-07/schema#') are accepted: "
        "declare one of them, or remove $schema",
    )


def _meta_problem(exc: jsonschema_rs.ValidationError, draft: str) -> str:
    keyword = next((p for p in reversed(exc.instance_path) if isinstance(p, str)), "")
    problem = f"not valid JSON Schema {draft}: {exc.message}"
    if keyword == "type" and isinstance(exc.kind, jsonschema_rs.ValidationErrorKind.AnyOf):
        return (
            f"{problem}; 'type' is one of array, boolean, integer, null, number, object, string, "
            "or a list of distinct ones"
        )
    if keyword:
        return f"{problem}; give {keyword!r} a value the {draft} meta-schema allows"
    return f"{problem}; fix the schema to what the {draft} meta-schema allows"


def _compile_problem(exc: jsonschema_rs.ValidationError) -> str:
    kind = exc.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Format) and kind.format == "regex":
        pattern = exc.instance if isinstance(exc.instance, str) else str(exc.instance)
        return _pattern_problem(pattern)
    return f"refused by the validator: {exc.message}"


_BACKREFERENCE = re.compile(r"\\[1-9]|\\k<")
_LOOKAROUND = re.compile(r"\(\?<?[=!]")


def _pattern_problem(pattern: str) -> str:
    """Why a regex was refused, and how to rewrite it."""
    head = f"pattern {pattern!r}"
    engine = (
        "which the linear-time regex engine does not support (it is what lets a pattern "
        "backtrack catastrophically on a crafted string); rewrite it without backreferences "
        "or lookaround"
    )
    if _BACKREFERENCE.search(pattern):
        return f"{head} uses a backreference, {engine}"
    if _LOOKAROUND.search(pattern):
        return f"{head} uses lookahead or lookbehind, {engine}"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"{head} is not a valid regular expression ({exc}); fix its syntax"
    return (
        f"{head} cannot be compiled by the linear-time regex engine (unsupported syntax, or too "
        "large once repetitions are expanded); rewrite it without backreferences, lookaround "
        "or large repetition counts"
    )


def _check_references(doc: dict[str, Any], tool: str, draft: str) -> None:
    """Refuse non-local, dangling and input-free cyclic references; see the module docstring.

    Walks every schema position (not ``enum``/``const``/``default`` data), records the edges that
    apply a subschema to the same instance ("in place") and resolves every reference, then looks
    for a cycle made only of in-place edges.
    """
    schemas: dict[str, object] = {}  # pointer -> schema node, every schema position seen
    anchors: dict[str, str] = {}  # anchor name -> pointer
    refs: list[tuple[str, str, str]] = []  # (pointer of the $ref keyword, source, reference)
    edges: dict[str, list[tuple[str, str]]] = {}  # source -> [(target, pointer of the step)]

    def walk(root: object, root_pointer: str) -> None:
        stack: list[tuple[object, str]] = [(root, root_pointer)]
        while stack:
            node, here = stack.pop()
            if here in schemas:
                continue
            schemas[here] = node
            if not isinstance(node, dict):
                continue
            steps = edges.setdefault(here, [])
            for kw, value in node.items():
                at = f"{here}/{_escape(kw)}"
                children: list[tuple[object, str]] = []
                if kw in _REFS and isinstance(value, str):
                    refs.append((at, here, value))
                elif kw == "$id" and here:
                    if draft == "draft-07" and isinstance(value, str) and value.startswith("#"):
                        anchors[value[1:]] = here  # draft-07 plain-name fragment: an anchor
                    else:
                        raise SchemaError(
                            tool,
                            at,
                            "'$id' below the root embeds a separate schema resource, which changes "
                            "what '#' references resolve to inside it; remove it and refer to the "
                            "subschema as '#/$defs/<name>'",
                        )
                elif kw in ("$anchor", "$dynamicAnchor") and draft == "2020-12":
                    if isinstance(value, str):
                        anchors[value] = here
                elif kw in _ONE or (kw == "items" and not isinstance(value, list)):
                    children.append((value, at))
                elif (kw in _LIST or kw == "items") and isinstance(value, list):
                    children.extend((v, f"{at}/{i}") for i, v in enumerate(value))
                elif kw in _MAP and isinstance(value, dict):
                    children.extend(
                        (v, f"{at}/{_escape(k)}")
                        for k, v in value.items()
                        if isinstance(v, dict | bool)  # dependencies: a list is not a schema
                    )
                in_place = kw in _IN_PLACE
                for child, child_at in children:
                    if in_place:
                        steps.append((child_at, child_at))
                    stack.append((child, child_at))

    walk(doc, "")
    i = 0
    while i < len(refs):  # resolving a reference may walk new schema positions, adding refs
        at, source, reference = refs[i]
        i += 1
        target, node = _resolve(doc, reference, anchors, tool, at)
        if target not in schemas:
            walk(node, target)
        edges.setdefault(source, []).append((target, at))

    cycle = _find_cycle(edges)
    if cycle is not None:
        path, at = cycle
        raise SchemaError(
            tool,
            at,
            "reference cycle that never descends into the value: "
            + " -> ".join(f"#{p}" for p in path)
            + "; validating it would recurse forever on any input, so it is not a usable schema. "
            "Make each recursive step go through 'properties', 'items', 'prefixItems', "
            "'additionalProperties' or another keyword that descends into the value",
        )


def _resolve(
    doc: dict[str, Any], reference: str, anchors: dict[str, str], tool: str, at: str
) -> tuple[str, object]:
    """Resolve a local reference to (canonical pointer, node); refuse anything else."""
    if not reference.startswith("#"):
        raise SchemaError(
            tool,
            at,
            f"reference {reference!r} is not local; only references inside this schema "
            "('#/$defs/<name>', '#<anchor>') are allowed and nothing is ever fetched: copy the "
            "referenced schema into '$defs' and refer to it as '#/$defs/<name>'",
        )
    fragment = unquote(reference[1:])
    if fragment and not fragment.startswith("/"):
        if fragment not in anchors:
            raise SchemaError(
                tool,
                at,
                f"reference {reference!r} names the anchor {fragment!r}, which no '$anchor' in "
                "this schema declares; declare it or use a JSON pointer such as '#/$defs/<name>'",
            )
        pointer = anchors[fragment]
        return pointer, _follow(doc, _tokens(pointer))
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in fragment.split("/")[1:]]
    pointer = "".join(f"/{_escape(t)}" for t in tokens)
    try:
        node = _follow(doc, tokens)
    except (KeyError, IndexError, ValueError, TypeError):
        _dangling(tool, at, reference)
    if not isinstance(node, dict | bool):
        raise SchemaError(
            tool,
            at,
            f"reference {reference!r} points at a {type(node).__name__}, not a schema; "
            "point it at an object (or true/false) schema",
        )
    return pointer, node


def _dangling(tool: str, at: str, reference: str) -> NoReturn:
    raise SchemaError(
        tool,
        at,
        f"reference {reference!r} points at nothing in this schema; fix the pointer, or add the "
        "definition under '$defs'",
    )


def _follow(doc: object, tokens: Iterable[str]) -> object:
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            node = node[token]
        elif isinstance(node, list):
            node = node[int(token)]
        else:
            raise KeyError(token)
    return node


def _tokens(pointer: str) -> list[str]:
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def _find_cycle(edges: dict[str, list[tuple[str, str]]]) -> tuple[list[str], str] | None:
    """The first cycle found (depth-first, in walk order): its path of pointers, and the pointer
    of the step that closes it."""
    done: set[str] = set()
    for start in edges:
        if start in done:
            continue
        path = [start]
        on_path = {start}
        pending = [iter(edges.get(start, ()))]
        while pending:
            step = next(pending[-1], None)
            if step is None:
                pending.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            target, at = step
            if target in on_path:
                return [*path[path.index(target) :], target], at
            if target not in done:
                path.append(target)
                on_path.add(target)
                pending.append(iter(edges.get(target, ())))
    return None


# -- violations ------------------------------------------------------------------------------


_K = jsonschema_rs.ValidationErrorKind

# Kinds that make exactly one violation at the error's own location, by their expectation.
# A dict on the kind's class: errors are translated one by one, and a chain of ``case`` class
# patterns costs ~60 ns per case tried.
_EXPECTED: Final[dict[type, Callable[[Any], str]]] = {
    _K.Type: lambda k: " or ".join(k.types),
    _K.Minimum: lambda k: f">= {_num(k.limit)}",
    _K.Maximum: lambda k: f"<= {_num(k.limit)}",
    _K.ExclusiveMinimum: lambda k: f"> {_num(k.limit)}",
    _K.ExclusiveMaximum: lambda k: f"< {_num(k.limit)}",
    _K.MultipleOf: lambda k: f"multiple of {_num(k.multiple_of)}",
    _K.MinLength: lambda k: f"at least {_count(k.limit, 'character')}",
    _K.MaxLength: lambda k: f"at most {_count(k.limit, 'character')}",
    _K.MinItems: lambda k: f"at least {_count(k.limit, 'item')}",
    _K.MaxItems: lambda k: f"at most {_count(k.limit, 'item')}",
    _K.MinProperties: lambda k: f"at least {_count(k.limit, 'property', 'properties')}",
    _K.MaxProperties: lambda k: f"at most {_count(k.limit, 'property', 'properties')}",
    _K.Enum: lambda k: f"one of {_json(k.options)}",
    _K.Constant: lambda k: f"exactly {_json(k.expected_value)}",
    _K.Pattern: lambda k: f"string matching /{k.pattern}/",
    _K.Format: lambda k: f"format {k.format}",
    _K.UniqueItems: lambda k: "unique items",
    _K.Not: lambda k: f"not {_json(k.schema)}",
}


def _translate(error: jsonschema_rs.ValidationError, doc: dict[str, Any]) -> list[Violation]:
    """One jsonschema-rs error as Violations (several when it names several properties)."""
    kind = error.kind
    pointer = _pointer(error.instance_path)
    schema_path = error.schema_path
    keyword = str(schema_path[-1]) if schema_path else kind.name
    instance = error.instance
    simple = _EXPECTED.get(type(kind))
    if simple is not None:
        return [
            Violation(
                pointer=pointer, keyword=keyword, expected=_clip(simple(kind)), got=_short(instance)
            )
        ]

    def one(
        expected: str, *, at: str = pointer, kw: str = keyword, came: str = ""
    ) -> list[Violation]:
        return [
            Violation(
                pointer=at, keyword=kw, expected=_clip(expected), got=came or _short(instance)
            )
        ]

    match kind:
        case _K.Required(property=name):
            expected = f"property {name!r}"
            if keyword == "dependentRequired":
                expected += _required_with(doc, schema_path, name, instance)
            return one(expected, at=f"{pointer}/{_escape(name)}", came="missing")
        case _K.Contains():
            return one(_contains_expected(doc, schema_path, keyword))
        case _K.AdditionalProperties(unexpected=names) | _K.UnevaluatedProperties(unexpected=names):
            return [
                Violation(
                    pointer=f"{pointer}/{_escape(name)}",
                    keyword=keyword,
                    expected="no extra properties",
                    got=_short(instance[name]) if isinstance(instance, dict) else "present",
                )
                for name in names
            ]
        case _K.UnevaluatedItems(unexpected=unexpected):
            # The stubs say indices; jsonschema-rs 0.61 gives the items' compact JSON instead.
            items: list[object] = list(unexpected)
            if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
                indices: list[int] | None = [int(str(i)) for i in items]
            else:
                indices = _unevaluated_indices(instance, [str(i) for i in items])
            if indices is None:  # could not place them: point at the array
                listed = ",".join(str(i) for i in items)
                return one("no extra items", came=_clip(f"[{listed}]", _GOT_MAX))
            return [_extra_item(pointer, keyword, instance, i) for i in indices]
        case _K.AdditionalItems(limit=limit):
            n = len(instance) if isinstance(instance, list) else limit
            return [_extra_item(pointer, keyword, instance, i) for i in range(limit, n)]
        case _K.FalseSchema():
            kw = _false_schema_keyword(schema_path)
            if kw in _ITEM_KEYWORDS:
                return one("no extra items", kw=kw)
            if kw in ("properties", "patternProperties"):
                return one("no property here (its schema is false)", kw=kw)
            if kw in _PROPERTY_KEYWORDS:
                return one("no extra properties", kw=kw)
            return one("nothing (the schema here is false)", kw=kw)
        case _K.AnyOf(context=branches):
            return one(f"any of: {_branches(branches, doc, pointer)}")
        case _K.OneOfNotValid(context=branches):
            return one(f"exactly one of: {_branches(branches, doc, pointer)}")
        case _K.OneOfMultipleValid(context=branches):
            matched = [str(i) for i, errors in enumerate(branches) if not errors]
            return one(
                f"exactly one of {len(branches)} alternatives; "
                f"{len(matched)} match (#{', #'.join(matched)})"
            )
        case _K.PropertyNames(error=inner):
            name = inner.instance if isinstance(inner.instance, str) else str(inner.instance)
            inner_expected = "; ".join(v.expected for v in _translate(inner, doc))
            return one(
                f"name {inner_expected}",
                at=f"{pointer}/{_escape(name)}",
                kw="propertyNames",
                came=_short(name),
            )
        case _:  # content*, custom keywords, regex engine failures: jsonschema-rs's own words
            return one(error.message)


def _extra_item(pointer: str, keyword: str, instance: object, index: int) -> Violation:
    value = instance[index] if isinstance(instance, list) and index < len(instance) else None
    return Violation(
        pointer=f"{pointer}/{index}", keyword=keyword, expected="no extra items", got=_short(value)
    )


def _unevaluated_indices(instance: object, items: list[str]) -> list[int] | None:
    """Where the unevaluated items are. jsonschema-rs names them by their compact JSON, not by
    index; they are matched from the end, since unevaluated items are usually the tail left
    after ``prefixItems`` (an equal, evaluated item earlier in the array must not take the
    match). ``None`` if they cannot all be placed."""
    if not isinstance(instance, list):
        return None
    encoded = [_json(v, limit=1 << 30) for v in instance]
    found: list[int] = []
    j = len(encoded) - 1
    for item in reversed(items):
        while j >= 0 and encoded[j] != item:
            j -= 1
        if j < 0:
            return None
        found.append(j)
        j -= 1
    return found[::-1]


def _branches(
    branches: list[list[jsonschema_rs.ValidationError]], doc: dict[str, Any], at: str
) -> str:
    """Summarise why each anyOf/oneOf alternative failed: ``integer | null``."""
    parts = []
    for errors in branches:
        texts = []
        for error in errors:
            for v in _translate(error, doc):
                relative = v.pointer[len(at) :] if v.pointer.startswith(at) else v.pointer
                texts.append(f"{relative}: {v.expected}" if relative else v.expected)
        parts.append(", ".join(texts) or "valid")
    return " | ".join(parts)


def _required_with(
    doc: dict[str, Any], schema_path: Sequence[str | int], name: str, instance: object
) -> str:
    """For dependentRequired: which present property made ``name`` required."""
    try:
        rules = _follow(doc, [str(p) for p in schema_path])
    except (KeyError, IndexError, ValueError):
        return ""
    if not isinstance(rules, dict) or not isinstance(instance, dict):
        return ""
    triggers = [k for k, needs in rules.items() if k in instance and name in needs]
    return f" (required with {triggers[0]!r})" if triggers else ""


def _contains_expected(doc: dict[str, Any], schema_path: Sequence[str | int], keyword: str) -> str:
    try:
        node = _follow(doc, [str(p) for p in schema_path[:-1]])
    except (KeyError, IndexError, ValueError):
        node = {}
    if isinstance(node, dict):
        if keyword == "maxContains":
            return f"at most {_count(node.get('maxContains', 0), 'item')} matching 'contains'"
        if keyword == "minContains":
            return f"at least {_count(node.get('minContains', 1), 'item')} matching 'contains'"
    return "at least 1 item matching 'contains'"


def _false_schema_keyword(schema_path: Sequence[str | int]) -> str:
    """The keyword whose subschema is ``false``: ``items`` for ``['items']``, ``properties`` for
    ``['properties', 'x']``. Parsed from the left, because a property may be named like a keyword.
    """
    keyword = "false"
    i = 0
    while i < len(schema_path):
        token = schema_path[i]
        keyword = str(token)
        has_key = i + 1 < len(schema_path)
        if has_key and (
            token in _MAP
            or token in _LIST
            or (token == "items" and isinstance(schema_path[i + 1], int))
        ):
            i += 2
        else:
            i += 1
    return keyword


def _not_json(instance: object) -> Violation:
    """The violation for a Python value jsonschema-rs refuses to look at, located."""
    stack: list[tuple[object, str]] = [(instance, "")]
    while stack:
        node, pointer = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    return Violation(
                        pointer=pointer,
                        keyword="type",
                        expected="object with string keys",
                        got=_clip(f"key {k!r}", _GOT_MAX),
                    )
                stack.append((v, f"{pointer}/{_escape(k)}"))
        elif isinstance(node, list | tuple):
            stack.extend((v, f"{pointer}/{i}") for i, v in enumerate(node))
        elif not (node is None or isinstance(node, str | int | float)):
            return Violation(
                pointer=pointer,
                keyword="type",
                expected="a JSON value",
                got=_clip(f"Python {type(node).__name__}", _GOT_MAX),
            )
    return Violation(pointer="", keyword="type", expected="a JSON value", got=_short(instance))


# -- formatting ------------------------------------------------------------------------------


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _pointer(path: Iterable[str | int]) -> str:
    """RFC 6901 JSON pointer for a jsonschema-rs path (``""`` is the root)."""
    return "".join(f"/{_escape(str(p))}" for p in path)


def _json(value: object, limit: int = _EXPECTED_MAX) -> str:
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        text = repr(value)
    return _clip(text, limit)


def _short(value: object) -> str:
    """What came, short: compact JSON, truncated to about 60 characters."""
    return _json(value, _GOT_MAX)


def _clip(text: str, limit: int = _EXPECTED_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _count(n: object, noun: str, plural: str = "") -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
