"""Config models: the frozen, validated shape of a job (`Config` and its sections).

Every key has a type, a default and a one-line `description=`, from which
docs/configuration.md is generated. `configfile.load` reads a YAML file into these models.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .locations import OxenConfig, _oxen_local, _s3_local, _storage_needs_url, overwrites_input
from .locations import StorageOptions as StorageOptions  # re-exported
from .runconfig import RunConfig
from .strict import _Strict, env_name, not_blank

DEFAULT_BASE_URL = "https://hub.oxen.ai/api/ai"
DEFAULT_MODEL = "gemini-2-5-flash-lite-preview-09-2025"
DEFAULT_KEY_ENV = "OXEN_API_KEY"


class InputConfig(_Strict):
    path: Path = Field(
        description="the table to read: .csv, .tsv, .parquet, .pq, .ndjson or .jsonl, by "
        "extension; or oxen://NAMESPACE:REPO@REVISION/PATH, a file of an Oxen repository at a "
        "branch or commit (see the oxen section); or s3://BUCKET/KEY, an object downloaded "
        "once per version, or s3://BUCKET/PREFIX/*.parquet, every matching object read as one "
        "table in key order. CSV and TSV columns are read as text, each value as written "
        "(01234 stays 01234, 1.50 stays 1.50); Parquet and NDJSON columns keep their types",
    )
    repo: str | None = Field(
        default=None,
        description="set from an oxen:// input.path: the repository address read from",
    )
    url: str | None = Field(
        default=None,
        description="set from an s3:// input.path: the object (or glob) read; input.path "
        "becomes its local copy under .pipeline-s3/in/ beside the config",
    )
    storage_options: StorageOptions = Field(
        default_factory=StorageOptions,
        description="for an s3:// input.path: the endpoint, the region and the names of the "
        "variables holding the credentials",
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

    @model_validator(mode="before")
    @classmethod
    def _oxen(cls, data: Any) -> Any:
        return _s3_local(_oxen_local(data, "in"), "in")

    @model_validator(mode="after")
    def _options_need_url(self) -> InputConfig:
        _storage_needs_url(self.url, self.storage_options, "input")
        return self

    @field_validator("path", mode="before")
    @classmethod
    def _path_given(cls, value: Any) -> Any:
        return not_blank(value)

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

    @field_validator("template", mode="before")
    @classmethod
    def _template_given(cls, value: Any) -> Any:
        return not_blank(value)

    @field_validator("system", mode="before")
    @classmethod
    def _system_given(cls, value: Any) -> Any:
        return not_blank(value, optional=True)


class Pricing(_Strict):
    input_per_million: float = Field(ge=0, description="USD per million prompt tokens")
    output_per_million: float = Field(ge=0, description="USD per million completion tokens")


class ModelConfig(_Strict):
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="any OpenAI-compatible http(s) base URL; requests go to "
        "{base_url}/chat/completions; "
        "a user and password in it (`user:password@`) are sent as basic auth instead of a key "
        "(model.api_key_env's variable must then be unset) and the password is shown as `***` "
        "wherever the URL is printed",
    )
    name: str = Field(default=DEFAULT_MODEL, description="the model id sent with every request")
    api_key_env: str = Field(
        default=DEFAULT_KEY_ENV,
        description="the NAME of the environment variable holding the API key (letters, digits "
        "and _), never the key itself: OXEN_API_KEY, not ${OXEN_API_KEY}",
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

    @field_validator("base_url", "name", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        return not_blank(value)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:  # the URL itself is not shown: it may hold a password
            parts = urlsplit(value)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
            usable = usable and (parts.port is None or parts.port > 0)
        except ValueError:  # a port that is not a number, or out of range
            usable = False
        if not usable:
            raise ValueError(
                "must be an http:// or https:// URL with a host and, if any, a port from 1 to "
                "65535, e.g. https://api.openai.com/v1"
            )
        return value

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _key_env(cls, value: Any) -> Any:
        return env_name(value)

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


_BRANCH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")


class OutputConfig(_Strict):
    path: Path = Field(
        description="the output table (not the input file), its format chosen by extension "
        "as for input.path; or "
        "oxen://NAMESPACE:REPO@BRANCH/PATH: written, then committed to that branch (created "
        "from the default branch when missing) with its provenance; or s3://BUCKET/KEY: "
        "written, then uploaded once complete (the object is replaced whole or not at all)",
    )
    repo: str | None = Field(
        default=None,
        description="set from an oxen:// output.path: the repository address committed to",
    )
    url: str | None = Field(
        default=None,
        description="set from an s3:// output.path: the object written; output.path becomes "
        "the local file under .pipeline-s3/out/ beside the config that is uploaded",
    )
    storage_options: StorageOptions = Field(
        default_factory=StorageOptions,
        description="for an s3:// output.path: as input.storage_options",
    )
    commit: bool = Field(
        default=False,
        description="the output is a file inside a local Oxen repository: commit it there "
        "after the run, with `<output>.provenance.json` beside it (needs the oxen extra: pip "
        "install 'pipeline[oxen]'); no commit when the branch holds the same bytes",
    )
    branch: str | None = Field(
        default=None,
        description="with output.commit: the branch to commit to; unset: the repository's "
        "current branch; created from the current branch when missing. The working folder is "
        "switched back to the current branch afterwards, the output file left in it",
    )
    commit_message: str | None = Field(
        default=None,
        description="the first line of the output's commit message (oxen:// outputs and "
        "output.commit); the provenance follows it",
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
    gold: str | None = Field(
        default=None,
        description="an input column holding the right answers: the run scores its answers "
        "against it (accuracy, per-label or per-field scores) in the summary's evaluation",
    )

    @model_validator(mode="before")
    @classmethod
    def _oxen(cls, data: Any) -> Any:
        return _s3_local(_oxen_local(data, "out"), "out")

    @field_validator("path", "column", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        return not_blank(value)

    @field_validator("branch")
    @classmethod
    def _branch_name(cls, value: str | None) -> str | None:
        if value is not None and (
            not _BRANCH.fullmatch(value) or ".." in value or "//" in value or value[-1] in "./"
        ):
            raise ValueError(
                f"{value!r} is not a branch name: letters, digits and . _ - /, starting "
                "with a letter, digit or _, without .. or // and not ending in . or /"
            )
        return value

    @model_validator(mode="after")
    def _commit_needs(self) -> OutputConfig:
        _storage_needs_url(self.url, self.storage_options, "output")
        if self.commit and self.url is not None:
            raise ValueError(
                "output.commit is for a file inside a local Oxen repository, not an s3:// "
                "output.path: drop output.commit"
            )
        if self.commit and self.repo is not None:
            raise ValueError(
                "output.commit is for a file inside a local Oxen repository; an oxen:// "
                "output.path is committed to its hub's branch already: drop output.commit"
            )
        if self.branch is not None and not self.commit:
            raise ValueError(
                "output.branch needs output.commit: true (an oxen:// output.path names its "
                "branch after the @)"
            )
        return self

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
    oxen: OxenConfig = Field(
        default_factory=OxenConfig,
        description="where oxen:// paths live: the hub and its key",
    )

    @field_validator("output")
    @classmethod
    def _not_the_input(cls, value: OutputConfig, info: ValidationInfo) -> OutputConfig:
        """An oxen:// or s3:// output.path that is the input itself is refused at load, before
        anything is sent (a local one: checks.check_output, once paths are resolved)."""
        source = info.data.get("input")
        if isinstance(source, InputConfig):
            endpoint = source.storage_options.endpoint_url == value.storage_options.endpoint_url
            problem = overwrites_input(source.repo, value.repo, source.url, value.url, endpoint)
            if problem is not None:
                raise ValueError(problem)
        return value

    @property
    def store_path(self) -> Path:
        """The SQLite store; by default beside the output, named after it."""
        return self.run.store or self.output.path.with_suffix(".db")
