"""The commands that look at one job and send no chat request: preview, validate, status,
and store check / salvage.

Each takes the parsed arguments and returns an exit code; errors rise to `cli.main`, which
turns them into one line on stderr and the exit code each command's help lists. The other
families: runcmds.py (run, reparse, compare), modelcmds.py (models), batchcmds.py (batch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .batchcollect import described, due_at
from .catalog import check_model, check_params, price
from .checks import api_key, check_output, check_writable_folder
from .config import Config
from .configfile import load
from .errors import InputError, PipelineError, RunStopped, StoreError
from .plan import last_run, make_plan
from .redact import redact_url
from .salvage import check, salvage
from .store import Store
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
        "batch_pending": plan.batch_pending,  # rows in open batches: waited for, not sent
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
    ray = None
    if config.run.engine == "ray":  # as a run: Ray installed, the cluster reachable
        from .raycluster import check as check_ray

        ray = check_ray(config)  # starts and joins nothing
    plan = make_plan(config, show=0)  # opens the store: a damaged or read-only one is named
    check_output(config.output.path, config.input.path)
    if config.output.url is not None:
        from .s3output import check_bucket  # s3:// outputs only

        check_bucket(config)
    if config.output.repo is not None:
        from .repos import check_output_repo  # oxen:// outputs only

        check_output_repo(config)
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
    if ray is not None:
        print(f"ray: {ray}")
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
        "batch_pending": plan.batch_pending,  # of pending: rows whose request is in an open batch
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
            **described(r),
            "age_s": round(now - r.created_at),
            "deadline_in_s": None if (due := due_at(r, deadline)) is None else round(due - now),
        }
        for r in records
    ]


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
