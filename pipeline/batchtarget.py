"""Where `pipeline batch export` may write: never over the store (or the files beside
it), the config, its input or output, or a file that is no batch input file. OUT and each
later part name (OUT.2, OUT.3 ...) already there are checked before anything is read or
written; an earlier export may be written over.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from .batchfile import MB, part_path
from .batchresults import A_REQUEST, result_of
from .checks import same_file
from .config import Config
from .errors import OutputError


def _kept(config: Config, config_file: Path) -> list[tuple[Path, str]]:
    """The files an export must never overwrite, each with what it is."""
    store = config.store_path
    beside = (
        ("-wal", "write-ahead log"),
        ("-shm", "shared-memory file"),
        ("-journal", "journal"),
        (".lock", "lock"),
    )
    return [
        (store, f"the store {store}, which holds every answer paid for"),
        *(
            (store.with_name(store.name + end), f"the store's {what} ({store})")
            for end, what in beside
        ),
        (config.input.path, "the config's input file (input.path)"),
        (config.output.path, "the config's output file (output.path)"),
        (config_file, "the config file itself"),
    ]


def _parts_there(out: Path, kept: Iterable[Path]) -> list[tuple[int, Path]]:
    """(number, path) of OUT and of each later part name (OUT.2, OUT.3 ...) that is a file
    already, or one of the `kept` files: what an export to `out` might overwrite."""
    name = re.compile(rf"{re.escape(out.stem)}\.([1-9][0-9]*){re.escape(out.suffix)}")
    folder = out.parent.resolve()
    names = [p.name for p in kept if p.parent.resolve() == folder]
    if out.parent.is_dir():
        names += [entry.name for entry in out.parent.iterdir()]
    numbers = {int(m[1]) for n in names if (m := name.fullmatch(n)) and int(m[1]) > 1}
    return [(1, out)] + [(n, part_path(out, n)) for n in sorted(numbers)]


def _no_batch_input(path: Path, max_bytes: int) -> str | None:
    """Why the file at `path` is no batch input file that an export may overwrite (None: it
    is one, empty, or not there). A batch input file's first line is a request."""
    if not path.exists():
        return None
    if not path.is_file():
        return "a folder" if path.is_dir() else "not a regular file"
    try:
        with path.open("rb") as handle:
            head = handle.read(64)  # a binary file is not read on to its first newline
            handle.seek(0)
            line = handle.readline(max_bytes + 1) if head.lstrip().startswith(b"{") else head
    except OSError as exc:
        return f"a file that cannot be read ({exc.strerror or exc})"
    if not line.strip():
        return None if not line else "no batch input file (its first line is blank)"
    if not line.lstrip().startswith(b"{"):
        return "no batch input file (its first line is not a JSON object)"
    try:
        result_of(line, max_bytes=max_bytes)
    except ValueError as exc:
        if str(exc) == A_REQUEST:
            return None  # an earlier export: its requests are written again as they stand
        return f"no batch input file (its first line is no batch request: {exc})"
    return "a file of batch results, not requests (`pipeline batch import` reads it)"


def check_out(config: Config, config_file: Path, out: Path) -> None:
    """Refuse, before anything is read or written, an OUT whose parts would overwrite the
    store, the config, its input or output, or a file that is no batch input."""
    kept = _kept(config, config_file)
    max_bytes = int(config.run.batch.max_file_mb * MB)
    for number, path in _parts_there(out, (p for p, _ in kept)):
        what = next((what for p, what in kept if same_file(path, p)), None)
        what = what or _no_batch_input(path, max_bytes)
        if what is None:
            continue
        where = (
            f"OUT {path}"
            if number == 1
            else f"{path}, part {number}'s name should the export to {out} need {number} "
            f"files ({part_path(out, 2).name}, {part_path(out, 3).name} ... after the first),"
        )
        raise OutputError(
            f"{where} is {what}: the export would overwrite it; give OUT a new file name, "
            "such as requests.jsonl (an earlier export may be written over); nothing was "
            "written"
        )
