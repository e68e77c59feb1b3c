"""`pipeline batch export` and `pipeline batch import` end to end: requests out as batch files,
answered here as a batch server would, answers in, and a run that sends none of them again."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import Ran, run_cli, write_config
from fake_server import FakeServer, last_content
from test_batchfile import completion as batch_completion

from pipeline.lock import Lock

ENV = {"TEST_KEY": "sk-test"}


@pytest.fixture
def server() -> Any:
    with FakeServer(answer=lambda body: f"online-{last_content(body)}") as fake:
        yield fake


def job(folder: Path, server: FakeServer, texts: list[str], **run: Any) -> Path:
    """A config over `texts`, batch files of 2 requests unless `run` says otherwise."""
    pl.DataFrame({"id": list(range(len(texts))), "text": texts}).write_csv(folder / "in.csv")
    settings = {"batch": {"max_requests_per_file": 2}, **run}
    return write_config(folder, server.base_url, run=settings)


def report(ran: Ran) -> dict[str, Any]:
    """The JSON object a batch command prints."""
    assert ran.stdout.strip(), ran.stderr
    return dict(json.loads(ran.stdout))


def completion(content: str) -> dict[str, Any]:
    return batch_completion(content, prompt=5, done=3)


def openai_answer(custom_id: str, text: str) -> dict[str, Any]:
    response = {"status_code": 200, "request_id": "req_b", "body": completion(f"batch-{text}")}
    return {"id": "batch_req_b", "custom_id": custom_id, "response": response, "error": None}


def openai_expired(custom_id: str, text: str) -> dict[str, Any]:
    error = {"code": "batch_expired", "message": "This request could not be executed in time."}
    return {"id": "batch_req_b", "custom_id": custom_id, "response": None, "error": error}


def vllm_answer(custom_id: str, text: str) -> dict[str, Any]:
    body = {**completion(f"batch-{text}"), "prompt_logprobs": None, "kv_transfer_params": None}
    response = {"request_id": "vllm-batch-1", "body": body}  # status_code left to its default
    return {"id": "vllm-1", "custom_id": custom_id, "response": response, "error": None}


def vllm_error(custom_id: str, text: str) -> dict[str, Any]:
    response = {"status_code": 400, "request_id": "vllm-batch-2", "body": None}
    return {
        "id": "vllm-2",
        "custom_id": custom_id,
        "response": response,
        "error": "prompt too long",
    }


Answer = Callable[[str, str], dict[str, Any]]


def answer_batch(files: Iterable[Path], out: Path, answer: Answer, **special: Answer) -> int:
    """Answer every line of the batch input files into `out`, as a batch server would;
    `special` answers the request whose text is its name. Returns the lines written."""
    lines = []
    for path in files:
        for raw in path.read_bytes().splitlines():
            request = json.loads(raw)
            assert (request["method"], request["url"]) == ("POST", "/v1/chat/completions")
            assert request["body"]["model"] == "fake-model"
            text = last_content(request["body"])
            respond = special.get(text.replace("-", "_"), answer)
            lines.append(json.dumps(respond(request["custom_id"], text)))
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def export(config: Path, out: Path, *extra: str) -> Ran:
    return run_cli("batch", "export", str(config), str(out), *extra)


def answers(folder: Path) -> list[str]:
    return pl.read_parquet(folder / "out/answers.parquet")["answer"].to_list()


TEXTS = ["row-0", "row-1", "dup", "row-3", "dup", "row-5"]


def test_exported_requests_answered_by_a_batch_are_not_sent_again(
    tmp_path: Path, server: FakeServer
) -> None:
    config = job(tmp_path, server, TEXTS)
    ran = export(config, tmp_path / "batch" / "requests.jsonl")
    assert ran.code == 0, ran.stderr
    names = ["requests.jsonl", "requests.2.jsonl", "requests.3.jsonl"]
    exported = report(ran)
    files = [tmp_path / "batch" / name for name in names]
    assert exported == {
        "requests": 5,
        "files": [
            {"path": str(path), "requests": n, "bytes": path.stat().st_size}
            for path, n in zip(files, [2, 2, 1], strict=True)
        ],
        "rows": 6,
        "already_answered": 0,
        "in_open_batches": 0,
        "skipped": 0,
        "row_errors": 0,
    }
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == sorted(names)
    assert "requests.jsonl" in ran.stderr and server.count == 0

    results = tmp_path / "batch" / "output.jsonl"
    assert answer_batch(files, results, openai_answer) == 5
    ran = run_cli("batch", "import", str(config), str(results))
    assert ran.code == 0, ran.stderr
    assert report(ran) == {
        "ok": 5,
        "failed": 0,
        "already_answered": 0,
        "skipped_not_this_config": 0,
        "unreadable": 0,
        "first_unreadable": [],
        "files": [{"path": str(results), "lines": 5}],
        "store": str(tmp_path / "out/store.db"),
    }

    ran = run_cli("run", str(config), env=ENV)
    assert ran.code == 0, ran.stderr
    assert server.count == 0  # no chat request: every answer came from the batch
    assert answers(tmp_path) == [f"batch-{text}" for text in TEXTS]
    assert ran.summary["requests_sent"] == 0 and ran.summary["from_store"] == 6
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert set(out["_prompt_tokens"]) == {5} and set(out["_attempts"]) == {1}


def test_a_failed_line_fails_the_row_and_a_later_run_sends_it_online(
    tmp_path: Path, server: FakeServer
) -> None:
    config = job(tmp_path, server, TEXTS)
    assert export(config, tmp_path / "req.jsonl").code == 0
    files = sorted(tmp_path.glob("req*.jsonl"))
    answered = tmp_path / "output.jsonl"
    answer_batch(files, answered, openai_answer, row_3=openai_expired)
    # OpenAI puts the failures in an error file of their own: import both files.
    lines = answered.read_text().splitlines()
    failures = [line for line in lines if '"batch_expired"' in line]
    errors = tmp_path / "errors.jsonl"
    errors.write_text("".join(f"{line}\n" for line in failures))
    answered.write_text("".join(f"{line}\n" for line in lines if line not in failures))

    ran = run_cli("batch", "import", str(config), str(answered), str(errors))
    assert ran.code == 1, ran.stderr
    assert (report(ran)["ok"], report(ran)["failed"]) == (4, 1)
    assert "1 request failed in the batch" in ran.stderr and "sends them online" in ran.stderr
    status = run_cli("status", str(config))
    assert status.code == 1 and report(status)["failed"] == 1 and report(status)["done"] == 5

    ran = run_cli("run", str(config), env=ENV)
    assert ran.code == 0, ran.stderr
    assert server.count == 1 and server.count_matching("row-3") == 1
    expected = [f"batch-{t}" if t != "row-3" else "online-row-3" for t in TEXTS]
    assert answers(tmp_path) == expected


def test_the_output_of_vllm_run_batch_imports(tmp_path: Path, server: FakeServer) -> None:
    config = job(tmp_path, server, TEXTS)
    assert (
        export(config, tmp_path / "req.jsonl", "--set", "run.batch.max_requests_per_file=10").code
        == 0
    )
    assert [p.name for p in tmp_path.glob("req*.jsonl")] == ["req.jsonl"]
    results = tmp_path / "vllm-out.jsonl"
    answer_batch([tmp_path / "req.jsonl"], results, vllm_answer, row_5=vllm_error)

    ran = run_cli("batch", "import", str(config), str(results))
    assert ran.code == 1, ran.stderr
    assert (report(ran)["ok"], report(ran)["failed"]) == (4, 1)
    ran = run_cli("run", str(config), env=ENV)
    assert ran.code == 0, ran.stderr
    assert server.count == 1 and server.count_matching("row-5") == 1
    out = pl.read_parquet(tmp_path / "out/answers.parquet")
    assert out["answer"].to_list()[:5] == [f"batch-{t}" for t in TEXTS[:5]]


def test_a_second_export_after_an_import_exports_only_what_is_left(
    tmp_path: Path, server: FakeServer
) -> None:
    config = job(tmp_path, server, TEXTS)
    first = report(export(config, tmp_path / "req.jsonl"))
    assert first["requests"] == 5 and len(first["files"]) == 3
    # The batch answered only the first file.
    results = tmp_path / "output.jsonl"
    answer_batch([tmp_path / "req.jsonl"], results, openai_answer)
    assert report(run_cli("batch", "import", str(config), str(results)))["ok"] == 2

    ran = export(config, tmp_path / "req.jsonl")
    assert ran.code == 0, ran.stderr
    second = report(ran)
    assert second["requests"] == 3 and second["already_answered"] == 2
    assert [f["requests"] for f in second["files"]] == [2, 1]
    texts = [
        last_content(json.loads(line)["body"])
        for name in ("req.jsonl", "req.2.jsonl")
        for line in (tmp_path / name).read_text().splitlines()
    ]
    assert texts == ["dup", "row-3", "row-5"]
    # The third file is the first export's: named, for it must not be sent.
    assert f"warning: {tmp_path / 'req.3.jsonl'} is from an earlier export" in ran.stderr


def test_nothing_left_to_export_writes_no_file(tmp_path: Path, server: FakeServer) -> None:
    config = job(tmp_path, server, ["a", "b"])
    assert run_cli("run", str(config), env=ENV).code == 0
    ran = export(config, tmp_path / "req.jsonl")
    assert ran.code == 0, ran.stderr
    assert report(ran)["requests"] == 0 and report(ran)["files"] == []
    assert report(ran)["already_answered"] == 2
    assert "nothing to export" in ran.stderr
    assert not list(tmp_path.glob("*req*"))


def test_a_missing_results_file_is_named(tmp_path: Path, server: FakeServer) -> None:
    config = job(tmp_path, server, TEXTS)
    present = tmp_path / "output.jsonl"
    present.write_text("")
    missing = tmp_path / "nowhere" / "output.jsonl"
    ran = run_cli("batch", "import", str(config), str(present), str(missing))
    assert ran.code == 2
    assert ran.stderr.strip() == f"error: results file {missing} does not exist"
    assert not (tmp_path / "out").exists()  # nothing was opened, let alone imported
    ran = run_cli("batch", "import", str(config), str(tmp_path))
    assert ran.code == 2 and f"results file {tmp_path} is not a file" in ran.stderr


def test_other_configs_lines_are_skipped_and_unreadable_lines_counted(
    tmp_path: Path, server: FakeServer
) -> None:
    config = job(tmp_path, server, TEXTS)
    assert export(config, tmp_path / "req.jsonl").code == 0
    results = tmp_path / "output.jsonl"
    answer_batch(sorted(tmp_path.glob("req*.jsonl")), results, openai_answer)
    lines = results.read_bytes().splitlines()
    other = json.dumps(openai_answer("r1:" + "0" * 64, "other"))
    hostile = [b"{truncated", b"\xff\xfe not utf-8", b"[" * 10_000, b'{"response": null}']
    results.write_bytes(b"\n".join([lines[0], other.encode(), *hostile, *lines[1:], b""]))

    ran = run_cli("batch", "import", str(config), str(results))
    assert ran.code == 1, ran.stderr
    found = report(ran)
    assert (found["ok"], found["failed"], found["skipped_not_this_config"]) == (5, 0, 1)
    assert found["unreadable"] == 4
    assert [u["line"] for u in found["first_unreadable"]] == [3, 4, 5, 6]
    assert found["first_unreadable"][3]["why"] == "no custom_id"
    assert f"4 lines could not be read, first {results} line 3: not JSON" in ran.stderr
    assert "skipped 1 line whose custom_id is no request" in ran.stderr
    # Importing the same file again changes nothing and says so.
    again = report(run_cli("batch", "import", str(config), str(results)))
    assert (again["ok"], again["already_answered"]) == (0, 5)


def test_a_locked_store_stops_an_import_as_it_stops_a_run(
    tmp_path: Path, server: FakeServer
) -> None:
    config = job(tmp_path, server, TEXTS)
    results = tmp_path / "output.jsonl"
    results.write_text("")
    with Lock(tmp_path / "out/store.db"):
        imported = run_cli("batch", "import", str(config), str(results))
        ran = run_cli("run", str(config), env=ENV)
    assert imported.code == ran.code == 4
    message = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert imported.stderr.splitlines() == message
    assert "is using the store" in message[0]


def test_a_request_too_big_for_one_file_is_named(tmp_path: Path, server: FakeServer) -> None:
    config = job(tmp_path, server, ["a", "b", "x" * 300], batch={"max_requests_per_file": 1})
    ran = export(config, tmp_path / "req.jsonl", "--set", "run.batch.max_file_mb=0.0003")
    assert ran.code == 2
    assert "error: request r1:" in ran.stderr and "run.batch.max_file_mb" in ran.stderr
    # The first file was finished before the error; of the one under way nothing is left.
    assert sorted(p.name for p in tmp_path.iterdir() if "req" in p.name) == ["req.jsonl"]
    assert len((tmp_path / "req.jsonl").read_bytes().splitlines()) == 1
