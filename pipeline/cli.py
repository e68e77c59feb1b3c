"""The `pipeline` command: parses arguments, calls the library, sets the exit code.

Exit codes: 0 every row answered (or skipped), 1 some rows failed, 2 config, input or
output error, 3 stopped early (auth failures), 4 another run holds the store, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .config import Config, load
from .errors import ConfigError, InputError, LockError, OutputError, PipelineError
from .plan import make_plan
from .progress import Progress
from .runner import run
from .summary import summary_path

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_STOPPED, EXIT_LOCKED = 0, 1, 2, 3, 4

EPILOG = """exit codes:
  0  every row answered (or skipped)
  1  some rows failed (rerun to retry them)
  2  config, input or output error: nothing was sent
  3  stopped early (e.g. the API key or model was rejected); answered rows are kept
  4  another run is using the same store
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Run an LLM over every row of a table, as a YAML config describes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("config", help="the job's YAML config file")
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set run.concurrency=8 (repeatable)",
        )
        sub.add_argument("-v", "--verbose", action="store_true", help="log debug details")
        return sub

    sub = command("run", "send one request per row and write the output")
    sub.add_argument("--limit", type=int, metavar="N", help="only the first N rows")
    sub.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    sub = command("preview", "render the first requests and estimate the run; send nothing")
    sub.add_argument("-n", type=int, default=3, metavar="N", help="requests to show (default 3)")
    sub.add_argument("--limit", type=int, metavar="N", help="only the first N rows")
    command("validate", "check the config, the input and the template; send nothing")
    sub = command("status", "count done, failed and pending rows from the store")
    sub.add_argument("--limit", type=int, metavar="N", help="only the first N rows")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = load(args.config, args.overrides)
        return int(COMMANDS[args.command](config, args))
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (ConfigError, InputError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: answers so far are in the store; rerun to resume", file=sys.stderr)
        return 130


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    progress = Progress(enabled=not args.no_progress)
    summary = asyncio.run(run(config, limit=args.limit, progress=progress))
    print(summary.to_json())
    if summary.stopped:
        print(f"stopped early: {summary.stopped}", file=sys.stderr)
    elif summary.failed:
        print(
            f"{summary.failed} rows failed; their errors are in the store "
            f"({config.store_path}); rerun to retry them",
            file=sys.stderr,
        )
    print(f"wrote {config.output.path} and {summary_path(config.output.path)}", file=sys.stderr)
    return summary.exit_code


def cmd_preview(config: Config, args: argparse.Namespace) -> int:
    plan = make_plan(config, limit=args.limit, show=args.n)
    report = {
        "requests": plan.first,
        "rows": plan.rows,
        "skipped": plan.skipped,
        "unique_requests": plan.unique_requests,
        "already_answered": plan.done,
        "estimated_tokens": plan.estimated_tokens,
        "estimated_tokens_to_send": plan.estimated_tokens_to_send,
        "url": config.model.base_url.rstrip("/") + "/chat/completions",
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_validate(config: Config, args: argparse.Namespace) -> int:
    plan = make_plan(config, show=0)
    print(
        f"ok: {plan.rows} rows, {plan.unique_requests} unique requests, "
        f"{plan.skipped} skipped; output {config.output.path}, store {config.store_path}"
    )
    return EXIT_OK


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    plan = make_plan(config, limit=args.limit, show=0)
    report = {
        "rows": plan.rows,
        "done": plan.done,
        "failed": plan.failed,
        "pending": plan.pending,
        "skipped": plan.skipped,
        "store": str(config.store_path),
    }
    print(json.dumps(report, indent=2))
    return EXIT_OK


COMMANDS = {"run": cmd_run, "preview": cmd_preview, "validate": cmd_validate, "status": cmd_status}
