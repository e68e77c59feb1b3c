"""Render stage: a row of the table -> a chat-completions `Request` with its store key.

The key is a versioned hash of the canonical request (model, messages, params), so an
identical request is sent once and a changed template or parameter asks anew.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from .config import ModelConfig, OutputConfig, PromptConfig
from .errors import InputError, printable
from .images import MIB, ImageReader
from .parse import response_format
from .records import Request
from .templating import TemplateEnvironment

KEY_VERSION = "r1"
DEFAULT_RESERVE = 256  # completion tokens reserved when params set no max_tokens
IMAGE_TOKENS = 1000  # a rough per-image budget for the token estimate


class Labels(list[str]):
    """The allowed labels; `{{ labels }}` renders them comma-separated."""

    def __str__(self) -> str:
        return ", ".join(self)


def canonical_body(model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> bytes:
    """The request body as canonical JSON (sorted keys, no spaces): sent as is, and hashed."""
    body = {**params, "model": model, "messages": messages}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_key(model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> str:
    """`r1:` + sha256 of the canonical request body; a documented, stable contract."""
    return key_of(canonical_body(model, messages, params))


class _BodyWriter:
    """Writes the canonical body of text-only messages without the general JSON encoder.

    Everything but the message texts is fixed for a run, so it is encoded once; each row
    only escapes its texts. The bytes are exactly those of `canonical_body`.
    """

    def __init__(self, model: str, params: Mapping[str, Any]) -> None:
        fixed = {**params, "model": model}
        names = sorted([*fixed, "messages"])
        at = names.index("messages")

        def pairs(keys: list[str]) -> str:
            return ",".join(f"{_canon(k)}:{_canon(fixed[k])}" for k in keys)

        before, after = pairs(names[:at]), pairs(names[at + 1 :])
        self._head = "{" + before + ("," if before else "") + '"messages":['
        self._tail = "]" + ("," + after if after else "") + "}"

    def write(self, messages: list[tuple[str, str]]) -> bytes:
        """`messages` as (role, text) pairs."""
        inner = ",".join(
            f'{{"content":{_quote(text)},"role":{_quote(role)}}}' for role, text in messages
        )
        return (self._head + inner + self._tail).encode()


_quote = json.encoder.encode_basestring  # a str as JSON, exactly as json.dumps writes it
_canon = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def key_of(payload: bytes) -> str:
    return f"{KEY_VERSION}:{hashlib.sha256(payload).hexdigest()}"


def reask_key(key: str, attempt: int) -> str:
    """The key of the `attempt`-th re-ask of a request whose answer did not parse."""
    return f"{key}~{attempt}" if attempt else key


def completion_reserve(params: Mapping[str, Any]) -> int:
    """The completion tokens a request may use: its `max_tokens`, else a default."""
    reserve = params.get("max_tokens") or params.get("max_completion_tokens")
    return reserve if type(reserve) is int and reserve > 0 else DEFAULT_RESERVE


def estimate_tokens(text_chars: int, params: Mapping[str, Any]) -> int:
    """Prompt tokens guessed at 4 characters each, plus the completion budget."""
    return text_chars // 4 + 1 + completion_reserve(params)


Part = tuple[bool, str]  # (is a variable, literal text or variable name)


def plain_parts(env: jinja2.Environment, source: str) -> list[Part] | None:
    """Text and bare `{{ name }}` only: rendered by joining strings, without Jinja's machinery."""
    tree = env.parse(source)
    if not tree.body:
        return []
    if len(tree.body) != 1 or not isinstance(tree.body[0], jinja2.nodes.Output):
        return None
    parts: list[Part] = []
    for node in tree.body[0].nodes:
        if type(node) is jinja2.nodes.TemplateData:
            parts.append((False, node.data))
        elif type(node) is jinja2.nodes.Name and node.ctx == "load":
            parts.append((True, node.name))
        else:
            return None
    return parts


class _Text:
    """A template; the plain ones skip Jinja at render time (most prompts are plain)."""

    def __init__(self, env: jinja2.Environment, source: str) -> None:
        self._template = env.from_string(source)
        self._parts = plain_parts(env, source) if env.keep_trailing_newline else None
        self._format: str | None = None  # the plain template as a str.format_map pattern
        if self._parts is not None:
            self._format = "".join(
                f"{{{text}}}" if is_name else text.replace("{", "{{").replace("}", "}}")
                for is_name, text in self._parts
            )
        self.constant = self._parts is not None and not any(n for n, _ in self._parts)

    def render(self, values: Mapping[str, Any]) -> str:
        """The text; a null value prints as empty text on both paths."""
        if self._format is None:
            return self._template.render(values)
        if None in values.values():
            values = {name: "" if value is None else value for name, value in values.items()}
        return self._format.format_map(values)


def _finalize(value: Any) -> Any:
    """What `{{ ... }}` prints: a null cell is empty text (tests and filters still see None)."""
    return "" if value is None else value


class Renderer:
    """Turns rows into requests; checks the template against the columns up front."""

    def __init__(
        self,
        prompt: PromptConfig,
        model: ModelConfig,
        columns: Iterable[str],
        output: OutputConfig | None = None,
        image_base: Path = Path(),
    ) -> None:
        env = TemplateEnvironment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True, finalize=_finalize
        )
        columns = list(columns)
        self._labels = Labels(output.labels or []) if output is not None else Labels()
        try:
            self._template = _Text(env, prompt.template)
            self._system = _Text(env, prompt.system) if prompt.system else None
            used = jinja2.meta.find_undeclared_variables(env.parse(prompt.template))
            if prompt.system:
                used |= jinja2.meta.find_undeclared_variables(env.parse(prompt.system))
        except jinja2.TemplateSyntaxError as exc:
            raise InputError(f"prompt template, line {exc.lineno}: {exc.message}") from None
        # `{{ labels }}` is output.labels: changing them changes every request
        self.uses_labels = bool(self._labels) and "labels" in used and "labels" not in columns
        if self._labels and "labels" not in columns:
            used.discard("labels")
        self.variables = sorted(used)
        for name in [*self.variables, *prompt.skip_null, *prompt.images]:
            if name not in columns:
                where = (
                    "prompt.skip_null"
                    if name in prompt.skip_null
                    else "prompt.images"
                    if name in prompt.images
                    else "the prompt template"
                )
                raise InputError(
                    f"{where} uses column '{name}', which the input does not have; "
                    f"its columns are: {', '.join(map(printable, columns))}"
                )
        self.skip_null = list(prompt.skip_null)
        self.images = list(prompt.images)
        self.columns = list(dict.fromkeys([*self.variables, *self.skip_null, *self.images]))
        self._reader = (
            ImageReader(image_base, prompt.image_roots, int(prompt.image_max_mb * MIB))
            if self.images
            else None
        )
        self._model = model.name
        self._params = dict(model.params)
        if output is not None:
            fmt = response_format(output, model.structured_output)
            if fmt is not None:
                self._params.setdefault("response_format", fmt)
        self._writer = _BodyWriter(self._model, self._params)
        self._system_text = ""  # the system prompt, when it is the same for every row
        if self._system is not None and self._system.constant:
            self._system_text = self._system.render({})

    def render(self, row: Mapping[str, Any]) -> Request | None:
        """The row's request, or None when `prompt.skip_null` says to skip it."""
        for name in self.skip_null:
            if row.get(name) is None:
                return None
        values = {n: row.get(n) for n in self.variables}  # None stays None: `is none`
        if self._labels:
            values["labels"] = self._labels
        system = None
        if self._system is not None:
            system = self._system_text or self._system.render(values)
        text = self._template.render(values)
        chars = len(text) + (len(system) if system is not None else 0)
        urls: list[str] = []
        if self._reader is not None:
            urls = [self._reader.url(str(row[n])) for n in self.images if row.get(n)]
        if urls:
            messages: list[dict[str, Any]] = []
            if system is not None:
                messages.append({"role": "system", "content": system})
            parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
            parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
            messages.append({"role": "user", "content": parts})
            payload = canonical_body(self._model, messages, self._params)
        elif system is not None:
            payload = self._writer.write([("system", system), ("user", text)])
        else:
            payload = self._writer.write([("user", text)])
        est_tokens = estimate_tokens(chars, self._params) + IMAGE_TOKENS * len(urls)
        return Request(key_of(payload), payload, est_tokens)
