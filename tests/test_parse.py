"""Unit tests for `pipeline.parse`: any answer gives typed column values or a reason, never a crash.

The property tests feed every mode arbitrary text, arbitrary JSON and deep nesting, and check
that whatever `Parser.parse` returns goes into its polars column as is.
"""

from __future__ import annotations

import json
import re
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import OutputConfig
from pipeline.parse import Parsed, Parser, _unfence

HYPOTHESIS = settings(max_examples=200, deadline=None, database=None)
LABELS = ["billing", "bug", "feature_request"]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "s": {"type": "string"},
        "n": {"type": "integer"},
        "x": {"type": "number"},
        "b": {"type": "boolean"},
        "o": {"type": "object", "properties": {"k": {"type": "integer"}}},
        "maybe": {"type": ["integer", "null"]},
        "any": {},
    },
}


def parser(**output: Any) -> Parser:
    return Parser(OutputConfig.model_validate({"path": "out/answers.parquet", **output}))


TEXT = parser()
LABEL = parser(parse="label", labels=LABELS)
JSON = parser(parse="json", schema=SCHEMA)
PARSERS = {"text": TEXT, "label": LABEL, "json": JSON}


def check(p: Parser, content: str) -> Parsed:
    """Parse `content` and check the result fits its columns exactly."""
    parsed = p.parse(content)

    assert isinstance(parsed, Parsed)
    if parsed.values is None:
        assert isinstance(parsed.error, str)
        parsed.error.encode("utf-8")
    else:
        assert parsed.error is None
        assert len(parsed.values) == len(p.columns)
        for (name, dtype), value in zip(p.columns.items(), parsed.values, strict=True):
            pl.Series(name, [value], dtype=dtype)  # strict: raises on a value of another type
    return parsed


texts = st.text(st.characters(exclude_categories=[])) | st.lists(  # lone surrogates too
    st.sampled_from(["bug", " ", "é", "\ud800", "\udfff", '"', "1", "```"])
).map("".join)
ints = (
    st.integers()
    | st.integers(min_value=2**62, max_value=2**70)
    | st.integers(min_value=-(2**70), max_value=-(2**62))
)
numbers = ints | st.floats() | st.floats(allow_infinity=False, allow_nan=False).map(round)
keys = st.sampled_from([*SCHEMA["properties"], "k"]) | st.text(max_size=5)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=20,
)
answer_objects = st.dictionaries(keys, json_values, max_size=8)
schema_shaped = st.fixed_dictionaries(  # mostly valid answers, to reach the column types
    {},
    optional={
        "s": texts | json_values,
        "n": numbers,
        "x": numbers,
        "b": st.booleans() | json_values,
        "o": st.fixed_dictionaries({}, optional={"k": numbers}) | json_values,
        "maybe": st.none() | numbers,
        "any": json_values,
    },
)
deep = st.builds(
    lambda opener, depth, tail: opener * depth + tail,
    st.sampled_from(["[", '{"o": ', '{"any": [', "```json\n["]),
    st.integers(1, 3000),
    st.sampled_from(["", "1", "]" * 10, "}"]),
)
every_mode = pytest.mark.parametrize("mode", sorted(PARSERS))


@every_mode
@HYPOTHESIS
@given(content=texts)
def test_any_text_parses_or_is_invalid(mode: str, content: str) -> None:
    check(PARSERS[mode], content)


@every_mode
@HYPOTHESIS
@given(
    value=json_values | answer_objects | schema_shaped,
    fenced=st.booleans(),
    ascii_only=st.booleans(),
)
def test_any_json_parses_or_is_invalid(
    mode: str, value: Any, fenced: bool, ascii_only: bool
) -> None:
    content = json.dumps(value, ensure_ascii=ascii_only)
    check(PARSERS[mode], f"```json\n{content}\n```" if fenced else content)


@every_mode
@HYPOTHESIS
@given(content=deep)
def test_deep_nesting_parses_or_is_invalid(mode: str, content: str) -> None:
    check(PARSERS[mode], content)


# --- the named hostile answers -----------------------------------------------------------


def test_deeply_nested_json_is_not_json() -> None:
    parsed = check(JSON, "[" * 5000)

    assert parsed.values is None
    assert parsed.error is not None
    assert parsed.error.startswith("answer is not JSON (RecursionError")


def test_too_many_digits_is_not_json() -> None:
    parsed = check(JSON, '{"n": ' + "1" * 5000 + "}")

    assert parsed.error is not None
    assert parsed.error.startswith("answer is not JSON (ValueError")


@pytest.mark.parametrize("n", [2**63, 2**70, -(2**63) - 1, 1e300])
def test_integer_beyond_int64_is_out_of_range(n: int | float) -> None:
    parsed = check(JSON, json.dumps({"n": n}))

    assert parsed == Parsed(None, "value out of range for column 'n' (Int64)")


@pytest.mark.parametrize("n", [2**63 - 1, -(2**63), 0])
def test_integer_at_the_int64_bounds_is_kept(n: int) -> None:
    assert check(JSON, json.dumps({"n": n})).values == (None, n, None, None, None, None, None)


def test_whole_float_in_an_integer_column_becomes_an_int() -> None:
    values = check(JSON, '{"n": 3.0, "maybe": -2.0}').values

    assert values is not None
    assert (type(values[1]), values[1]) == (int, 3)
    assert (type(values[5]), values[5]) == (int, -2)


def test_number_column_gets_floats() -> None:
    values = check(JSON, '{"x": 7, "any": NaN}').values

    assert values is not None
    assert (type(values[2]), values[2]) == (float, 7.0)
    assert values[6] == "nan"


def test_integer_too_large_for_a_float_is_out_of_range() -> None:
    parsed = check(JSON, '{"x": 1' + "0" * 400 + "}")

    assert parsed == Parsed(None, "value out of range for column 'x' (Float64)")


def test_untyped_column_gets_text_of_any_value() -> None:
    for value, text in [(True, "True"), (12, "12"), ({"a": [1]}, '{"a": [1]}'), ("é", "é")]:
        values = check(JSON, json.dumps({"any": value})).values

        assert values is not None
        assert values[6] == text


@every_mode
def test_lone_surrogate_is_replaced(mode: str) -> None:
    for content in ["\ud800 billing", json.dumps({"s": "a\ud800b", "any": ["\udfff"]})]:
        parsed = check(PARSERS[mode], content)

        for value in parsed.values or ():
            assert value is None or "\ud800" not in str(value)


def test_lone_surrogate_in_json_string_column() -> None:
    values = check(JSON, '{"s": "a\\ud800b", "any": {"k": "\\udfff"}}').values

    assert values is not None
    assert values[0] == "a\ufffdb"
    assert values[6] == '{"k": "\ufffd"}'


def test_unresolvable_schema_reference_makes_the_row_invalid() -> None:
    broken = parser(parse="json", schema={"properties": {"a": {"$ref": "#/$defs/none"}}})

    parsed = check(broken, '{"a": 1}')

    assert parsed.values is None
    assert parsed.error is not None
    assert parsed.error.startswith("cannot parse answer: ")
    assert "PointerToNowhere" in parsed.error


def test_unclosed_fence_over_a_megabyte_of_space_does_not_hang() -> None:
    """A backtracking fence regex took hours over this; the fence search is linear."""
    assert check(JSON, "```" + " " * 1_000_000).values is None


# --- the fence: as the regex it replaced, in linear time ----------------------------------

OLD_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


@HYPOTHESIS
@given(text=st.text(alphabet="`jsonJSON \n\t{}1", max_size=40))
def test_fence_finds_what_the_old_regex_found(text: str) -> None:
    found = OLD_FENCE.search(text)

    assert _unfence(text) == (found.group(1).strip() if found else text)
