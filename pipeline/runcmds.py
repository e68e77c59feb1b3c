"""The commands that send: run, reparse, compare — and what they print."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path

import polars as pl

from .checks import api_key
from .config import Config, InputConfig
from .configfile import load
from .errors import ConfigError, PipelineError
from .progress import Progress
from .runner import run
from .source import Source
from .summary import EXIT_FAILED_ROWS, EXIT_OK, EXIT_PART_WAY, Summary, summary_path


def _config(args: argparse.Namespace) -> Config:
    return load(args.config, args.overrides)


def _report_run(config: Config, offline: bool, args: argparse.Namespace) -> int:
    progress = Progress(enabled=not getattr(args, "no_progress", False))
    detach = bool(getattr(args, "detach", False))
    if detach and config.run.mode != "batch":
        raise ConfigError("--detach needs run.mode: batch (e.g. --set run.mode=batch)")
    summary = asyncio.run(
        run(config, limit=args.limit, progress=progress, offline=offline, detach=detach)
    )
    print(summary.to_json())
    if detach and not summary.error and summary.exit is None:
        print(
            f"submitted {summary.batch_submitted} requests in batches; "
            f"`pipeline status {args.config}` shows them, and `pipeline run {args.config}` "
            "collects them and writes the output",
            file=sys.stderr,
        )
        return summary.exit_code
    store = config.store_path
    output = Path(summary.output)
    code = summary.exit_code
    if code == EXIT_PART_WAY:
        print(
            f"stopped part-way: {summary.error}; {summary.requests_sent} requests were sent "
            f"and every answer received is kept in the store {store}; the output was not "
            "written; fix the problem and rerun to resume",
            file=sys.stderr,
        )
        return code
    if summary.error:
        print(f"error: {summary.error}", file=sys.stderr)
        return code
    if summary.evaluation_table:
        print(f"against {config.output.gold}:\n{summary.evaluation_table}", file=sys.stderr)
    if summary.stopped:
        print(f"stopped early: {summary.stopped}", file=sys.stderr)
    where = "the output's _error column" if config.output.include_meta else "the store"
    if summary.failed:
        print(
            f"{summary.failed} rows failed; the errors are in {where} ({store}); "
            "rerun to retry them",
            file=sys.stderr,
        )
    if summary.invalid:
        advice = (
            "raise output.retry_invalid to ask again"
            if not config.output.retry_invalid
            else "change the prompt or the parse settings (then `pipeline reparse`)"
        )
        print(
            f"{summary.invalid} answers did not parse; the reasons are in {where}; {advice}",
            file=sys.stderr,
        )
    if summary.pending and offline:
        print(f"{summary.pending} rows have no answer in the store yet", file=sys.stderr)
    if args.limit is not None:
        print(
            f"--limit {args.limit}: wrote {summary.rows} rows to {output}; "
            f"{config.output.url or config.output.path} is left as it was",
            file=sys.stderr,
        )
    print(f"wrote {output} and {summary_path(output)}", file=sys.stderr)
    if summary.output_url:
        print(f"uploaded {output.name} to {summary.output_url}", file=sys.stderr)
    if getattr(args, "report", None):
        _write_run_report(config, summary, Path(args.report), args.config)
    return code


def _write_run_report(config: Config, summary: Summary, path: Path, name: str) -> None:
    """The run's HTML report, from its summary and its output file."""
    from .report import run_report, write_report

    labels: dict[str, int] | None = None
    errors: dict[str, int] = {}
    written = Path(summary.output)
    source = Source(written, None, InputConfig(path=written))
    frame = pl.concat(list(source.chunks(config.run.chunk_rows)), how="vertical_relaxed")
    if config.output.parse != "json" and config.output.column in frame.columns:
        counts = frame.get_column(config.output.column).drop_nulls().value_counts(sort=True)
        labels = {str(value): int(n) for value, n in counts.iter_rows()}
    if "_error" in frame.columns:
        for error in frame.get_column("_error").drop_nulls().to_list():
            kind = str(error).split(":", 1)[0][:60]
            errors[kind] = errors.get(kind, 0) + 1
    data = {"config": name, "summary": summary.to_dict(), "labels": labels, "errors": errors}
    write_report(path, run_report(data))
    print(f"wrote {path}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    return _report_run(_config(args), False, args)


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, format_compare  # only this command needs them

    key = None
    with contextlib.suppress(PipelineError):
        key = api_key(load(args.config, args.overrides))
    progress = Progress(enabled=not args.no_progress)
    report = compare(
        args.config,
        args.overrides,
        args.variant,
        n=args.n,
        how=args.sample,
        seed=args.seed,
        key=key,
        progress=progress,
    )
    print(json.dumps(report, ensure_ascii=False))
    print(format_compare(report), file=sys.stderr)
    if args.report:
        from .comparereport import compare_report
        from .report import write_report

        write_report(Path(args.report), compare_report(report))
        print(f"wrote {args.report}", file=sys.stderr)
    stopped = [v for v in report["variants"] if v["exit_code"] not in (EXIT_OK, EXIT_FAILED_ROWS)]
    for variant in stopped:
        print(f"variant {variant['name']}: {variant['stopped']}", file=sys.stderr)
    return int(stopped[0]["exit_code"]) if stopped else EXIT_OK


def cmd_reparse(args: argparse.Namespace) -> int:
    return _report_run(_config(args), True, args)
