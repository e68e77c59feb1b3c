"""s3:// inputs and outputs end to end through the CLI, against moto's S3 on 127.0.0.1."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import Ran, run_cli, write_config
from fake_s3 import ACCESS_KEY, SECRET_KEY, FakeS3
from fake_server import FakeServer, last_content

MODEL_KEY = "model-test-key"


def label(body: dict[str, Any]) -> str:
    return f"label-{last_content(body)}"


def frame(texts: list[str], start: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(start, start + len(texts))), "text": texts})


def csv_bytes(texts: list[str]) -> bytes:
    out = io.BytesIO()
    frame(texts).write_csv(out)
    return out.getvalue()


def parquet_bytes(texts: list[str], start: int = 0) -> bytes:
    out = io.BytesIO()
    frame(texts, start).write_parquet(out)
    return out.getvalue()


@pytest.fixture(name="s3")
def fake_s3() -> Iterator[FakeS3]:
    with FakeS3() as fake:
        yield fake


@pytest.fixture(name="model")
def fake_model() -> Iterator[FakeServer]:
    with FakeServer(answer=label) as fake:
        yield fake


def run(config: Path, s3: FakeS3, *args: str, **env: str) -> Ran:
    return run_cli(*args or ("run",), str(config), env={"TEST_KEY": MODEL_KEY, **s3.env(), **env})


def assert_no_secrets(folder: Path, *ran: Ran) -> None:
    """The credentials reach no file the runs wrote and no output of theirs."""
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET_KEY.encode() not in data and ACCESS_KEY.encode() not in data, path
    for done in ran:
        assert SECRET_KEY not in done.stdout + done.stderr
        assert ACCESS_KEY not in done.stdout + done.stderr


def test_csv_input_from_s3_and_a_rerun_downloads_nothing(
    tmp_path: Path, s3: FakeS3, model: FakeServer
) -> None:
    s3.create_bucket("tickets")
    s3.put("tickets", "in/tickets.csv", csv_bytes(["a", "b", "c"]))
    config = write_config(
        tmp_path,
        model.base_url,
        input={"path": "s3://tickets/in/tickets.csv"},
        output={"path": "out/answers.csv", "include_meta": False},
    )
    first = run(config, s3)
    answers = pl.read_csv(tmp_path / "out/answers.csv")["answer"].to_list()
    gets = s3.count("get")
    again = run(config, s3)
    gets_again, sent = s3.count("get"), model.count
    s3.put("tickets", "in/tickets.csv", csv_bytes(["a", "b", "c", "d"]))  # a new version
    grown = run(config, s3)
    assert first.code == 0, first.stderr
    assert answers == ["label-a", "label-b", "label-c"]
    assert gets == 1 and sent == 3
    assert again.code == 0 and gets_again == gets  # a HEAD only: no download, no request
    assert grown.code == 0, grown.stderr
    assert s3.count("get") == gets + 1 and model.count == 4  # only the new row is sent
    cached = list((tmp_path / ".pipeline-s3/in/tickets/in").glob("v-*/tickets.csv"))
    assert len(cached) == 1  # the older version was removed
    assert_no_secrets(tmp_path, first, again, grown)


def test_local_input_to_an_s3_parquet_output(tmp_path: Path, s3: FakeS3, model: FakeServer) -> None:
    s3.create_bucket("labels")
    (tmp_path / "in.csv").write_bytes(csv_bytes(["a", "b"]))
    config = write_config(
        tmp_path,
        model.base_url,
        output={"path": "s3://labels/nightly/answers.parquet", "include_meta": False},
        run={"store": "store.db"},
    )
    ran = run(config, s3)
    assert ran.code == 0, ran.stderr
    assert ran.summary["output_url"] == "s3://labels/nightly/answers.parquet"
    assert "uploaded answers.parquet to s3://labels/nightly/answers.parquet" in ran.stderr
    written = s3.get("labels", "nightly/answers.parquet")
    assert written is not None
    assert pl.read_parquet(io.BytesIO(written))["answer"].to_list() == ["label-a", "label-b"]
    # The temporary key is gone (pyarrow's delete leaves a folder marker, nightly/, behind).
    assert s3.keys("labels") == ["nightly/", "nightly/answers.parquet"]
    # One delete for the probe before sending, one for the temporary key.
    assert s3.count("copy") == 1 and s3.count("delete") == 2
    assert s3.count("delete", "labels/nightly/.answers.parquet.probe.tmp") == 1
    local = tmp_path / ".pipeline-s3/out/labels/nightly/answers.parquet"
    assert local.read_bytes() == written
    assert_no_secrets(tmp_path, ran)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_parquet_glob_in_key_order_to_an_s3_output_and_a_rerun_sends_nothing(
    tmp_path: Path, s3: FakeS3, model: FakeServer, engine: str
) -> None:
    s3.create_bucket("lake")
    s3.put("lake", "tickets/part-b.parquet", parquet_bytes(["c", "d"], 2))
    s3.put("lake", "tickets/part-a.parquet", parquet_bytes(["a", "b"], 0))
    s3.put("lake", "tickets/part-c.parquet", parquet_bytes(["e"], 4))
    s3.put("lake", "tickets/notes.csv", b"not,a,part\n")
    s3.put("lake", "tickets/old/part-z.parquet", parquet_bytes(["old"], 9))  # not recursive
    config = write_config(
        tmp_path,
        model.base_url,
        input={"path": "s3://lake/tickets/part-*.parquet"},
        output={"path": "s3://lake/answers/tickets.parquet", "include_meta": False},
        run={"store": "store.db", "chunk_rows": 2, "engine": engine, "ray": {"workers": 2}},
    )
    first = run(config, s3)
    gets, sent = s3.count("get", "lake/tickets/"), model.count
    again = run(config, s3)
    assert first.code == 0, first.stderr
    written = s3.get("lake", "answers/tickets.parquet")
    assert written is not None
    table = pl.read_parquet(io.BytesIO(written))
    assert table["id"].to_list() == [0, 1, 2, 3, 4]
    assert table["answer"].to_list() == [f"label-{t}" for t in "abcde"]
    assert gets == 3 and sent == 5
    assert again.code == 0, again.stderr
    assert s3.count("get", "lake/tickets/") == gets and model.count == sent
    assert again.summary["from_store"] == 5 and again.summary["output_url"]
    assert first.summary["engine"] == again.summary["engine"] == engine


def test_missing_objects_and_refusals_are_named_before_anything_is_sent(
    tmp_path: Path, s3: FakeS3, model: FakeServer
) -> None:
    s3.create_bucket("tickets")
    s3.put("tickets", "in/tickets.csv", csv_bytes(["a"]))
    cases = {
        "s3://tickets/in/missing.csv": "no such object",
        "s3://nobucket/in/tickets.csv": "bucket 'nobucket' not found",
        "s3://tickets/in/*.parquet": "no object in bucket 'tickets' matches the glob",
        "s3://nobucket/in/*.parquet": "bucket 'nobucket' not found",
    }
    outcomes = {}
    for url in cases:
        config = write_config(tmp_path, model.base_url, input={"path": url})
        outcomes[url] = run(config, s3)
    config = write_config(tmp_path, model.base_url, input={"path": "s3://tickets/in/tickets.csv"})
    s3.refuse("head", times=None)
    denied = run(config, s3)
    for url, expected in cases.items():
        ran = outcomes[url]
        assert ran.code == 2, ran.stderr
        assert url in ran.stderr and expected in ran.stderr, ran.stderr
    assert denied.code == 2 and "s3://tickets/in/tickets.csv: access denied" in denied.stderr
    assert model.count == 0
    assert_no_secrets(tmp_path, denied, *outcomes.values())


def test_an_output_bucket_missing_is_named_before_sending_and_a_rerun_uploads(
    tmp_path: Path, s3: FakeS3, model: FakeServer
) -> None:
    (tmp_path / "in.csv").write_bytes(csv_bytes(["a", "b"]))
    config = write_config(
        tmp_path,
        model.base_url,
        output={"path": "s3://later/answers.csv", "include_meta": False},
        run={"store": "store.db"},
    )
    validated = run(config, s3, "validate")
    missing = run(config, s3)
    s3.create_bucket("later")
    rerun = run(config, s3)
    assert validated.code == 2 and "s3://later/answers.csv: bucket 'later' not found" in (
        validated.stderr
    )
    assert missing.code == 2 and "bucket 'later' not found" in missing.stderr
    assert rerun.code == 0, rerun.stderr
    assert (
        s3.get("later", "answers.csv")
        == (tmp_path / ".pipeline-s3/out/later/answers.csv").read_bytes()
    )
    assert model.count == 2


@pytest.mark.parametrize("step", ["upload", "copy"])
def test_a_failed_upload_keeps_the_old_object_and_the_answers_and_a_rerun_uploads(
    tmp_path: Path, s3: FakeS3, model: FakeServer, step: str
) -> None:
    s3.create_bucket("labels")
    s3.put("labels", "answers.csv", b"the old answers\n")
    (tmp_path / "in.csv").write_bytes(csv_bytes(["a", "b"]))
    config = write_config(
        tmp_path,
        model.base_url,
        output={"path": "s3://labels/answers.csv", "include_meta": False},
        run={"store": "store.db"},
    )
    # The upload of the temporary key, not the probe's before sending (test_cli_s3_checks).
    temporary = "labels/.answers.csv.[0-9a-f]*.tmp" if step == "upload" else None
    s3.refuse(step, times=None, path=temporary)
    failed = run(config, s3)
    old, keys = s3.get("labels", "answers.csv"), s3.keys("labels")
    with sqlite3.connect(tmp_path / "store.db") as db:
        stored = db.execute("SELECT count(*) FROM responses").fetchone()[0]
    s3.allow()
    rerun = run(config, s3)
    assert failed.code == 5, failed.stderr  # after sending: the answers are kept
    assert "s3://labels/answers.csv: access denied" in failed.stderr
    assert failed.summary["output_url"] is None
    assert old == b"the old answers\n" and keys == ["answers.csv"]  # no temporary key left
    assert stored == 2
    assert rerun.code == 0, rerun.stderr
    assert model.count == 2  # the rerun asked nothing
    written = s3.get("labels", "answers.csv")
    assert written is not None and b"label-a" in written
    assert_no_secrets(tmp_path, failed, rerun)


def test_storage_options_name_the_endpoint_and_the_credential_variables(
    tmp_path: Path, s3: FakeS3, model: FakeServer
) -> None:
    s3.create_bucket("tickets")
    s3.put("tickets", "in.ndjson", b'{"id": 1, "text": "a"}\n')
    options = {
        "endpoint_url": s3.endpoint,
        "region": "eu-west-1",
        "access_key_id_env": "JOB_S3_KEY",
        "secret_access_key_env": "JOB_S3_SECRET",
    }
    config = write_config(
        tmp_path,
        model.base_url,
        input={"path": "s3://tickets/in.ndjson", "storage_options": options},
        output={"path": "out.csv", "include_meta": False},
        run={"store": "store.db"},
    )
    plain = {"TEST_KEY": MODEL_KEY, "AWS_EC2_METADATA_DISABLED": "true"}
    unset = run_cli("run", str(config), env=plain)
    env = {**plain, "JOB_S3_KEY": ACCESS_KEY, "JOB_S3_SECRET": SECRET_KEY}
    preview = run_cli("preview", str(config), env=env)
    validated = run_cli("validate", str(config), env=env)
    ran = run_cli("run", str(config), env=env)
    assert unset.code == 2 and "JOB_S3_KEY is not set" in unset.stderr
    assert preview.code == 0, preview.stderr
    assert validated.code == 0 and validated.stdout.startswith("ok: 1 rows"), validated.stderr
    assert ran.code == 0, ran.stderr
    assert pl.read_csv(tmp_path / "out.csv")["answer"].to_list() == ["label-a"]
    assert_no_secrets(tmp_path, unset, preview, validated, ran)
