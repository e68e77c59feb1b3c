"""Config stage: YAML file -> one frozen, validated `Config`.

Unknown keys, wrong types and missing keys are errors that name the key and its line.
`${VAR}` / `${VAR:-default}` are expanded from the environment; relative paths are taken
from the config file's folder; `--set a.b=value` overrides any key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

DEFAULT_BASE_URL = "https://hub.oxen.ai/api/ai"
DEFAULT_MODEL = "gemini-2-5-flash-lite-preview-09-2025"
DEFAULT_KEY_ENV = "OXEN_API_KEY"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Lines = dict[tuple[str, ...], int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputConfig(_Strict):
    path: Path


class PromptConfig(_Strict):
    system: str | None = None
    template: str
    skip_null: list[str] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list)
    image_roots: list[Path] = Field(default_factory=list)  # besides the input file's folder
    image_max_mb: float = Field(default=20, gt=0)


class Pricing(_Strict):
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class ModelConfig(_Strict):
    base_url: str = DEFAULT_BASE_URL
    name: str = DEFAULT_MODEL
    api_key_env: str = DEFAULT_KEY_ENV
    params: dict[str, Any] = Field(default_factory=dict)
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    pricing: Pricing | None = None
    preflight: bool = True

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
    path: Path
    column: str = "answer"
    include_meta: bool = False
    parse: Literal["text", "label", "json"] = "text"
    labels: list[str] | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    retry_invalid: int = Field(default=0, ge=0, le=10)

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
    concurrency: int = Field(default=32, ge=1, le=4096)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    max_retries: int = Field(default=5, ge=0, le=100)
    timeout_s: float = Field(default=60, gt=0)
    max_outage_s: float = Field(default=60, gt=0)  # endpoint down this long: stop
    store: Path | None = None
    chunk_rows: int = Field(default=20_000, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    fail_threshold: float = Field(default=0.0, ge=0, le=1)


class Config(_Strict):
    input: InputConfig
    prompt: PromptConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    output: OutputConfig
    run: RunConfig = Field(default_factory=RunConfig)

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
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{line}: {problem}") from exc
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
