"""What the CLI says and writes at the end, end to end: a closed stdout, the files it names,
where failed rows' errors are, `--limit`, and a `--report` path that cannot be written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import polars as pl
from e2e import ROOT, run_cli, write_config
from fake_server import FakeServer

SECRET = "sk-output-test-0123456789abcdef"
NOISE = ("Traceback", "internal error", "BrokenPipe", "Exception ignored", SECRET)


def texts(folder: Path, values: list[str]) -> None:
    pl.DataFrame({"id": range(len(values)), "text": values}).write_csv(folder / "in.csv")


def no_error_logs(folder: Path) -> None:
    assert not list(folder.rglob("pipeline-error-*.log"))


def closed_stdout(*args: str, stderr_too: bool = False) -> tuple[int, str]:
    """`python -m pipeline ARGS` writing to a pipe whose reader has gone, as under `| head`
    once head has exited; the exit code and what stderr said (nothing when it is the pipe)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", *args],
            stdout=write,
            stderr=write if stderr_too else subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TEST_KEY": SECRET},
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    return done.returncode, (done.stderr or b"").decode()


def test_a_reader_that_stops_early_is_no_error(tmp_path: Path) -> None:
    texts(tmp_path, [f"row {i} " + "x" * 200 for i in range(400)])
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url)
        # preview: far more than a pipe holds; the reader takes one line and goes (`| head -1`)
        with subprocess.Popen(
            [sys.executable, "-m", "pipeline", "preview", str(config), "-n", "400"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ) as process:
            assert process.stdout is not None and process.stderr is not None
            assert process.stdout.readline().startswith(b"{")
            process.stdout.close()
            err = process.stderr.read().decode()
            process.wait(timeout=60)
        assert process.returncode == 0, err
        assert not any(noise in err for noise in NOISE), err

        code, err = closed_stdout("status", str(config))
        assert code == 1, err  # the status's own code: rows are pending
        assert err == ""

        server.script("row 3 ", [400])  # one row fails: the run's code is 1
        code, err = closed_stdout("run", str(config), "--no-progress")
        summary = json.loads((tmp_path / "out/answers.summary.json").read_text())
        assert code == summary["exit_code"] == 1, err
        assert not any(noise in err for noise in NOISE), err

        server.script("row 3 ", [400])  # the next run sends it again: it fails again
        code, _ = closed_stdout("run", str(config), "--no-progress", stderr_too=True)
        assert code == 1  # `2>&1 | head`: the same code, with nothing more said
        code, _ = closed_stdout("status", str(config), stderr_too=True)
        assert code == 1

        foreign = tmp_path / "foreign.jsonl"  # another config's result: nothing imported
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}
        line = {"custom_id": "r1:" + "0" * 64, "response": {"status_code": 200, "body": body}}
        foreign.write_text(json.dumps(line) + "\n")
        code, err = closed_stdout("batch", "import", str(config), str(foreign))
        assert code == 2, err  # the import's own code
        assert not any(noise in err for noise in NOISE), err
    no_error_logs(tmp_path)


def test_a_model_rejected_at_preflight_names_only_the_summary(tmp_path: Path) -> None:
    texts(tmp_path, ["a", "b"])
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, model={"name": "no-such-model"})
        ran = run_cli("run", str(config))
    assert ran.code == 3 and ran.summary["exit_code"] == 3 and server.count == 0
    assert not (tmp_path / "out/answers.parquet").exists()
    assert "answers.parquet and" not in ran.stderr
    assert f"wrote {tmp_path / 'out/answers.summary.json'}\n" in ran.stderr


def test_failed_rows_say_where_their_errors_are_and_whether_a_rerun_helps(
    tmp_path: Path,
) -> None:
    texts(tmp_path, ["good 1", "bad 2", "refused 3", "good 4", "bad 5"])
    template = {"template": "{{ text }}{% if 'bad' in text %}{{ text.nope }}{% endif %}"}
    with FakeServer() as server:
        server.script("refused", [400])
        config = write_config(tmp_path, server.base_url, prompt=template)
        ran = run_cli("run", str(config))
        assert ran.code == 1, ran.stderr
        assert (ran.summary["failed"], ran.summary["row_errors"]) == (3, 2)
        store = tmp_path / "out/store.db"
        assert (
            f"1 row failed; the errors are in the output's _error column and the store "
            f"({store}); rerun to retry them"
        ) in ran.stderr
        assert (
            "2 rows failed before sending (the template or an image fails on them); the "
            "errors are in the output's _error column; a rerun fails them again"
        ) in ran.stderr
        server.script("refused", [400])  # a rerun sends it again: it fails again
        no_meta = run_cli("run", str(config), "--set", "output.include_meta=false")
        assert no_meta.code == 1
        assert f"fails on them); `pipeline status {config}` shows the first" in no_meta.stderr
        assert "1 row failed; the errors are in the store" in no_meta.stderr


def test_limit_below_one_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    texts(tmp_path, ["a", "b"])
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url)
        for command in ("run", "preview", "status", "reparse"):
            for value in ("0", "-1"):
                ran = run_cli(command, str(config), "--limit", value)
                assert ran.code == 2, (command, value, ran.stderr)
                assert f"argument --limit: expected 1 or more, got {value}" in ran.stderr
        assert server.count == 0
    assert not (tmp_path / "out").exists()


def test_a_report_path_that_cannot_be_written_is_refused_before_sending(
    tmp_path: Path,
) -> None:
    texts(tmp_path, ["a", "b"])
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url)
        under_a_file = str(tmp_path / "in.csv" / "rep.html")
        for path in (under_a_file, "/proc/rep.html", str(tmp_path)):
            ran = run_cli("run", str(config), "--report", path)
            assert ran.code == 2, ran.stderr
            assert f"--report {path}" in ran.stderr and "Traceback" not in ran.stderr
        compared = run_cli("compare", str(config), "-n", "2", "--report", under_a_file)
        assert compared.code == 2 and f"--report {under_a_file}" in compared.stderr
        assert server.count == 0
    assert not (tmp_path / "out/answers.parquet").exists()
    no_error_logs(tmp_path)


def test_a_report_that_fails_at_the_end_is_an_output_error_with_the_answers_kept(
    tmp_path: Path,
) -> None:
    texts(tmp_path, ["a", "b", "c"])
    reports = tmp_path / "reports"
    lock = threading.Lock()

    def answer(body: dict[str, Any]) -> str:
        with lock:
            if reports.is_dir():  # during the run, the report's folder becomes a file
                shutil.rmtree(reports)
                reports.write_text("not a folder")
        return "ok"

    with FakeServer(answer=answer) as server:
        config = write_config(tmp_path, server.base_url)
        reports.mkdir()
        ran = run_cli("run", str(config), "--report", str(reports / "rep.html"))
        assert server.count == 3
    assert ran.code == 5, ran.stderr
    assert ran.summary["exit_code"] == 5 and "cannot write the report" in ran.summary["error"]
    assert "internal error" not in ran.stderr and "Traceback" not in ran.stderr
    assert "the output was written" in ran.stderr
    written = json.loads((tmp_path / "out/answers.summary.json").read_text())
    assert written["exit_code"] == 5
    logged = (tmp_path / "out/store.runs.jsonl").read_text().splitlines()
    assert json.loads(logged[-1])["exit_code"] == 5
    assert pl.read_parquet(tmp_path / "out/answers.parquet")["answer"].to_list() == ["ok"] * 3
    no_error_logs(tmp_path)
