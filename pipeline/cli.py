"""The `pipeline` command: parses arguments, calls the library, sets the exit code.

`build_parser` declares every command with its arguments and its epilog (clihelp.py); the
handlers live with their family: runcmds.py, commands.py, modelcmds.py, batchcmds.py.
`main` runs the handler and turns what it raises into one line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .batchcmds import cmd_batch_export, cmd_batch_import
from .clihelp import (
    CHECK_EPILOG,
    COMPARE_EPILOG,
    EPILOG,
    EXPORT_EPILOG,
    IMPORT_EPILOG,
    MODELS_EPILOG,
    REPARSE_EPILOG,
    STATUS_EPILOG,
    STORE_EPILOG,
    VALIDATE_EPILOG,
)
from .commands import cmd_preview, cmd_status, cmd_store_check, cmd_store_salvage, cmd_validate
from .config import DEFAULT_BASE_URL, DEFAULT_KEY_ENV
from .configfile import load
from .errors import (
    LockError,
    PipelineError,
    RunStopped,
)
from .modelcmds import cmd_models_list, cmd_models_show
from .redact import masked
from .runcmds import cmd_compare, cmd_reparse, cmd_run
from .signals import BY_CODE, exit_code, terminate_like_ctrl_c
from .summary import (
    EXIT_INTERNAL,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
)

Handler = Callable[[argparse.Namespace], int]
LIMIT_HELP = "only the first N rows (1 or more), written beside the output as NAME.first-N.EXT"


def _at_least(low: int) -> Callable[[str], int]:
    """An argument type: a whole number, `low` or more."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {low} or more, got {value}")
        return value

    return whole


_count = _at_least(0)  # rows or requests, 0 or more
_positive = _at_least(1)  # rows, 1 or more


Group = argparse._SubParsersAction  # what `add_subparsers` returns


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors quote what was typed masked: a stray argument
    (`--set model.api_key_env sk-...`, the space for the =) may be a key. Its subcommands'
    parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        super().error(masked(message))


def _subcommand(
    group: Group[_Parser], name: str, help: str, epilog: str
) -> argparse.ArgumentParser:
    """A command with its help as description and its exit codes as epilog."""
    return group.add_parser(
        name,
        help=help,
        description=help,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _config_arguments(sub: argparse.ArgumentParser, handler: Handler) -> None:
    """The arguments of a command over one job: CONFIG, --set and -v."""
    sub.set_defaults(handler=handler)
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pipeline",
        description="Run an LLM over every row of a table, as a YAML config describes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help: str, handler: Handler, epilog: str = CHECK_EPILOG
    ) -> argparse.ArgumentParser:
        sub = _subcommand(commands, name, help, epilog)
        _config_arguments(sub, handler)
        return sub

    sub = command("run", "send one request per row and write the output", cmd_run, EPILOG)
    sub.add_argument("--limit", type=_positive, metavar="N", help=LIMIT_HELP)
    sub.add_argument(
        "--report",
        metavar="FILE.html",
        help="also write an HTML report: status counts, the evaluation (output.gold), the "
        "answers' distribution, tokens and cost, errors by type",
    )
    sub.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    sub.add_argument(
        "--detach",
        action="store_true",
        help="run.mode batch: submit the batches and exit without writing the output (0 "
        "unless rows failed or the budget held requests back); the summary, written beside "
        "the output, counts the rows in batches as pending; a later run collects them "
        "(give --report to that run: with no output to report on, --detach refuses it)",
    )
    sub = command(
        "compare",
        "run the same sample of rows through variants of the config, side by side",
        cmd_compare,
        COMPARE_EPILOG,
    )
    sub.add_argument(
        "-n", type=_positive, default=100, metavar="N", help="rows in the sample (1 or more)"
    )
    sub.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE...]",
        help="a variant: the config with these overrides (as --set; @FILE reads a value from "
        "a file), e.g. mini:model.name=gpt-4o-mini,model.params.temperature=0 (repeatable)",
    )
    sub.add_argument(
        "--sample", choices=["first", "random"], default="first", help="which rows (default first)"
    )
    sub.add_argument("--seed", type=int, default=0, help="the random sample's seed (default 0)")
    sub.add_argument("--report", metavar="FILE.html", help="also write an HTML report there")
    sub.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    sub = command(
        "preview", "render the first requests, estimate tokens and cost; send nothing", cmd_preview
    )
    sub.add_argument("-n", type=_count, default=3, metavar="N", help="requests to show (default 3)")
    sub.add_argument(
        "--limit", type=_positive, metavar="N", help="only the first N rows (1 or more)"
    )
    command(
        "validate",
        "check config, input, template, model and params; send no chat request",
        cmd_validate,
        VALIDATE_EPILOG,
    )
    sub = command(
        "status",
        "count done, invalid, failed, pending and skipped rows from the store; send nothing",
        cmd_status,
        STATUS_EPILOG,
    )
    sub.add_argument(
        "--limit", type=_positive, metavar="N", help="only the first N rows (1 or more)"
    )
    sub = command(
        "reparse",
        "rewrite the output from the store with the current parse settings; send nothing",
        cmd_reparse,
        REPARSE_EPILOG,
    )
    sub.add_argument("--limit", type=_positive, metavar="N", help=LIMIT_HELP)

    models = commands.add_parser("models", help="list or show the models an endpoint serves")
    which = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for name, help, handler in (
        ("list", "list the endpoint's models", cmd_models_list),
        ("show", "show one model object (pricing, request schema)", cmd_models_show),
    ):
        sub = _subcommand(which, name, help, MODELS_EPILOG)
        sub.set_defaults(handler=handler)
        if name == "show":
            sub.add_argument("model_id", help="the model's id")
        else:
            sub.add_argument("--search", metavar="TEXT", help="only ids containing TEXT")
        sub.add_argument("--config", metavar="CONFIG", help="take base_url and key from a config")
        sub.add_argument("--base-url", metavar="URL", help=f"default {DEFAULT_BASE_URL}")
        sub.add_argument("--api-key-env", metavar="VAR", help=f"default {DEFAULT_KEY_ENV}")
        sub.add_argument("-v", "--verbose", action="store_true", help="log debug details")

    store = commands.add_parser("store", help="check the job's store, or salvage a damaged one")
    actions = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    for name, help, handler in (
        ("check", "check the store for damage and count its answers", cmd_store_check),
        ("salvage", "copy every readable answer into a fresh store", cmd_store_salvage),
    ):
        _config_arguments(_subcommand(actions, name, help, STORE_EPILOG), handler)

    batch = commands.add_parser(
        "batch", help="write batch input files, or read batch results into the store"
    )
    steps = batch.add_subparsers(dest="batch_command", required=True, metavar="ACTION")
    sub = _subcommand(
        steps,
        "export",
        "write the requests the store has no answer for as batch input files; send nothing",
        EXPORT_EPILOG,
    )
    _config_arguments(sub, cmd_batch_export)
    sub.add_argument(
        "out",
        metavar="OUT",
        help="the first file, e.g. requests.jsonl; more files are named with .2, .3, ... "
        "before the extension (requests.2.jsonl, requests.3.jsonl)",
    )
    sub = _subcommand(
        steps,
        "import",
        "put batch output and error lines into the store, as a run would; send nothing",
        IMPORT_EPILOG,
    )
    _config_arguments(sub, cmd_batch_import)
    sub.add_argument(
        "results",
        nargs="+",
        metavar="RESULTS",
        help="batch output or error files: OpenAI's, or those of `vllm run-batch -o`",
    )
    return parser


def console() -> int:
    """The `pipeline` command as its own process: `main` after tuning the garbage collector.

    A run allocates a few dozen short-lived objects per row and keeps almost none. Measured
    on 20,000 rows, the default thresholds spent 0.43 CPU-s in collections, mostly
    re-scanning what the imports built; frozen imports and a young generation of 50,000
    objects spend 0.05. Reference counting still frees almost everything at once; only
    cycles wait for the next collection. A process that imports the library keeps its own
    settings.
    """
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the command; returns the exit code."""
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
        with terminate_like_ctrl_c():
            return _dispatch(args)
    except BrokenPipeError:  # the reader went away (`| head`): no error, nothing more to say
        _quiet_closed_streams()
        return int(getattr(args, "exit_code", EXIT_OK))  # the command's, when it set it


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; what it raises becomes one line on stderr and its exit code."""
    try:
        args.exit_code = code = int(args.handler(args))
        sys.stdout.flush()  # a closed stdout shows here, not as noise when Python exits
        return code
    except BrokenPipeError:
        raise
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except RunStopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM outside a run's graceful stop
        code = exit_code(exc)
        print(
            f"{BY_CODE[code].said}: answers so far are in the store; rerun to resume",
            file=sys.stderr,
        )
        return code
    except Exception as exc:  # a bug: one line here, the traceback in a file
        path = _write_traceback(args)
        where = f"the traceback is in {path}" if path else "run with -v for the traceback"
        print(
            f"internal error (a bug in pipeline): {type(exc).__name__}: {exc}; {where}",
            file=sys.stderr,
        )
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        return EXIT_INTERNAL


def _quiet_closed_streams() -> None:
    """Point a closed stdout or stderr at /dev/null, so that Python's flush at exit does
    not fail on it again (the recipe in Python's docs, under signal.SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def _write_traceback(args: argparse.Namespace) -> Path | None:
    """The current exception's traceback in a file beside the store (else the temp folder)."""
    folder = Path(tempfile.gettempdir())
    with contextlib.suppress(Exception):
        folder = load(args.config, args.overrides).store_path.parent
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = folder / f"pipeline-error-{stamp}-{os.getpid()}.log"
    try:
        path.write_text(traceback.format_exc(), encoding="utf-8")
    except OSError:
        return None
    return path
