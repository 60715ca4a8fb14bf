"""The repair stage of the schema gate: text to JSON, schema-guided coercion, defaults."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from agentrt._errors import GateError, Violation
from agentrt._repair import RULES, Repaired, Repairer, RepairStep, repair
from hypothesis import given, settings
from hypothesis import strategies as st

OBJ: dict[str, Any] = {"type": "object"}


def step(rule: str, pointer: str, detail: str) -> RepairStep:
    return RepairStep(rule=rule, pointer=pointer, detail=detail)


def props(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def fix(detail: str) -> RepairStep:
    return step("fix_syntax", "", detail)


# --- phase 1: text to value ---------------------------------------------------------------------


def test_strict_json_is_the_fast_path_with_no_steps() -> None:
    schema = props(q={"type": "string"}, n={"type": "integer"})
    assert repair('{"q": "grep", "n": 3}', schema, tool="t") == Repaired({"q": "grep", "n": 3}, ())
    assert repair(b' {"q": "x"} ', schema, tool="t") == Repaired({"q": "x"}, ())


def test_a_mapping_is_not_text_repaired_but_is_still_coerced() -> None:
    schema = props(code={"type": "string"}, n={"type": "integer"})
    raw = {"code": "{'a': 1,}", "n": "5"}
    result = repair(raw, schema, tool="t")
    assert result.value == {"code": "{'a': 1,}", "n": 5}
    assert result.steps == (step("coerce_integer", "/n", '"5" -> 5'),)
    assert raw == {"code": "{'a': 1,}", "n": "5"}  # the input is not mutated


def test_extract_from_fence() -> None:
    text = 'Calling the tool.\n```json\n{"q": "x"}\n```\nDone.'
    result = repair(text, OBJ, tool="t")
    assert result == Repaired({"q": "x"}, (step("extract_from_fence", "", "```json fence"),))


def test_extract_from_an_unlabelled_fence() -> None:
    result = repair('```\n{"q": "x"}\n```', OBJ, tool="t")
    assert result == Repaired({"q": "x"}, (step("extract_from_fence", "", "``` fence"),))


def test_extract_from_prose() -> None:
    text = 'Sure! Here is the call: {"q": "x"} Hope this helps'
    result = repair(text, OBJ, tool="t")
    detail = "dropped 23 chars before, 15 after"
    assert result == Repaired({"q": "x"}, (step("extract_from_prose", "", detail),))


def test_prose_prefers_an_object_for_an_object_schema() -> None:
    result = repair('I will use [search] with {"q": "x"}', OBJ, tool="t")
    detail = "dropped 24 chars before, 0 after"
    assert result == Repaired({"q": "x"}, (step("extract_from_prose", "", detail),))


def test_prose_skips_a_span_that_is_not_json_for_one_that_is() -> None:
    result = repair('Use {braces} like so: {"q": "x"}', OBJ, tool="t")
    detail = "dropped 21 chars before, 0 after"
    assert result == Repaired({"q": "x"}, (step("extract_from_prose", "", detail),))


@pytest.mark.parametrize(
    ("text", "value", "steps"),
    [
        ('{"q": "x", "n": 1,}', {"q": "x", "n": 1}, [fix("trailing comma removed")]),
        ("{'q': 'x'}", {"q": "x"}, [fix("single quotes -> double quotes")]),
        ('{q: "x"}', {"q": "x"}, [fix("unquoted keys quoted")]),
        ('{"q": "x", "n": [1, 2', {"q": "x", "n": [1, 2]}, [fix("truncated: appended ]}")]),
        ('{"q": "it\'s', {"q": "it's"}, [fix('truncated: appended "}')]),
        ('{"q": "x" // the query\n}', {"q": "x"}, [fix("comments removed")]),
        (
            '{"a": True, "b": False, "c": None}',
            {"a": True, "b": False, "c": None},
            [fix("python literals True/False/None -> true/false/null")],
        ),
        (
            "{'q': 'x', 'n': [1, 2,],",
            {"q": "x", "n": [1, 2]},
            [
                fix("single quotes -> double quotes"),
                fix("trailing comma removed"),
                fix("truncated: appended }"),
            ],
        ),
        ('{"q" "x"}', {"q": "x"}, [fix("other syntax repaired")]),
    ],
)
def test_fix_syntax(text: str, value: Any, steps: list[RepairStep]) -> None:
    assert repair(text, OBJ, tool="t") == Repaired(value, tuple(steps))


def test_text_steps_come_in_order_fence_then_syntax() -> None:
    result = repair("```json\n{'q': 'x',}\n```", OBJ, tool="t")
    assert result.value == {"q": "x"}
    assert result.steps == (
        step("extract_from_fence", "", "```json fence"),
        fix("single quotes -> double quotes"),
        fix("trailing comma removed"),
    )


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("", "empty input"),
        ("   \n", "empty input"),
        ("I could not find a tool for that.", '"I could not find a tool for that."'),
        ("5 apples", '"5 apples"'),
        ("x" * 100, '"' + "x" * 60 + '" (+40 chars)'),
    ],
)
def test_unrecoverable_text_raises_gate_error_at_parse(text: str, got: str) -> None:
    with pytest.raises(GateError) as caught:
        repair(text, OBJ, tool="grep")
    err = caught.value
    assert (err.tool, err.stage) == ("grep", "parse")
    assert err.violations == [
        Violation(pointer="", keyword="json", expected="a JSON object", got=got)
    ]


def test_strict_json_that_is_not_an_object_is_left_to_the_validator() -> None:
    assert repair("42", OBJ, tool="t") == Repaired(42, ())
    fence = step("extract_from_fence", "", "```json fence")
    assert repair("```json\n42\n```", OBJ, tool="t") == Repaired(42, (fence,))


# --- phase 2: coercion --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_", "expected"), [("5", 5), ("-3", -3), (" 7 ", 7), ("5.0", 5), ("0", 0)]
)
def test_coerce_integer(given_: str, expected: int) -> None:
    result = repair({"n": given_}, props(n={"type": "integer"}), tool="t")
    assert result.value == {"n": expected}
    assert type(result.value["n"]) is int
    assert result.steps == (step("coerce_integer", "/n", f"{json.dumps(given_)} -> {expected}"),)


@pytest.mark.parametrize("given_", ["5.5", "1e3", "007", "+5", "five", ""])
def test_coerce_integer_refuses_what_is_not_an_integer(given_: str) -> None:
    assert repair({"n": given_}, props(n={"type": "integer"}), tool="t") == Repaired(
        {"n": given_}, ()
    )


@pytest.mark.parametrize(
    ("given_", "expected", "shown"),
    [("2.5", 2.5, "2.5"), ("5", 5, "5"), ("-0.25", -0.25, "-0.25"), ("1e3", 1000.0, "1000.0")],
)
def test_coerce_number(given_: str, expected: float, shown: str) -> None:
    result = repair({"x": given_}, props(x={"type": "number"}), tool="t")
    assert result == Repaired(
        {"x": expected}, (step("coerce_number", "/x", f'"{given_}" -> {shown}'),)
    )


@pytest.mark.parametrize("given_", ["NaN", "inf", "1e999", "2,5"])
def test_coerce_number_refuses_non_finite_and_non_json_numbers(given_: str) -> None:
    assert repair({"x": given_}, props(x={"type": "number"}), tool="t").steps == ()


@pytest.mark.parametrize(
    ("given_", "expected", "shown"),
    [("true", True, "true"), ("False", False, "false"), ("TRUE", True, "true")],
)
def test_coerce_boolean(given_: str, expected: bool, shown: str) -> None:
    result = repair({"b": given_}, props(b={"type": "boolean"}), tool="t")
    assert result == Repaired(
        {"b": expected}, (step("coerce_boolean", "/b", f'"{given_}" -> {shown}'),)
    )


def test_coerce_boolean_refuses_yes_and_one() -> None:
    schema = props(b={"type": "boolean"})
    assert repair({"b": "yes"}, schema, tool="t").steps == ()
    assert repair({"b": "1"}, schema, tool="t").steps == ()


def test_coerce_null() -> None:
    result = repair('{"z": "null"}', props(z={"type": "null"}), tool="t")
    assert result == Repaired({"z": None}, (step("coerce_null", "/z", '"null" -> null'),))


def test_wrap_in_array_then_coerce_the_element() -> None:
    schema = props(ids={"type": "array", "items": {"type": "integer"}})
    result = repair('{"ids": "7"}', schema, tool="t")
    assert result == Repaired(
        {"ids": [7]},
        (
            step("wrap_in_array", "/ids", '"7" -> ["7"]'),
            step("coerce_integer", "/ids/0", '"7" -> 7'),
        ),
    )


def test_wrap_in_array_of_a_matching_scalar() -> None:
    schema = props(tags={"type": "array", "items": {"type": "string"}})
    result = repair({"tags": "urgent"}, schema, tool="t")
    assert result == Repaired(
        {"tags": ["urgent"]}, (step("wrap_in_array", "/tags", '"urgent" -> ["urgent"]'),)
    )


def test_wrap_in_array_refused_when_the_element_does_not_fit_the_items() -> None:
    schema = props(ids={"type": "array", "items": {"type": "integer"}})
    assert repair({"ids": "seven"}, schema, tool="t") == Repaired({"ids": "seven"}, ())
    assert repair({"ids": None}, schema, tool="t") == Repaired({"ids": None}, ())


def test_parse_embedded_json() -> None:
    schema = props(filter=props(n={"type": "integer"}))
    result = repair({"filter": '{"n": "3"}'}, schema, tool="t")
    assert result == Repaired(
        {"filter": {"n": 3}},
        (
            step("parse_embedded_json", "/filter", "JSON text -> object"),
            step("coerce_integer", "/filter/n", '"3" -> 3'),
        ),
    )


def test_parse_embedded_json_of_a_double_encoded_call() -> None:
    result = repair(json.dumps('{"q": "x"}'), OBJ, tool="t")
    assert result == Repaired({"q": "x"}, (step("parse_embedded_json", "", "JSON text -> object"),))


def test_parse_embedded_json_prefers_parsing_to_wrapping() -> None:
    schema = props(ids={"type": "array", "items": {"type": "integer"}})
    result = repair({"ids": "[1, 2]"}, schema, tool="t")
    assert result == Repaired(
        {"ids": [1, 2]}, (step("parse_embedded_json", "/ids", "JSON text -> array"),)
    )


def test_a_value_already_valid_is_never_coerced() -> None:
    schema = props(
        s={"type": "string"},
        either={"type": ["string", "integer"]},
        anything={},
        free={"enum": ["5", 5]},
    )
    raw = {"s": "5", "either": "5", "anything": "true", "free": "5"}
    assert repair(raw, schema, tool="t") == Repaired(raw, ())


def test_a_float_with_no_fraction_is_already_an_integer() -> None:
    assert repair({"n": 5.0}, props(n={"type": "integer"}), tool="t") == Repaired({"n": 5.0}, ())


def test_any_of_coerces_when_exactly_one_branch_admits_the_result() -> None:
    schema = props(n={"anyOf": [{"type": "integer"}, {"type": "null"}]})
    assert repair({"n": "4"}, schema, tool="t") == Repaired(
        {"n": 4}, (step("coerce_integer", "/n", '"4" -> 4'),)
    )
    assert repair({"n": "null"}, schema, tool="t") == Repaired(
        {"n": None}, (step("coerce_null", "/n", '"null" -> null'),)
    )


@pytest.mark.parametrize(
    "branches",
    [
        [{"type": "integer"}, {"type": "number"}],  # both would take 5
        [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}],  # 5 or [5]
        [{"type": "integer"}, {"minLength": 1}],  # a branch with no type takes "5" as it is
    ],
)
def test_any_of_ambiguity_leaves_the_value_alone(branches: list[dict[str, Any]]) -> None:
    for keyword in ("anyOf", "oneOf"):
        schema = props(n={keyword: branches})
        assert repair({"n": "5"}, schema, tool="t") == Repaired({"n": "5"}, ())


def test_any_of_walks_into_the_one_branch_that_admits_the_value() -> None:
    item = props(count={"type": "integer"})
    schema = props(item={"anyOf": [item, {"type": "null"}]})
    assert repair({"item": {"count": "2"}}, schema, tool="t") == Repaired(
        {"item": {"count": 2}}, (step("coerce_integer", "/item/count", '"2" -> 2'),)
    )


def test_nested_pointers_through_ref_and_items() -> None:
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
        "$defs": {"Item": props(count={"type": "integer"}, name={"type": "string"})},
    }
    text = '{"items": [{"count": "1", "name": "a"}, {"count": 2}, {"count": "3"}]}'
    result = repair(text, schema, tool="t")
    assert result.value == {"items": [{"count": 1, "name": "a"}, {"count": 2}, {"count": 3}]}
    assert result.steps == (
        step("coerce_integer", "/items/0/count", '"1" -> 1'),
        step("coerce_integer", "/items/2/count", '"3" -> 3'),
    )


def test_prefix_items_additional_properties_and_pointer_escaping() -> None:
    schema = {
        "type": "object",
        "properties": {
            "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]}
        },
        "additionalProperties": {"type": "boolean"},
    }
    raw = {"pair": ["1", "1"], "a/b~c": "true"}
    result = repair(raw, schema, tool="t")
    assert result.value == {"pair": ["1", 1], "a/b~c": True}
    assert result.steps == (
        step("coerce_integer", "/pair/1", '"1" -> 1'),
        step("coerce_boolean", "/a~1b~0c", '"true" -> true'),
    )


def test_ref_siblings_and_single_all_of_are_followed() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/Int", "default": 1},
            "b": {"allOf": [{"$ref": "#/$defs/Int"}]},
        },
        "$defs": {"Int": {"type": "integer"}},
    }
    assert repair({"b": "2"}, schema, tool="t") == Repaired(
        {"b": 2, "a": 1},
        (step("coerce_integer", "/b", '"2" -> 2'), step("fill_default", "/a", "missing -> 1")),
    )


def test_recursive_and_broken_refs_do_not_loop_or_raise() -> None:
    schema = {
        "$ref": "#",
        "type": "object",
        "properties": {"child": {"$ref": "#"}, "n": {"type": "integer"}, "x": {"$ref": "#/nope"}},
    }
    result = repair({"n": "1", "child": {"child": {"n": "2"}}, "x": "3"}, schema, tool="t")
    assert result.value == {"n": 1, "child": {"child": {"n": 2}}, "x": "3"}
    assert [s.pointer for s in result.steps] == ["/n", "/child/child/n"]


# --- phase 3: defaults --------------------------------------------------------------------------


def test_fill_default_top_level_and_in_nested_objects_that_exist() -> None:
    schema = props(
        q={"type": "string"},
        limit={"type": "integer", "default": 10},
        opts=props(case={"type": "boolean", "default": False}),
        absent=props(deep={"type": "integer", "default": 1}),
    )
    result = repair('{"q": "x", "opts": {}}', schema, tool="t")
    assert result == Repaired(
        {"q": "x", "opts": {"case": False}, "limit": 10},
        (
            step("fill_default", "/opts/case", "missing -> false"),
            step("fill_default", "/limit", "missing -> 10"),
        ),
    )


def test_fill_default_of_an_object_fills_its_own_defaults() -> None:
    schema = props(opts={**props(case={"type": "boolean", "default": False}), "default": {}})
    assert repair("{}", schema, tool="t") == Repaired(
        {"opts": {"case": False}},
        (
            step("fill_default", "/opts", "missing -> {}"),
            step("fill_default", "/opts/case", "missing -> false"),
        ),
    )


def test_fill_default_copies_the_default_and_never_mutates_inputs() -> None:
    schema = props(tags={"type": "array", "default": ["a"]}, n={"type": "integer"})
    schema_before = copy.deepcopy(schema)
    raw = {"n": "1"}
    first = repair(raw, schema, tool="t")
    first.value["tags"].append("mutated")
    second = repair(raw, schema, tool="t")
    assert second.value == {"n": 1, "tags": ["a"]}
    assert raw == {"n": "1"}
    assert schema == schema_before


def test_rules_are_a_closed_set() -> None:
    assert len(RULES) == len(set(RULES)) == 10


def test_a_repairer_reads_the_schema_once_and_answers_like_repair() -> None:
    schema = props(n={"type": "integer"}, limit={"type": "integer", "default": 10})
    repairer = Repairer(schema)
    for raw in ('{"n": "1"}', "```json\n{'n': 2,}\n```", {"n": 3, "limit": 4}):
        assert repairer.repair(raw, tool="t") == repair(raw, schema, tool="t")
    with pytest.raises(GateError):
        repairer.repair("no call here", tool="t")


# --- properties ---------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
json_containers = st.lists(json_values, max_size=4) | st.dictionaries(
    st.text(), json_values, max_size=4
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_text_comes_back_unchanged_with_no_steps(obj: Any) -> None:
    text = json.dumps(obj)
    result = repair(text, {}, tool="t")
    assert json.dumps(result.value) == text
    assert result.steps == ()


@settings(max_examples=150, deadline=None)
@given(json_containers, st.booleans())
def test_json_in_a_fence_or_in_prose_is_extracted(obj: Any, fenced: bool) -> None:
    text = json.dumps(obj)
    if fenced and "```" not in text:
        wrapped, rule = f"```json\n{text}\n```", "extract_from_fence"
    else:
        wrapped, rule = f"Sure! Here is the call: {text} Hope this helps", "extract_from_prose"
    result = repair(wrapped, {}, tool="t")
    assert json.dumps(result.value) == text
    assert [s.rule for s in result.steps] == [rule]


JSONISH = "{}[]\"',:/*#\\ \nabtTfFnNul0123456789.-eE`"


@settings(max_examples=300, deadline=None)
@given(st.text() | st.text(alphabet=JSONISH) | st.binary())
def test_repair_raises_nothing_but_gate_error(raw: str | bytes) -> None:
    for schema in ({}, OBJ, {"type": "array", "items": {"type": "integer"}}):
        try:
            result = repair(raw, schema, tool="t")
        except GateError as err:
            assert err.stage == "parse"
        else:
            assert all(s.rule in RULES for s in result.steps)


TYPE_NAMES = ["string", "integer", "number", "boolean", "null", "array", "object"]
type_keyword = st.sampled_from(TYPE_NAMES) | st.lists(st.sampled_from(TYPE_NAMES), max_size=3)
REFS = ["#", "#/properties/a", "#/$defs/x", "#/items", "#/nope", "#anchor", "other.json"]
leaf_schemas = st.booleans() | st.fixed_dictionaries(
    {}, optional={"type": type_keyword, "default": json_values}
)
schemas = st.recursive(
    leaf_schemas,
    lambda kids: st.fixed_dictionaries(
        {},
        optional={
            "type": type_keyword,
            "properties": st.dictionaries(st.sampled_from("abc"), kids, max_size=3),
            "additionalProperties": kids,
            "items": kids,
            "prefixItems": st.lists(kids, max_size=2),
            "anyOf": st.lists(kids, max_size=3),
            "oneOf": st.lists(kids, max_size=3),
            "allOf": st.lists(kids, max_size=1),
            "$ref": st.sampled_from(REFS),
            "$defs": st.fixed_dictionaries({"x": kids}),
            "default": json_values,
        },
    ),
    max_leaves=12,
)
coercible = st.sampled_from(["5", "5.0", "2.5", "TRUE", "null", '[1, "2"]', '{"a": "1"}', "x", ""])
call_values = st.recursive(
    coercible | json_scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from("abcd"), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(call_values, schemas)
def test_any_schema_repair_is_pure_and_idempotent(value: Any, schema: Any) -> None:
    schema_before = json.dumps(schema, sort_keys=True)
    result = repair(json.dumps(value), schema, tool="t")  # strict JSON: never a GateError
    assert json.dumps(schema, sort_keys=True) == schema_before
    assert all(s.rule in RULES for s in result.steps)
    assert repair(json.dumps(result.value), schema, tool="t").steps == ()
