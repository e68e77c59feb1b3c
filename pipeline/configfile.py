"""Config stage: YAML file -> one frozen, validated `Config`.

Unknown keys, keys given twice, wrong types and missing keys are errors that name the key
and its line; what the user typed is quoted through `redact.masked`, as it may hold a key.
`${VAR}` / `${VAR:-default}` are expanded from the environment; relative paths are taken
from the config file's folder; `--set a.b=value` overrides any key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .config import Config
from .errors import ConfigError
from .redact import masked

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MERGE = "tag:yaml.org,2002:merge"
Lines = dict[tuple[str, ...], int]
Expanded = dict[tuple[str, ...], list[str]]  # key -> the ${VAR} names its value was made from


class _Loader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (YAML would keep the last
    silently, dropping a whole section or setting)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str] = []  # the keys above the node being composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        value_of = isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.Node)
        if value_of:  # the value of the key node `index`
            self._path.append(str(index.value))
        try:
            return super().compose_node(parent, index)
        finally:
            if value_of:
                self._path.pop()

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                continue  # `<<: *defaults` merges; the mapping's own keys override those
            line, key = key_node.start_mark.line + 1, (key_node.tag, key_node.value)
            if key in seen:
                dotted = masked(".".join([*self._path, str(key_node.value)]))
                where = f"on line {line}" if seen[key] == line else f"lines {seen[key]} and {line}"
                raise ConfigError(
                    f"config key '{dotted}' is defined twice, {where}; write it once (YAML "
                    "would keep only the last)"
                )
            seen[key] = line
        return node


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, expand, override and validate the config file at `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config {path}: not UTF-8 text ({exc.reason})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        # from None: YAML's own error quotes the line as it is, and a traceback would show it
        raise ConfigError(f"{path}: invalid YAML{_yaml_problem(exc, text)}") from None
    except ConfigError as exc:  # a key given twice
        raise ConfigError(f"{path}: {exc}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections (input, prompt, ...)")
    lines: Lines = {}
    _key_lines(node, (), lines)
    for position, item in enumerate(overrides or [], 1):
        _apply_override(data, item, lines, position)
    expanded: Expanded = {}
    data = _expand(data, (), lines, expanded)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, lines, expanded)}") from None
    return _resolve_paths(config, path.parent)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """`(line N): what is wrong (column C); line N is: its text`, N and C being where the
    problem starts; the line and YAML's words (which may quote it) are shown masked.

    The parser's `problem_mark` is where it gave up: for a quote or bracket never closed,
    that is the end of the file, so the `context_mark` (where the quote opened) is named.
    `str(exc)` is not used for a marked error: it quotes the line as it is.
    """
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = ", ".join(part for part in (exc.context, exc.problem) if part) or "unparsable"
    else:
        problem = str(exc)
    problem = masked(problem)
    mark = getattr(exc, "problem_mark", None)
    start = getattr(exc, "context_mark", None)
    if mark is not None and start is not None and not text[mark.index :].strip():
        mark = start
    if mark is None:
        return f": {problem}"
    lines = text.splitlines() or [""]
    number = min(mark.line + 1, len(lines))
    shown = masked(lines[number - 1].strip())
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    return f" (line {number}): {problem} (column {mark.column + 1}); line {number} is: {shown}"


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


def _apply_override(data: dict[str, Any], item: str, lines: Lines, position: int) -> None:
    name, sep, raw = item.partition("=")
    if not sep or not name.strip():
        raise ConfigError(
            f"--set #{position} expects KEY=VALUE, e.g. run.concurrency=8; got {masked(item)!r}"
        )
    key = tuple(name.strip().split("."))
    if raw.startswith("@"):  # the text of a file, as it is: a template, a system prompt
        try:
            value: Any = Path(raw[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"--set {masked(name)}=@{raw[1:]}: cannot read the file: {exc}"
            ) from None
    else:
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
    target = data
    for part in key[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {masked(name)}: {masked(part)!r} is not a section")
        target = child
    target[key[-1]] = value
    lines[key] = -1


def _expand(value: Any, key: tuple[str, ...], lines: Lines, expanded: Expanded) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, (*key, str(k)), lines, expanded) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, key, lines, expanded) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    expanded[key] = [match.group(1) for match in _VAR.finditer(value)]

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is not None and (found or default is None):
            return found
        if default is not None:
            return default
        name = masked(name)
        raise ConfigError(
            f"config key {masked('.'.join(key))}{_where(key, lines)}: environment variable "
            f"{name} is not set (use ${{{name}:-default}} for a fallback)"
        )

    return _VAR.sub(substitute, value)


def _describe(exc: ValidationError, lines: Lines, expanded: Expanded) -> str:
    messages = []
    for error in exc.errors()[:5]:
        key = tuple(str(part) for part in error["loc"])
        dotted = masked(".".join(key))
        where = _where(key, lines)
        if error["type"] == "env_name" and expanded.get(key):
            name = masked(expanded[key][0])
            messages.append(
                f"config key '{dotted}'{where}: ${{{name}}} is replaced by the value of "
                f"{name}, which is not a variable name and looks like a key itself, so it is "
                f"not shown; write the variable's name instead: {key[-1]}: {name}"
            )
        elif error["type"] == "extra_forbidden":
            messages.append(f"unknown key '{dotted}'{where}")
        elif error["type"] == "missing":
            messages.append(
                f"missing required key '{dotted}'{where.replace('line', 'in section at line')}"
            )
        else:
            messages.append(f"config key '{dotted}'{where}: {masked(error['msg'])}")
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
