"""The `pipeline batch` commands, for batches run outside `pipeline run` (`vllm run-batch`,
an upload by hand); neither sends a chat request.

export: the requests the store has no answer for -> Batch API input files (batchfile.py),
never over the store, the config, its input or output, or a file that is no batch input.
import: batch output and error files -> answers and failures in the store, under its lock,
as a run would put them (batchresults.py); no store is made when nothing is imported. Each
prints one JSON object on stdout and what to do next on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any

from .batchfile import (
    MB,
    Tally,
    part_path,
    prefix,
    request_keys,
    request_line,
    unanswered,
    write_parts,
)
from .batchresults import (
    A_REQUEST,
    Imported,
    ResultReader,
    Unreadable,
    file_lines,
    store_results,
)
from .batchtarget import check_out
from .configfile import load
from .errors import InputError
from .lock import Lock
from .records import Result
from .store import Store
from .summary import EXIT_FAILED_ROWS, EXIT_OK, EXIT_USAGE, counted


def cmd_batch_export(args: argparse.Namespace) -> int:
    """The unanswered requests as batch input files: OUT, OUT.2 ..., each whole."""
    config = load(args.config, args.overrides)
    out = Path(args.out)
    check_out(config, Path(args.config), out)
    limits = config.run.batch
    tally = Tally()
    store = Store(config.store_path) if config.store_path.exists() else None
    try:
        # A request in an open batch (run.mode batch) is being answered: not exported.
        skip: set[str] = set()
        batch_ids: list[str] = []
        if store is not None and (skip := store.open_batch_keys()):
            batch_ids = [r.batch_id or f"part {r.id}" for r in store.batches()]
        requests = unanswered(config, store, skip=skip, tally=tally)
        lines = ((r.key, request_line(r)) for r in requests)
        written = write_parts(
            lines, out, limits.max_requests_per_file, int(limits.max_file_mb * MB)
        )
    finally:
        if store is not None:
            store.close()
    files = [{"path": str(w.path), "requests": w.requests, "bytes": w.bytes} for w in written]
    report = {
        "requests": tally.requests,
        "files": files,
        "rows": tally.rows,
        "already_answered": tally.already_answered,
        "in_open_batches": tally.in_open_batches,
        "skipped": tally.skipped,
        "row_errors": tally.row_errors,
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if held := tally.in_open_batches:
        rows, them = (
            ("1 row is not exported: its request is", "it")
            if held == 1
            else (f"{held} rows are not exported: their requests are", "them")
        )
        print(
            f"warning: {rows} in open batches ({', '.join(batch_ids)}), which will answer "
            f"{them}; `pipeline run {args.config} --set run.mode=batch` collects {them}, "
            f"`pipeline status {args.config}` shows {them}",
            file=sys.stderr,
        )
    if tally.row_errors:
        print(
            f"warning: the prompt fails on {tally.row_errors} of {counted(tally.rows, 'row')}; "
            f"{'it is' if tally.row_errors == 1 else 'they are'} not exported (a run records "
            f"{'it' if tally.row_errors == 1 else 'them'} as failed)",
            file=sys.stderr,
        )
    if not written:
        where = " or is in an open batch" if tally.in_open_batches else ""
        print(
            f"nothing to export: every request has an answer in the store {config.store_path}"
            f"{where}; no file written",
            file=sys.stderr,
        )
    else:
        names = ", ".join(str(w.path) for w in written)
        print(
            f"wrote {counted(tally.requests, 'request')} to {names}; once a batch server has "
            f"answered {'it' if tally.requests == 1 else 'them'}, `pipeline batch import "
            f"{args.config} RESULTS...` stores the answers",
            file=sys.stderr,
        )
    number = len(written) + 1
    while part_path(out, number).exists():
        print(
            f"warning: {part_path(out, number)} is from an earlier export and holds requests "
            "this one does not; delete it rather than send it",
            file=sys.stderr,
        )
        number += 1
    return EXIT_OK


class _StoreWhenNeeded:
    """The store under its lock, opened at the first result to put in it: an import that
    stores nothing makes no store. Where a run may be using the store (it, or its lock
    file, is there) the lock is taken before any line is read, as a run takes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = Lock(path)
        self._locked = False
        self._store: Store | None = None

    def __enter__(self) -> _StoreWhenNeeded:
        if self.path.exists() or self._lock.path.exists():
            self._lock.__enter__()
            self._locked = True
        return self

    def store(self) -> Store:
        """The store, locked and opened (made, if it was not there) on first use."""
        if self._store is None:
            if not self._locked:
                self._lock.__enter__()
                self._locked = True
            self._store = Store(self.path)
        return self._store

    def __exit__(self, *exc: object) -> None:
        try:
            if self._store is not None:
                self._store.close()
        finally:
            if self._locked:
                self._lock.__exit__()


def _of_this_config(
    results: Iterable[Result], wanted: Container[int], imported: Imported
) -> Iterator[Result]:
    """The results of the config's own requests; the others counted as not this config's."""
    for result in results:
        head = prefix(result.key)
        if head is None or head not in wanted:
            imported.not_this_config += 1
        else:
            yield result


def cmd_batch_import(args: argparse.Namespace) -> int:
    """Batch output and error lines into the store, under its lock, as a run would put them."""
    config = load(args.config, args.overrides)
    paths = [Path(name) for name in args.results]
    for path in paths:
        if not path.is_file():
            why = "is not a file" if path.exists() else "does not exist"
            raise InputError(f"results file {path} {why}")
    wanted = request_keys(config)
    imported = Imported()
    files: list[dict[str, Any]] = []
    unreadable: list[Unreadable] = []
    lost = requests = 0
    with _StoreWhenNeeded(config.store_path) as target:
        for path in paths:
            try:
                with path.open("rb") as handle:
                    reader = ResultReader(file_lines(handle), str(path))
                    mine = _of_this_config(reader, wanted, imported)
                    if (opening := next(mine, None)) is not None:
                        results = itertools.chain([opening], mine)
                        store_results(target.store(), results, wanted, imported)
            except OSError as exc:
                raise InputError(f"cannot read results file {path}: {exc.strerror or exc}") from exc
            files.append({"path": str(path), "lines": reader.lines_read})
            lost += reader.unreadable
            requests += reader.requests
            unreadable += reader.first[: 5 - len(unreadable)]
    report = {
        "ok": imported.ok,
        "failed": imported.failed,
        "already_answered": imported.already_answered,
        "skipped_not_this_config": imported.not_this_config,
        "unreadable": lost,
        "first_unreadable": [vars(u) for u in unreadable],
        "files": files,
        "store": str(config.store_path),
    }
    lines = sum(int(f["lines"]) for f in files)
    matched = imported.ok + imported.failed + imported.already_answered
    args.exit_code = (  # kept should stdout be closed
        EXIT_USAGE
        if lines and not matched
        else EXIT_FAILED_ROWS
        if imported.failed or lost
        else EXIT_OK
    )
    print(json.dumps(report, indent=2, ensure_ascii=False))
    if requests:
        are, these = (
            ("1 line is a batch request (method, url, body), not a result", "this line changes")
            if requests == 1
            else (
                f"{requests} lines are batch requests (method, url, body), not results",
                "these lines change",
            )
        )
        print(
            f"{are}: did you import the file `pipeline batch export` wrote? Import what the "
            "batch server wrote (the batch's output file, `vllm run-batch -o RESULTS`); "
            f"{these} no row",
            file=sys.stderr,
        )
    if imported.not_this_config and imported.not_this_config == lines:
        names = ", ".join(str(path) for path in paths)
        its, was = ("its", "was it") if len(paths) == 1 else ("their", "were they")
        none = (
            f"{its} only line matches none of this config's requests"
            if lines == 1
            else f"none of {its} {lines} lines match this config's requests"
        )
        print(
            f"{names}: {none}: {was} made from another config or an earlier prompt? (the "
            f"config is {args.config})",
            file=sys.stderr,
        )
    elif imported.not_this_config:
        print(
            f"skipped {counted(imported.not_this_config, 'line')} whose custom_id is no request of "
            f"{args.config} (another config's, or an earlier prompt's)",
            file=sys.stderr,
        )
    if lost > requests:
        first = next((u for u in unreadable if u.why != A_REQUEST), unreadable[0])
        could, their = (
            ("line could", "its request stays")
            if lost == 1
            else ("lines could", "their requests stay")
        )
        print(
            f"{lost} {could} not be read, first {first.file} line {first.line}: "
            f"{first.why}; {their} unanswered",
            file=sys.stderr,
        )
    if imported.failed:
        print(
            f"{counted(imported.failed, 'request')} failed in the batch; "
            f"`pipeline run {args.config}` sends them online",
            file=sys.stderr,
        )
    if not matched:
        made = "" if config.store_path.exists() else " (no store was made)"
        print(f"nothing imported into {config.store_path}{made}", file=sys.stderr)
        return int(args.exit_code)
    print(
        f"imported {counted(imported.ok, 'answer')} into {config.store_path}; `pipeline run "
        f"{args.config}` writes the output from the store",
        file=sys.stderr,
    )
    return int(args.exit_code)
