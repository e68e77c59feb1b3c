"""`make run`: start the local model, run configs/demo.yaml through the CLI, show some rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from local_model import DEFAULT_PORT, available, serve  # noqa: E402

CONFIG = Path("configs/demo.yaml")
OUTPUT = Path("out/demo.parquet")
REPORT = Path("out/demo-report.html")
SERVER_LOG = Path("out/llama-server.log")
SHOW_ROWS = 8
SHOW_COLUMNS = ("id", "message", "expected", "category", "_status")
CLI_STOP_TIMEOUT_S = 30.0


def show_output(path: Path) -> None:
    """Print the first rows of the demo output."""
    frame = pl.read_parquet(path)
    columns = [c for c in SHOW_COLUMNS if c in frame.columns]
    with pl.Config(tbl_rows=SHOW_ROWS, fmt_str_lengths=44, tbl_width_chars=110):
        print(frame.select(columns).head(SHOW_ROWS))
    print(f"{frame.height} rows written to {path}")


def run_cli(env: dict[str, str]) -> int:
    """Run the pipeline CLI on the demo config; its output goes straight to the terminal."""
    command = [sys.executable, "-m", "pipeline", "run", str(CONFIG), "--report", str(REPORT)]
    proc = subprocess.Popen(command, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The CLI got the same Ctrl-C: let it stop cleanly; a second Ctrl-C kills it.
        try:
            return proc.wait(timeout=CLI_STOP_TIMEOUT_S)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
            raise KeyboardInterrupt from None


def main() -> int:
    """Serve the model, run the pipeline on the demo config, print a preview."""
    os.chdir(ROOT)
    reason = available()
    if reason:
        print(f"error: local model unavailable: {reason}", file=sys.stderr)
        return 1
    port = int(os.environ.get("LOCAL_MODEL_PORT", DEFAULT_PORT))
    env = {**os.environ, "LOCAL_MODEL_PORT": str(port)}
    env.setdefault("LOCAL_MODEL_KEY", "local")  # the local server checks no key
    print(f"starting local model server on 127.0.0.1:{port} (log: {SERVER_LOG}) ...", flush=True)
    try:
        with serve(port, log_path=SERVER_LOG):
            code = run_cli(env)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if OUTPUT.exists():
        show_output(OUTPUT)
        print(
            "note: SmolLM2-135M is a tiny model (135 M parameters), so many labels are wrong: "
            "the accuracy against the data's `expected` column is printed above, and "
            f"{REPORT} shows it in full; the demo shows the plumbing, not the quality."
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
