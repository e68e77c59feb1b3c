"""Parse stage: a stored answer's content -> the output column value(s), or an `invalid` error.

Works on what the store holds, so changing the parser never costs a request:
`text` strips the content; `label` matches it to exactly one allowed label; `json` reads an
object (also out of a ```json fence), validates it against `output.schema` and gives one
typed column per top-level property.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from .config import OutputConfig

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_LABEL_PREFIX = re.compile(
    r"^(?:the\s+)?(?:label|category|answer|class)\s*(?:is)?\s*[:=-]?\s*", re.I
)
_EDGE = " \t\r\n\"'`.,;:!?*()[]{}<>"


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
        self._by_norm = {self._norm(label): label for label in self.labels}
        self.schema = output.schema_ or {}
        if self.mode == "json":
            properties: dict[str, Any] = self.schema["properties"]
            self.columns = {name: schema_dtype(prop) for name, prop in properties.items()}
            import jsonschema  # only JSON answers need it; it is slow to import

            self._validator = jsonschema.Draft202012Validator(self.schema)
        else:
            self.columns = {output.column: pl.String()}

    @staticmethod
    def _norm(text: str) -> str:
        return " ".join(text.strip(_EDGE).lower().replace("_", " ").replace("-", " ").split())

    def parse(self, content: str) -> Parsed:
        if self.mode == "text":
            return Parsed((content.strip(),))
        if self.mode == "label":
            return self._label(content)
        return self._json(content)

    def _label(self, content: str) -> Parsed:
        text = content.strip().strip(_EDGE)
        text = _LABEL_PREFIX.sub("", text)
        label = self._by_norm.get(self._norm(text))
        if label is not None:
            return Parsed((label,))
        shown = content.strip()[:200]
        return Parsed(None, f"answer {shown!r} is not one of the labels {self.labels}")

    def _json(self, content: str) -> Parsed:
        text = content.strip()
        fenced = _FENCE.search(text)
        if fenced:
            text = fenced.group(1).strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            return Parsed(None, f"answer is not JSON ({exc.msg}): {content.strip()[:200]!r}")
        if not isinstance(value, dict):
            return Parsed(None, f"answer is JSON but not an object: {content.strip()[:200]!r}")
        errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.path) or "the answer"
            return Parsed(None, f"answer fails the schema at {where}: {first.message}")
        values = []
        for name, dtype in self.columns.items():
            item = value.get(name)
            if isinstance(item, dict | list):
                item = json.dumps(item, ensure_ascii=False)
            elif item is not None and dtype == pl.String() and not isinstance(item, str):
                item = str(item)
            values.append(item)
        return Parsed(tuple(values))


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
