"""Parse stage: a stored answer's content -> the output column value(s), or an `invalid` error.

Works on what the store holds, so changing the parser never costs a request:
`text` strips the content; `label` matches it to exactly one allowed label; `json` reads an
object (also out of a ```json fence), validates it against `output.schema` and gives one
typed column per top-level property. Any answer, however hostile, gives values its columns
hold as they are, or the reason it is invalid: parsing never raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from .client import utf8_safe
from .config import OutputConfig

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_LABEL_PREFIX = re.compile(
    r"^(?:the\s+)?(?:label|category|answer|class)\s*(?:is)?\s*[:=-]?\s*", re.I
)
_EDGE = " \t\r\n\"'`.,;:!?*()[]{}<>"


def norm_label(text: str) -> str:
    """A label as labels are compared: "Feature_Request" -> "feature request"."""
    return " ".join(text.strip(_EDGE).lower().replace("_", " ").replace("-", " ").split())


def bare_label(text: str) -> str:
    """An answer without its wrapping: "The label is: Feature-Request." -> "Feature-Request"."""
    return _LABEL_PREFIX.sub("", text.strip().strip(_EDGE)).strip(_EDGE)


def label_key(text: str) -> str:
    """What an answer is compared by: "The label is: Feature-Request." -> "feature request"."""
    return norm_label(bare_label(text))


@dataclass(frozen=True, slots=True)
class Parsed:
    """The column values of one answer, or why it is invalid."""

    values: tuple[Any, ...] | None
    error: str | None = None


def schema_dtype(prop: dict[str, Any]) -> pl.DataType:
    """The column type for one JSON Schema property."""
    kind = prop.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if "enum" in prop:
        return pl.String()
    return {
        "string": pl.String(),
        "integer": pl.Int64(),
        "number": pl.Float64(),
        "boolean": pl.Boolean(),
    }.get(kind or "", pl.String())


class Parser:
    """Built once from `output`; `parse` runs per row."""

    def __init__(self, output: OutputConfig) -> None:
        self.mode = output.parse
        self.labels = list(output.labels or [])
        self._by_norm = {norm_label(label): label for label in self.labels}
        self.schema = output.schema_ or {}
        if self.mode == "json":
            properties: dict[str, Any] = self.schema["properties"]
            self.columns = {name: schema_dtype(prop) for name, prop in properties.items()}
            self._cells = [(name, _CELLS[type(dtype)]) for name, dtype in self.columns.items()]
            import jsonschema  # only JSON answers need it; it is slow to import

            self._validator = jsonschema.Draft202012Validator(self.schema)
        else:
            self.columns = {output.column: pl.String()}

    def parse(self, content: str) -> Parsed:
        """The answer's column values, each of its column's type, or why not; never raises."""
        try:
            if self.mode == "text":
                return Parsed((utf8_safe(content.strip()),))
            if self.mode == "label":
                return self._label(content)
            return self._json(content)
        except Exception as exc:  # the per-row boundary of parsing: the row becomes invalid
            why = f"{type(exc).__name__}: {exc}"[:300]
            return Parsed(None, utf8_safe(f"cannot parse answer: {why}"))

    def _label(self, content: str) -> Parsed:
        label = self._by_norm.get(label_key(content))
        if label is not None:
            return Parsed((label,))
        shown = content.strip()[:200]
        return Parsed(None, f"answer {shown!r} is not one of the labels {self.labels}")

    def _json(self, content: str) -> Parsed:
        text = _unfence(content.strip())
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return Parsed(None, f"answer is not JSON ({exc.msg}): {content.strip()[:200]!r}")
        except (ValueError, RecursionError) as exc:  # nested too deep, too many digits
            why = f"{type(exc).__name__}: {exc}"[:200]
            return Parsed(None, f"answer is not JSON ({why}): {content.strip()[:200]!r}")
        if not isinstance(value, dict):
            return Parsed(None, f"answer is JSON but not an object: {content.strip()[:200]!r}")
        try:
            errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        except RecursionError:
            return Parsed(None, "answer is nested too deeply to check against the schema")
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.path) or "the answer"
            message = utf8_safe(first.message[:300])
            return Parsed(None, f"answer fails the schema at {where}: {message}")
        values = []
        for name, cell in self._cells:
            item = value.get(name)
            if item is not None:
                item = cell(item)
                if item is _UNFIT:
                    return Parsed(None, _unfit(value[name], name, self.columns[name]))
            values.append(item)
        return Parsed(tuple(values))


# What each column type holds: a value as exactly that Python type, or `_UNFIT`. Types are
# compared exactly (`type(item) is int`): a bool is an int to Python, but no bool fits a number.
_UNFIT = object()


def _string(item: Any) -> Any:
    if isinstance(item, str):
        return utf8_safe(item)
    if isinstance(item, dict | list):
        return utf8_safe(json.dumps(item, ensure_ascii=False))
    return str(item)


def _int64(item: Any) -> Any:
    if type(item) is float and item.is_integer():  # the schema counts 1.0 as an integer
        item = int(item)
    return item if type(item) is int and _INT64_MIN <= item <= _INT64_MAX else _UNFIT


def _float64(item: Any) -> Any:
    if type(item) is int:
        try:
            return float(item)
        except OverflowError:
            return _UNFIT
    return item if type(item) is float else _UNFIT


def _boolean(item: Any) -> Any:
    return item if type(item) is bool else _UNFIT


_CELLS: dict[type[pl.DataType], Callable[[Any], Any]] = {
    pl.String: _string,
    pl.Int64: _int64,
    pl.Float64: _float64,
    pl.Boolean: _boolean,
}


def _unfit(item: Any, name: str, dtype: pl.DataType) -> str:
    """Why `item` cannot go into column `name`."""
    whole = type(item) is int or (type(item) is float and item.is_integer())
    if whole and dtype in (pl.Int64(), pl.Float64()):
        return f"value out of range for column {name!r} ({dtype})"
    return f"a {type(item).__name__} value cannot go into column {name!r} ({dtype})"


def _unfence(text: str) -> str:
    """The inside of the first ```json fence in `text`, or `text`; linear time, no regex."""
    start = text.find("```")
    if start < 0:
        return text
    start += 3
    if text.startswith(("json", "JSON"), start):
        start += 4
    end = text.find("```", start)
    return text if end < 0 else text[start:end].strip()


def response_format(output: OutputConfig, structured_output: str) -> dict[str, Any] | None:
    """What to send as `response_format` for `parse: json`, per the server's dialect."""
    if output.parse != "json" or structured_output == "none":
        return None
    if structured_output == "json_object":
        return {"type": "json_object", "schema": output.schema_}
    return {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": output.schema_, "strict": True},
    }
