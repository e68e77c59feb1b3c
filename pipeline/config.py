"""Config stage: YAML file -> one frozen, validated `Config`.

Unknown keys, wrong types and missing keys are errors that name the key and its line.
`${VAR}` / `${VAR:-default}` are expanded from the environment; relative paths are taken
from the config file's folder; `--set a.b=value` overrides any key.
"""

from __future__ import annotations

import codecs
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

DEFAULT_BASE_URL = "https://hub.oxen.ai/api/ai"
DEFAULT_MODEL = "gemini-2-5-flash-lite-preview-09-2025"
DEFAULT_KEY_ENV = "OXEN_API_KEY"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Lines = dict[tuple[str, ...], int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputConfig(_Strict):
    path: Path = Field(
        description="the table to read: .csv, .tsv, .parquet, .pq, .ndjson or .jsonl, by extension",
    )
    encoding: str = Field(
        default="utf8",
        description="CSV text encoding: utf8, utf8-lossy (bad bytes become U+FFFD), or any "
        "Python codec such as cp1252 or latin-1 (the file is then transcoded in memory)",
    )
    separator: str | None = Field(
        default=None,
        description='CSV field separator, one character ("\\t" for a tab); '
        "default ',' (a tab for .tsv)",
    )
    ragged: Literal["error", "truncate"] = Field(
        default="error",
        description="CSV rows with more fields than the header: error (naming the line) or "
        "truncate (drop the extra fields); rows with fewer fields get nulls",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        if value.lower() != "utf8-lossy":
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(
                    f"unknown encoding {value!r}: use utf8, utf8-lossy or a Python codec "
                    "name such as cp1252 or latin-1"
                ) from None
        return value

    @field_validator("separator")
    @classmethod
    def _one_byte(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) != 1:
            raise ValueError(f"the separator must be one ASCII character, got {value!r}")
        return value


class PromptConfig(_Strict):
    system: str | None = Field(
        default=None,
        description="the system message, a Jinja2 template like prompt.template; unset: no "
        "system message",
    )
    template: str = Field(
        description="the user message: a Jinja2 template over the row's columns "
        "(StrictUndefined); {{ labels }} gives output.labels",
    )
    skip_null: list[str] = Field(
        default_factory=list,
        description="columns whose null makes the row skipped, not sent; other nulls render as "
        "empty strings",
    )
    images: list[str] = Field(
        default_factory=list,
        description="columns holding image paths or URLs; each adds an image_url part to the "
        "user message",
    )
    image_roots: list[Path] = Field(
        default_factory=list,
        description="more folders local images may be read from, besides the input file's folder",
    )
    image_max_mb: float = Field(
        default=20,
        gt=0,
        description="a local image file larger than this many MiB fails its row",
    )


class Pricing(_Strict):
    input_per_million: float = Field(ge=0, description="USD per million prompt tokens")
    output_per_million: float = Field(ge=0, description="USD per million completion tokens")


class ModelConfig(_Strict):
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="any OpenAI-compatible base URL; requests go to {base_url}/chat/completions",
    )
    name: str = Field(default=DEFAULT_MODEL, description="the model id sent with every request")
    api_key_env: str = Field(
        default=DEFAULT_KEY_ENV,
        description="the NAME of the environment variable holding the API key, never the key "
        "itself",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="passed through to chat-completions (temperature, max_tokens, ...); not "
        "model or messages",
    )
    structured_output: Literal["json_schema", "json_object", "none"] = Field(
        default="json_schema",
        description="how parse: json asks for JSON: json_schema (OpenAI), json_object "
        "(llama.cpp's server) or none (the prompt alone)",
    )
    pricing: Pricing | None = Field(
        default=None,
        description="USD per million tokens; wins over the endpoint's prices; unset: the "
        "endpoint's, if any",
    )
    preflight: bool = Field(
        default=True,
        description="check that the endpoint serves the model (and, in validate, its params) "
        "before sending",
    )

    @model_validator(mode="after")
    def _params_are_parameters(self) -> ModelConfig:
        for name in ("model", "messages"):
            if name in self.params:
                raise ValueError(f"model.params may not set '{name}'; use model.name / the prompt")
        for name in ("max_tokens", "max_completion_tokens"):
            value = self.params.get(name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"model.params.{name} must be a positive whole number")
        return self


class OutputConfig(_Strict):
    path: Path = Field(
        description="the output table, its format chosen by extension as for input.path",
    )
    column: str = Field(
        default="answer",
        description="the new column holding the answer (parse: json adds one column per "
        "property instead)",
    )
    include_meta: bool = Field(
        default=False,
        description="also write _status, _error, _prompt_tokens, _completion_tokens and "
        "_attempts per row",
    )
    parse: Literal["text", "label", "json"] = Field(
        default="text",
        description="how the answer is read: text (stripped), label (one of output.labels) or "
        "json (output.schema)",
    )
    labels: list[str] | None = Field(
        default=None,
        description="the allowed answers for parse: label",
    )
    schema_: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="for parse: json, a JSON Schema object; each top-level property becomes a "
        "typed column",
    )
    retry_invalid: int = Field(
        default=0,
        ge=0,
        le=10,
        description="ask again, up to this many times, when an answer does not parse",
    )

    @model_validator(mode="after")
    def _parse_needs(self) -> OutputConfig:
        if self.parse == "label" and not self.labels:
            raise ValueError("parse: label needs output.labels, the list of allowed labels")
        if self.parse == "json":
            properties = (self.schema_ or {}).get("properties")
            if not isinstance(properties, dict) or not properties:
                raise ValueError(
                    "parse: json needs output.schema, a JSON Schema object with properties"
                )
        return self


class RunConfig(_Strict):
    concurrency: int = Field(default=32, ge=1, le=4096, description="requests in flight at most")
    requests_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="requests paced evenly under this rate; unset: learnt from the server's "
        "headers and 429s",
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="estimated tokens reserved before sending, settled with usage; unset: only a "
        "limit the server's headers name",
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        le=100,
        description="retries per request of a 429, 5xx, timeout, dropped connection or "
        "malformed body",
    )
    timeout_s: float = Field(default=60, gt=0, description="seconds one request may take")
    max_outage_s: float = Field(
        default=60,
        gt=0,
        description="seconds the endpoint may stay down (no answer to any probe) before the run "
        "stops (exit 3)",
    )
    store: Path | None = Field(
        default=None,
        description="the SQLite checkpoint and cache; unset: the output path with extension .db",
    )
    chunk_rows: int = Field(
        default=20_000,
        ge=1,
        description="rows read, answered and written at a time",
    )
    max_cost_usd: float | None = Field(
        default=None,
        gt=0,
        description="stop sending once the spend reaches this many USD (exit 3); unset: no budget",
    )
    fail_threshold: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="fraction of rows that may fail or be invalid with the run still exiting 0",
    )


class Config(_Strict):
    input: InputConfig = Field(description="where the rows come from")
    prompt: PromptConfig = Field(description="how a row becomes a chat request")
    model: ModelConfig = Field(
        default_factory=ModelConfig,
        description="the endpoint and the model that answer",
    )
    output: OutputConfig = Field(description="where the answers go and how they are read")
    run: RunConfig = Field(
        default_factory=RunConfig,
        description="concurrency, pacing, retries, limits and the store",
    )

    @property
    def store_path(self) -> Path:
        """The SQLite store; by default beside the output, named after it."""
        return self.run.store or self.output.path.with_suffix(".db")


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, expand, override and validate the config file at `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config {path}: not UTF-8 text ({exc.reason})") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML{_yaml_problem(exc, text)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (input, prompt, ...)")
    lines: Lines = {}
    _key_lines(node, (), lines)
    for item in overrides or []:
        _apply_override(data, item, lines)
    data = _expand(data, (), lines)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, lines)}") from None
    return _resolve_paths(config, path.parent)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """`(line N): what is wrong; line N is: its text`, N being where the problem starts.

    The parser's `problem_mark` is where it gave up: for a quote or bracket never closed,
    that is the end of the file, so the `context_mark` (where the quote opened) is named.
    """
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None)
    start = getattr(exc, "context_mark", None)
    if mark is not None and start is not None and not text[mark.index :].strip():
        mark = start
    if context:
        problem = f"{context}, {problem}"
    if mark is None:
        return f": {problem}"
    lines = text.splitlines() or [""]
    number = min(mark.line + 1, len(lines))
    shown = lines[number - 1].strip()
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    return f" (line {number}): {problem}; line {number} is: {shown}"


def _key_lines(node: yaml.Node | None, prefix: tuple[str, ...], lines: Lines) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            lines[key] = key_node.start_mark.line + 1
            _key_lines(value_node, key, lines)


def _where(key: tuple[str, ...], lines: Lines) -> str:
    for n in range(len(key), 0, -1):
        if key[:n] in lines:
            line = lines[key[:n]]
            return " (from --set)" if line < 0 else f" (line {line})"
    return ""


def _apply_override(data: dict[str, Any], item: str, lines: Lines) -> None:
    name, sep, raw = item.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--set expects KEY=VALUE, e.g. run.concurrency=8; got {item!r}")
    key = tuple(name.strip().split("."))
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    target = data
    for part in key[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {name}: {part!r} is not a section")
        target = child
    target[key[-1]] = value
    lines[key] = -1


def _expand(value: Any, key: tuple[str, ...], lines: Lines) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, (*key, str(k)), lines) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, key, lines) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is not None and (found or default is None):
            return found
        if default is not None:
            return default
        raise ConfigError(
            f"config key {'.'.join(key)}{_where(key, lines)}: environment variable "
            f"{name} is not set (use ${{{name}:-default}} for a fallback)"
        )

    return _VAR.sub(substitute, value)


def _describe(exc: ValidationError, lines: Lines) -> str:
    messages = []
    for error in exc.errors()[:5]:
        key = tuple(str(part) for part in error["loc"])
        dotted = ".".join(key)
        where = _where(key, lines)
        if error["type"] == "extra_forbidden":
            messages.append(f"unknown key '{dotted}'{where}")
        elif error["type"] == "missing":
            messages.append(
                f"missing required key '{dotted}'{where.replace('line', 'in section at line')}"
            )
        else:
            messages.append(f"config key '{dotted}'{where}: {error['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(messages) + (f"; and {more} more" if more > 0 else "")


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(base / p))

    updates: dict[str, Any] = {
        "input": config.input.model_copy(update={"path": resolve(config.input.path)}),
        "output": config.output.model_copy(update={"path": resolve(config.output.path)}),
    }
    if config.run.store is not None:
        updates["run"] = config.run.model_copy(update={"store": resolve(config.run.store)})
    if config.prompt.image_roots:
        roots = [resolve(root) for root in config.prompt.image_roots]
        updates["prompt"] = config.prompt.model_copy(update={"image_roots": roots})
    return config.model_copy(update=updates)
