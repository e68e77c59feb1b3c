"""The commands that send no chat request: preview, validate, status, models, store, batch.

Each takes the parsed arguments and returns an exit code; errors rise to `cli.main`, which
turns them into one line on stderr and the exit code each command's help lists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .batches import due_at
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
from .catalog import Catalog, check_model, check_params, key_advice, model_id, price
from .checks import api_key, check_output, check_writable_folder
from .config import DEFAULT_BASE_URL, DEFAULT_KEY_ENV, Config
from .configfile import load
from .errors import (
    CatalogUnavailable,
    ConfigError,
    InputError,
    PipelineError,
    RunStopped,
    StoreError,
)
from .lock import Lock
from .plan import last_run, make_plan
from .redact import redact_url
from .salvage import check, salvage
from .store import Store
from .strict import ENV_NAME
from .summary import EXIT_FAILED_ROWS, EXIT_OK, EXIT_USAGE


def _config(args: argparse.Namespace) -> Config:
    return load(args.config, args.overrides)


def _cost(config: Config, prompt: int, completion: int, found: dict[str, Any] | None) -> Any:
    known = price(config.model, found)
    return None if known is None else round(known.cost(prompt, completion), 10)


def _lookup_model(config: Config) -> dict[str, Any] | None:
    """The model object, when the endpoint serves one and answers (used for prices)."""
    if config.model.pricing is not None or not config.model.preflight:
        return None
    try:
        return check_model(config.model, api_key_or_none(config)).model
    except RunStopped:
        return None


def api_key_or_none(config: Config) -> str | None:
    try:
        return api_key(config)
    except PipelineError:
        return None


def cmd_preview(args: argparse.Namespace) -> int:
    config = _config(args)
    plan = make_plan(config, limit=args.limit, show=args.n)
    found = _lookup_model(config)
    cost = _cost(config, plan.to_send_prompt_tokens, plan.to_send_completion_tokens, found)
    batch = config.run.mode == "batch"
    if batch and cost is not None:
        cost = round(cost * config.run.batch.discount, 10)
    report = {
        "mode": config.run.mode,
        "requests": plan.first,
        "rows": plan.rows,
        "skipped": plan.skipped,
        "unique_requests": plan.unique_requests,
        "already_answered": plan.done,
        "to_send": plan.to_send,
        "estimated_tokens": plan.estimated_tokens,
        "estimated_prompt_tokens_to_send": plan.to_send_prompt_tokens,
        "max_completion_tokens_to_send": plan.to_send_completion_tokens,
        "estimated_cost_usd": cost,  # null: no pricing known; batch: at run.batch.discount
        "url": redact_url(config.model.base_url).rstrip("/")
        + ("/batches" if batch else "/chat/completions"),
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    config = _config(args)
    plan = make_plan(config, show=0)  # opens the store: a damaged or read-only one is named
    check_output(config.output.path, config.input.path)
    if config.output.url is not None:
        from .objectstore import check_bucket  # s3:// outputs only

        check_bucket(config)
    if config.output.commit:
        from .repos import check_local  # a local Oxen repository: the oxen extra

        check_local(config, config.output.path)
    if not config.store_path.exists():
        check_writable_folder(config.store_path.parent, "run.store")
    elif damage := check(config.store_path).problems:
        raise StoreError(
            f"the store {config.store_path} is damaged ({damage[0]}); `pipeline store "
            f"salvage {args.config}` copies every readable answer into a fresh store"
        )
    key = api_key(config)
    rendered = plan.rows - plan.skipped  # rows prompt.skip_null skips are never rendered
    skipped = f"; {plan.skipped} more skipped by prompt.skip_null" if plan.skipped else ""
    aside = f" ({plan.skipped} more skipped by prompt.skip_null)" if plan.skipped else ""
    if plan.row_errors and plan.row_errors == rendered:
        raise InputError(
            f"the prompt fails on every row ({rendered} of {rendered}{skipped}); {plan.first_error}"
        )
    checked = check_model(config.model, key, strict=True)  # unreachable: stops (exit 3)
    if checked.model is not None:
        problems = check_params(dict(config.model.params), checked.model)
        if problems:
            raise PipelineError("; ".join(problems))
    print(  # only once every check passed
        f"ok: {plan.rows} rows, {plan.unique_requests} unique requests, "
        f"{plan.skipped} skipped; output {config.output.url or config.output.path}, store "
        f"{config.store_path}"
    )
    if plan.row_errors:
        print(
            f"warning: the prompt fails on {plan.row_errors} of {rendered} rows{aside}, which a "
            f"run records as failed; first, {plan.first_error}"
        )
    if checked.note:
        print(f"model: {checked.note}")
    if checked.model is not None:
        print(f"model: '{config.model.name}' is served and accepts model.params")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Rows by state, and the last run; exit 1 while any row is left to do."""
    config = _config(args)
    plan = make_plan(config, limit=args.limit, show=0, counts_only=True)
    report = {
        "rows": plan.rows,
        "done": plan.done,
        "invalid": plan.invalid,
        "failed": plan.failed,
        "pending": plan.pending,
        "skipped": plan.skipped,
        "row_errors": plan.row_errors,  # rows the template fails on: a run records them failed
        "first_row_error": plan.first_error,
        "store": str(config.store_path),
        "last_run": last_run(config.store_path),  # null: no run logged
        "batches": open_batches(config),
    }
    left = plan.invalid + plan.failed + plan.pending + plan.row_errors
    args.exit_code = EXIT_FAILED_ROWS if left else EXIT_OK  # kept should stdout be closed
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return int(args.exit_code)


def open_batches(config: Config) -> list[dict[str, Any]]:
    """The store's batches not collected yet: id, state, counts, age and deadline (the
    config's run.batch.deadline after the batch's submission, as a run would measure it)."""
    if not config.store_path.exists():
        return []
    store = Store(config.store_path)
    try:
        records = store.batches()
    finally:
        store.close()
    now = time.time()
    deadline = config.run.batch.deadline
    return [
        {
            "id": r.batch_id,
            "state": r.remote or r.state,
            "requests": r.requests,
            "completed": r.completed,
            "failed": r.failed,
            "age_s": round(now - r.created_at),
            "deadline_in_s": None if (due := due_at(r, deadline)) is None else round(due - now),
        }
        for r in records
    ]


def _catalog(args: argparse.Namespace) -> tuple[Catalog, Callable[[CatalogUnavailable], str]]:
    """The catalog the arguments name, and what to say when it answers with an error: on a
    401/403, which variable should hold the key, as `run` says."""
    base_url, key_env = DEFAULT_BASE_URL, DEFAULT_KEY_ENV
    setting = "the default; --api-key-env names another"
    if args.config:
        config = load(args.config)
        base_url, key_env = config.model.base_url, config.model.api_key_env
        setting = f"model.api_key_env in {args.config}"
    if args.api_key_env:
        if not ENV_NAME.fullmatch(args.api_key_env):
            raise ConfigError(
                "--api-key-env takes the name of an environment variable (letters, digits "
                "and _, not starting with a digit); this looks like a key itself, so it is not "
                "shown: put the key in a variable and pass that variable's name"
            )
        key_env, setting = args.api_key_env, "--api-key-env"
    key = os.environ.get(key_env) or None

    def explain(exc: CatalogUnavailable) -> str:
        if exc.status in (401, 403):
            return key_advice(key_env, key is not None, str(exc), setting)
        return str(exc)

    return Catalog(args.base_url or base_url, key), explain


def cmd_models_list(args: argparse.Namespace) -> int:
    catalog, explain = _catalog(args)
    try:
        models = catalog.list()
    except CatalogUnavailable as exc:
        raise PipelineError(f"cannot list models: {explain(exc)}") from None
    finally:
        catalog.close()
    if models is None:
        raise PipelineError("the endpoint serves no model list (GET /models answered 404)")
    for item in models:
        name = model_id(item)
        if not args.search or args.search.lower() in name.lower():
            print(name)
    return EXIT_OK


def cmd_models_show(args: argparse.Namespace) -> int:
    catalog, explain = _catalog(args)
    try:
        found = catalog.find(args.model_id)
    except CatalogUnavailable as exc:
        raise PipelineError(f"cannot read model '{args.model_id}': {explain(exc)}") from None
    finally:
        catalog.close()
    if found is None:
        raise RunStopped(
            f"the endpoint does not serve model '{args.model_id}' (neither GET /models/"
            f"{args.model_id} nor GET /models has it); `pipeline models list` shows what it serves"
        )
    print(json.dumps(found, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_store_check(args: argparse.Namespace) -> int:
    path = _config(args).store_path
    health = check(path)
    if not health.problems:
        print(f"ok: {path}, {health.answers} answers stored")
        return EXIT_OK
    print(f"damaged: {path}")
    for problem in health.problems:
        print(f"  {problem}")
    print(
        f"`pipeline store salvage {args.config}` copies every readable answer into a fresh store",
        file=sys.stderr,
    )
    return EXIT_USAGE


def cmd_store_salvage(args: argparse.Namespace) -> int:
    path = _config(args).store_path
    done = salvage(path)
    print(f"kept {done.kept} answers in a fresh store at {path}")
    print(f"the damaged file is now {done.damaged}")
    if done.skipped:
        stretches = "stretch" if done.skipped == 1 else "stretches"
        print(
            f"skipped {done.skipped} unreadable {stretches}; "
            "the next run sends the requests whose answers were there"
        )
    return EXIT_OK


def cmd_batch_export(args: argparse.Namespace) -> int:
    """The unanswered requests as batch input files: OUT, OUT.2 ..., each whole."""
    config = _config(args)
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
    config = _config(args)
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
