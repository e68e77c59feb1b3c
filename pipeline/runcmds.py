"""The commands that send: run, reparse, compare — and what they print."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
from pathlib import Path

import polars as pl

from .checks import api_key, check_report
from .config import Config, InputConfig
from .configfile import load
from .errors import ConfigError, OutputError, PipelineError
from .progress import Progress
from .runner import run
from .signals import BY_CODE, stoppable
from .source import Source
from .summary import EXIT_FAILED_ROWS, EXIT_OK, EXIT_PART_WAY, Summary, counted


def _config(args: argparse.Namespace) -> Config:
    return load(args.config, args.overrides)


def _report_run(config: Config, offline: bool, args: argparse.Namespace) -> int:
    progress = Progress(enabled=not getattr(args, "no_progress", False))
    detach = bool(getattr(args, "detach", False))
    if detach and config.run.mode != "batch":
        raise ConfigError("--detach needs run.mode: batch (e.g. --set run.mode=batch)")
    report = None
    if getattr(args, "report", None):
        if not detach:  # with --detach, `run` refuses the report before anything is made
            check_report(Path(args.report))
        report = functools.partial(
            _write_run_report, config, path=Path(args.report), name=args.config
        )
    summary = asyncio.run(
        stoppable(
            run(
                config,
                limit=args.limit,
                progress=progress,
                offline=offline,
                detach=detach,
                report=report,
            )
        )
    )
    args.exit_code = summary.exit_code  # `cli.main` exits with it should stdout be closed
    print(summary.to_json())
    if detach and not summary.error and summary.exit is None:
        again = args.config  # as run again: in batch mode, which waits for the batches
        if any(o.partition("=")[0].strip() == "run.mode" for o in args.overrides):
            again += " --set run.mode=batch"
        print(
            f"submitted {summary.batch_submitted} requests in batches; "
            f"`pipeline status {args.config}` shows them, and `pipeline run {again}` "
            "collects them and writes the output",
            file=sys.stderr,
        )
        if summary.stopped:
            print(f"stopped early: {summary.stopped}", file=sys.stderr)
        return summary.exit_code
    store = config.store_path
    output = Path(summary.output)
    code = summary.exit_code
    kept = "was written" if summary.output in summary.written else "was left as it was"
    if code == EXIT_PART_WAY:
        print(
            f"stopped part-way: {summary.error}; {_sent(summary)} and every answer received "
            f"is kept in the store {store}; the output {kept}; "
            "fix the problem and rerun to resume",
            file=sys.stderr,
        )
        _say_written(summary)
        return code
    if summary.error:
        print(f"error: {summary.error}", file=sys.stderr)
        _say_written(summary)
        return code
    if code in BY_CODE:  # a signal stopped the run
        print(
            f"{BY_CODE[code].said}: answers so far are in the store {store}; the output "
            f"{kept}; rerun to resume",
            file=sys.stderr,
        )
        _say_written(summary)
        return code
    if summary.evaluation_table:
        print(f"against {config.output.gold}:\n{summary.evaluation_table}", file=sys.stderr)
    if summary.stopped:
        print(f"stopped early: {summary.stopped}", file=sys.stderr)
    _say_failed(config, summary, args.config)
    where = "the output's _error column" if config.output.include_meta else "the store"
    if summary.invalid:
        advice = (
            "raise output.retry_invalid to ask again"
            if not config.output.retry_invalid
            else "change the prompt or the parse settings (then `pipeline reparse`)"
        )
        answers = "1 answer" if summary.invalid == 1 else f"{summary.invalid} answers"
        print(
            f"{answers} did not parse; the reasons are in {where}; {advice}",
            file=sys.stderr,
        )
    if summary.pending and offline:
        rows = "1 row has" if summary.pending == 1 else f"{summary.pending} rows have"
        print(f"{rows} no answer in the store yet", file=sys.stderr)
    if args.limit is not None and summary.output in summary.written:
        print(
            f"--limit {args.limit}: wrote {summary.rows} rows to {output}; "
            f"{config.output.url or config.output.path} is left as it was",
            file=sys.stderr,
        )
    _say_written(summary)
    if summary.output_url:
        print(f"uploaded {output.name} to {summary.output_url}", file=sys.stderr)
    return code


def _sent(summary: Summary) -> str:
    """What went out before a run stopped part-way: '12 requests were sent', and what its
    batches took and gave back."""
    n = summary.requests_sent
    said = f"{counted(n, 'request')} {'was' if n == 1 else 'were'} sent"
    if summary.batch_submitted:
        said += f", {counted(summary.batch_submitted, 'request')} submitted in batches"
    if summary.batch_collected:
        said += f", {counted(summary.batch_collected, 'row')} answered from batches"
    return said


def _say_failed(config: Config, summary: Summary, name: str) -> None:
    """Where the failed rows' errors are, and whether a rerun can help: a failed request
    is in the store and sent again; a row the template or an image fails on is not."""
    meta = config.output.include_meta
    if sent := summary.failed - summary.row_errors:
        where = "the output's _error column and the store" if meta else "the store"
        print(
            f"{counted(sent, 'row')} failed; the errors are in {where} "
            f"({config.store_path}); rerun to retry them",
            file=sys.stderr,
        )
    if summary.row_errors:
        where = (
            "the errors are in the output's _error column"
            if meta
            else f"`pipeline status {name}` shows the first (output.include_meta: true puts "
            "each in the output's _error column)"
        )
        print(
            f"{counted(summary.row_errors, 'row')} failed before sending (the template or an image "
            f"fails on them); {where}; a rerun fails them again: fix the prompt or the data",
            file=sys.stderr,
        )


def _say_written(summary: Summary) -> None:
    """Name the files the run wrote, and only those."""
    if summary.written:
        *first, last = summary.written
        print(f"wrote {', '.join(first)}{' and ' if first else ''}{last}", file=sys.stderr)


def _write_run_report(config: Config, summary: Summary, path: Path, name: str) -> None:
    """The run's HTML report, from its summary and its output file; an output error
    when it cannot be written."""
    from .report import run_report

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
    _save_report(path, run_report(data), f"the output {written} and the answers are kept")
    summary.written.append(str(path))


def _save_report(path: Path, html: str, kept: str) -> None:
    """Write a --report page; an output error that names it when that fails."""
    from .report import write_report

    try:
        write_report(path, html)
    except OSError as exc:
        raise OutputError(
            f"cannot write the report {path} (--report): {exc.strerror or exc}; {kept}"
        ) from None


def cmd_run(args: argparse.Namespace) -> int:
    return _report_run(_config(args), False, args)


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, format_compare  # only this command needs them

    if args.report:
        check_report(Path(args.report))
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
    stopped = [v for v in report["variants"] if v["exit_code"] not in (EXIT_OK, EXIT_FAILED_ROWS)]
    args.exit_code = int(stopped[0]["exit_code"]) if stopped else EXIT_OK
    print(json.dumps(report, ensure_ascii=False))
    print(format_compare(report), file=sys.stderr)
    if args.report:
        from .comparereport import compare_report

        kept = "the comparison is printed above and its answers are in the store"
        _save_report(Path(args.report), compare_report(report), kept)
        print(f"wrote {args.report}", file=sys.stderr)
    for variant in stopped:
        print(f"variant {variant['name']}: {variant['stopped']}", file=sys.stderr)
    return int(args.exit_code)


def cmd_reparse(args: argparse.Namespace) -> int:
    return _report_run(_config(args), True, args)
