"""Checks before spending: what can be found wrong without sending a chat request.

`run` makes them before its first request and `validate` reports them, so a problem with
the key, the output, the store or the answer columns costs nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from .answers import output_columns, traced
from .config import Config
from .errors import ConfigError, InputError, OutputError, printable
from .parse import Parser
from .redact import redact_url
from .source import FORMATS, table_format

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def api_key(config: Config) -> str | None:
    """The key from `model.api_key_env`; required unless the endpoint is on this machine or
    `model.base_url` carries its own credentials (`user:password@`, sent as basic auth)."""
    key = os.environ.get(config.model.api_key_env) or None
    parts = urlsplit(config.model.base_url)
    if parts.username is not None or parts.password is not None:
        if key is not None:
            raise ConfigError(
                f"model.base_url {redact_url(config.model.base_url)} carries a user name and "
                f"password, and {config.model.api_key_env} holds a key: both would be sent as "
                "the Authorization header; take the user info out of the URL, or unset "
                f"{config.model.api_key_env} (config key model.api_key_env)"
            )
        return None
    if key is None and (parts.hostname or "") not in LOCAL_HOSTS:
        raise ConfigError(
            f"environment variable {config.model.api_key_env} is not set; put your API key "
            f"for {redact_url(config.model.base_url)} there (config key model.api_key_env)"
        )
    return key


def check_new_columns(config: Config, columns: list[str]) -> None:
    """The answer (and meta) columns must be distinct and not overwrite an input column."""
    key = "output.schema" if config.output.parse == "json" else "output.column"
    parser = Parser(config.output)
    new = output_columns(parser, config.output.include_meta, traced(config))
    meta = new[len(parser.columns) :]
    if config.output.include_meta:
        taken = [name for name in parser.columns if name in meta]
        if taken:
            raise ConfigError(
                f"answer column '{taken[0]}' is also a meta column of output.include_meta "
                f"({', '.join(meta)}); rename it in {key}"
            )
    clash = [name for name in parser.columns if name in columns]
    if clash:
        raise InputError(
            f"output column '{printable(clash[0])}' already exists in the input; rename it in {key}"
        )
    clash = [name for name in meta if name in columns]
    if clash:
        raise InputError(
            f"input column '{clash[0]}' has the name of a meta column that "
            f"output.include_meta: true adds ({', '.join(meta)}); rename the input column, "
            "or set output.include_meta: false"
        )
    gold = config.output.gold
    if gold is not None and gold not in columns:
        shown = ", ".join(map(printable, columns[:20])) + (", ..." if len(columns) > 20 else "")
        raise InputError(
            f"output.gold: the input has no column '{printable(gold)}' (it has {shown})"
        )


def check_output(path: Path, input_path: Path | None = None) -> None:
    """The output's format is known, it is not the input file, and its folder can take a new
    file."""
    try:
        table_format(path)
    except InputError:
        known = ", ".join(sorted(FORMATS))
        raise OutputError(
            f"output.path {path}: unknown table format '{path.suffix}'; use one of {known}"
        ) from None
    if input_path is not None and same_file(path, input_path):
        raise ConfigError(
            f"output.path {path} is the input file (input.path {input_path}): the run would "
            "overwrite its own input; set output.path to another file"
        )
    check_writable_folder(path.parent, "output.path")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same resolved path, or one file under two names
    (a hard link, a case-insensitive file system)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_writable_folder(folder: Path, key: str) -> None:
    """`folder` exists (or is made) and a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pipeline-probe-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"cannot write in {folder} ({key}): {exc.strerror or exc}; "
            f"make it writable or change {key}"
        ) from None


def check_report(path: Path) -> None:
    """A --report page can be written at `path`: checked before anything is sent."""
    if path.is_dir():
        raise OutputError(f"--report {path} is a folder; give a file name, such as report.html")
    folder = next((parent for parent in path.parents if parent.exists()), path.parent)
    if not folder.is_dir():
        raise OutputError(f"--report {path}: {folder} is a file, not a folder; give another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".pipeline-probe-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"--report {path}: cannot write in {path.parent}: {exc.strerror or exc}; "
            "give another path"
        ) from None
