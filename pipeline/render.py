"""Render stage: a row of the table -> a chat-completions `Request` with its store key.

The key is a versioned hash of the canonical request (model, messages, params), so an
identical request is sent once and a changed template or parameter asks anew.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import jinja2
import jinja2.meta

from .config import ModelConfig, PromptConfig
from .errors import InputError
from .records import Request

KEY_VERSION = "r1"
DEFAULT_RESERVE = 256  # completion tokens reserved when params set no max_tokens


def request_key(model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> str:
    """`r1:` + sha256 of the canonical JSON of the request; a documented, stable contract."""
    canonical = json.dumps(
        {"model": model, "messages": messages, "params": dict(params)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f"{KEY_VERSION}:{hashlib.sha256(canonical.encode()).hexdigest()}"


def estimate_tokens(text_chars: int, params: Mapping[str, Any]) -> int:
    """Prompt tokens guessed at 4 characters each, plus the completion budget."""
    reserve = params.get("max_tokens") or params.get("max_completion_tokens") or DEFAULT_RESERVE
    return text_chars // 4 + 1 + int(reserve)


class Renderer:
    """Turns rows into requests; checks the template against the columns up front."""

    def __init__(self, prompt: PromptConfig, model: ModelConfig, columns: Iterable[str]) -> None:
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        columns = list(columns)
        try:
            self._template = env.from_string(prompt.template)
            self._system = env.from_string(prompt.system) if prompt.system else None
            used = jinja2.meta.find_undeclared_variables(env.parse(prompt.template))
            if prompt.system:
                used |= jinja2.meta.find_undeclared_variables(env.parse(prompt.system))
        except jinja2.TemplateSyntaxError as exc:
            raise InputError(f"prompt template, line {exc.lineno}: {exc.message}") from None
        self.variables = sorted(used)
        for name in [*self.variables, *prompt.skip_null]:
            if name not in columns:
                where = "prompt.skip_null" if name in prompt.skip_null else "the prompt template"
                raise InputError(
                    f"{where} uses column '{name}', which the input does not have; "
                    f"its columns are: {', '.join(columns)}"
                )
        self.skip_null = list(prompt.skip_null)
        self._model = model.name
        self._params = dict(model.params)

    def render(self, row: Mapping[str, Any]) -> Request | None:
        """The row's request, or None when `prompt.skip_null` says to skip it."""
        if any(row.get(name) is None for name in self.skip_null):
            return None
        values = {name: "" if row.get(name) is None else row[name] for name in self.variables}
        messages: list[dict[str, Any]] = []
        if self._system is not None:
            messages.append({"role": "system", "content": self._system.render(values)})
        messages.append({"role": "user", "content": self._template.render(values)})
        chars = sum(len(m["content"]) for m in messages)
        body = {"model": self._model, "messages": messages, **self._params}
        return Request(
            key=request_key(self._model, messages, self._params),
            body=body,
            est_tokens=estimate_tokens(chars, self._params),
        )
