"""The `pipeline batch` commands, for batches run outside `pipeline run` (`vllm run-batch`,
an upload by hand); neither sends a chat request.

export: the requests the store has no answer for -> Batch API input files (batchfile.py).
import: batch output and error files -> answers and failures in the store, under its lock,
as a run would put them (batchresults.py). Each prints one JSON object on stdout and what
to do next on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .batchfile import (
    MB,
    Tally,
    part_path,
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
from .configfile import load
from .errors import InputError
from .lock import Lock
from .store import Store
from .summary import EXIT_FAILED_ROWS, EXIT_OK, EXIT_USAGE


def cmd_batch_export(args: argparse.Namespace) -> int:
    """The unanswered requests as batch input files: OUT, OUT.2 ..., each whole."""
    config = load(args.config, args.overrides)
    out = Path(args.out)
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
    if tally.in_open_batches:
        print(
            f"warning: {tally.in_open_batches} rows are not exported: their requests are in "
            f"open batches ({', '.join(batch_ids)}), which will answer them; `pipeline run "
            f"{args.config} --set run.mode=batch` collects them, `pipeline status "
            f"{args.config}` shows them",
            file=sys.stderr,
        )
    if tally.row_errors:
        print(
            f"warning: the prompt fails on {tally.row_errors} of {tally.rows} rows; they are not "
            "exported (a run records them as failed)",
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
            f"wrote {tally.requests} requests to {names}; once a batch server has answered "
            f"them, `pipeline batch import {args.config} RESULTS...` stores the answers",
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
    with Lock(config.store_path):
        store = Store(config.store_path)
        try:
            for path in paths:
                try:
                    with path.open("rb") as handle:
                        reader = ResultReader(file_lines(handle), str(path))
                        store_results(store, reader, wanted, imported)
                except OSError as exc:
                    raise InputError(
                        f"cannot read results file {path}: {exc.strerror or exc}"
                    ) from exc
                files.append({"path": str(path), "lines": reader.lines_read})
                lost += reader.unreadable
                requests += reader.requests
                unreadable += reader.first[: 5 - len(unreadable)]
        finally:
            store.close()
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
        print(
            f"{requests} lines are batch requests (method, url, body), not results: did you "
            "import the file `pipeline batch export` wrote? Import what the batch server "
            "wrote (the batch's output file, `vllm run-batch -o RESULTS`); these lines "
            "change no row",
            file=sys.stderr,
        )
    if imported.not_this_config and imported.not_this_config == lines:
        print(
            f"none of its {lines} lines match this config's requests: was it made from "
            f"another config or an earlier prompt? ({args.config})",
            file=sys.stderr,
        )
    elif imported.not_this_config:
        print(
            f"skipped {imported.not_this_config} lines whose custom_id is no request of "
            f"{args.config} (another config's, or an earlier prompt's)",
            file=sys.stderr,
        )
    if lost > requests:
        first = next((u for u in unreadable if u.why != A_REQUEST), unreadable[0])
        print(
            f"{lost} lines could not be read, first {first.file} line {first.line}: "
            f"{first.why}; their requests stay unanswered",
            file=sys.stderr,
        )
    if imported.failed:
        print(
            f"{imported.failed} requests failed in the batch; `pipeline run {args.config}` "
            "sends them online",
            file=sys.stderr,
        )
    if lines and not matched:
        print(f"nothing imported into {config.store_path}", file=sys.stderr)
        return int(args.exit_code)
    print(
        f"imported {imported.ok} answers into {config.store_path}; `pipeline run {args.config}` "
        "writes the output from the store",
        file=sys.stderr,
    )
    return int(args.exit_code)
