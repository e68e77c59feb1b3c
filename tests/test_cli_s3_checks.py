"""An s3:// output checked before anything is sent, end to end through the CLI against moto's
S3 on 127.0.0.1: refused credentials, policies without DeleteObject, HeadBucket or object
HEAD, and the URLs that name no table."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path

import polars as pl
import pytest
from e2e import Ran, run_cli, write_config
from fake_s3 import ACCESS_KEY, SECRET_KEY, FakeS3
from fake_server import FakeServer
from test_cli_s3 import fake_model, fake_s3  # noqa: F401 (the fixtures model and s3)

MODEL_KEY = "model-test-key"


def job(folder: Path, model: FakeServer, output: str) -> Path:
    """A local two-row input answered into `output`, the store beside the config."""
    frame = pl.DataFrame({"id": [0, 1], "text": ["a", "b"]})
    frame.write_csv(folder / "in.csv")
    return write_config(
        folder,
        model.base_url,
        output={"path": output, "include_meta": False},
        run={"store": "store.db"},
    )


def run(config: Path, s3: FakeS3, command: str = "run") -> Ran:
    ran = run_cli(command, str(config), env={"TEST_KEY": MODEL_KEY, **s3.env()})
    assert SECRET_KEY not in ran.stdout + ran.stderr
    assert ACCESS_KEY not in ran.stdout + ran.stderr
    return ran


def answers(s3: FakeS3, bucket: str, key: str) -> list[str]:
    written = s3.get(bucket, key)
    assert written is not None
    return list(pl.read_csv(io.BytesIO(written))["answer"])


@pytest.mark.parametrize(
    ("refused", "code", "expected"),
    [
        ("*", "SignatureDoesNotMatch", "the S3 credentials were refused"),
        ("*", "InvalidAccessKeyId", "the S3 credentials were refused"),
        ("upload", "AccessDenied", "access denied"),  # a policy without s3:PutObject
    ],
)
def test_refused_output_credentials_are_found_before_sending(
    tmp_path: Path, s3: FakeS3, model: FakeServer, refused: str, code: str, expected: str
) -> None:
    s3.create_bucket("labels")
    config = job(tmp_path, model, "s3://labels/o3/x.csv")
    s3.refuse(refused, code=code, times=None)
    validated = run(config, s3, "validate")
    first = run(config, s3)
    again = run(config, s3)
    # The summary of a run that ended before sending is where the guide says: beside the
    # output's local stand-in (it is not uploaded).
    summary = tmp_path / ".pipeline-s3/out/labels/o3/x.summary.json"
    kept = json.loads(summary.read_text())
    s3.allow()
    keys = s3.keys("labels")
    fixed = run(config, s3)
    for ran in (validated, first, again):
        assert ran.code == 2, ran.stderr
        assert f"output.path s3://labels/o3/x.csv: {expected} (writing an empty probe" in (
            ran.stderr
        )
    assert first.summary["exit_code"] == again.summary["exit_code"] == 2
    assert first.summary["requests_sent"] == 0
    assert kept["exit_code"] == 2 and kept["error"].startswith("output.path s3://labels/")
    assert keys == []  # no probe left
    assert fixed.code == 0, fixed.stderr
    assert model.count == 2  # only the run after the fix sent anything
    assert answers(s3, "labels", "o3/x.csv") == ["label-a", "label-b"]
    assert [key for key in s3.keys("labels") if key.endswith(".tmp")] == []


def test_a_policy_without_delete_or_bucket_head_still_runs_and_says_what_stays(
    tmp_path: Path, s3: FakeS3, model: FakeServer
) -> None:
    s3.create_bucket("labels")
    config = job(tmp_path, model, "s3://labels/o1/x.csv")
    s3.refuse("bucket", times=None)  # no s3:ListBucket: the bucket's HEAD is refused
    s3.refuse("delete", times=None)  # no s3:DeleteObject
    ran = run(config, s3)
    assert ran.code == 0, ran.stderr
    assert answers(s3, "labels", "o1/x.csv") == ["label-a", "label-b"]
    left = [key for key in s3.keys("labels") if key.endswith(".tmp")]
    assert "o1/.x.csv.probe.tmp" in left and len(left) == 2
    temporary = next(key for key in left if not key.endswith(".probe.tmp"))
    assert "o1/.x.csv.probe.tmp: access denied (deleting the probe object)" in ran.stderr
    assert f"{temporary}: access denied (deleting the temporary key)" in ran.stderr
    assert ran.stderr.count("stays in the bucket") == 2
    # The next run overwrites the same probe: no pile of them.
    again = run(config, s3)
    assert again.code == 0, again.stderr
    assert "o1/.x.csv.probe.tmp" in s3.keys("labels")
    assert len([key for key in s3.keys("labels") if key.endswith(".probe.tmp")]) == 1


def test_a_policy_refusing_object_heads_leaves_no_temporary_key(
    tmp_path: Path, s3: FakeS3, model: FakeServer
) -> None:
    s3.create_bucket("labels")
    config = job(tmp_path, model, "s3://labels/o2/x.csv")
    s3.refuse("head", times=None)
    ran = run(config, s3)
    assert ran.code == 0, ran.stderr
    assert answers(s3, "labels", "o2/x.csv") == ["label-a", "label-b"]
    temporary = [key for key in s3.keys("labels") if key.startswith("o2/.x.csv.")]
    # The output's temporary key is deleted without a HEAD; only pyarrow's delete of the
    # probe looks it up first, and the warning names that, not the delete.
    assert temporary == ["o2/.x.csv.probe.tmp"]
    assert "temporary key" not in ran.stderr
    assert "access denied (looking up the probe object to delete it)" in ran.stderr


def test_a_copy_refused_after_sending_keeps_the_old_object_and_no_temporary_key(
    tmp_path: Path, s3: FakeS3, model: FakeServer
) -> None:
    s3.create_bucket("labels")
    s3.put("labels", "x.csv", b"old\n")
    config = job(tmp_path, model, "s3://labels/x.csv")
    s3.refuse("upload", times=None, path="labels/.x.csv.[0-9a-f]*.tmp")  # not the probe
    failed = run(config, s3)
    assert failed.code == 5, failed.stderr
    assert "s3://labels/x.csv: access denied (uploading the output to the temporary key" in (
        failed.stderr
    )
    assert s3.get("labels", "x.csv") == b"old\n"
    assert s3.keys("labels") == ["x.csv"]
    assert model.count == 2


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "s3://labels/noext",
            "s3://labels/noext: the key has no extension, and the extension names the table "
            "format: use one of .csv, .jsonl, .ndjson, .parquet, .pq, .tsv",
        ),
        ("s3://labels/x.txt", "s3://labels/x.txt: the key has the extension '.txt'"),
        (
            "s3://labels/folder/",
            "'s3://labels/folder/' is not an S3 object URL: it names a folder; add a file "
            "name after it, e.g. s3://labels/folder/tickets.csv",
        ),
        ("s3://labels", "it names the bucket labels, not an object"),
    ],
)
def test_an_output_url_that_names_no_table_is_named_as_written(
    tmp_path: Path, s3: FakeS3, model: FakeServer, url: str, expected: str
) -> None:
    s3.create_bucket("labels")
    config = job(tmp_path, model, url)
    for command in ("validate", "run"):
        ran = run(config, s3, command)
        assert ran.code == 2, ran.stderr
        assert expected in ran.stderr, ran.stderr
        assert ".pipeline-s3" not in ran.stderr
    assert model.count == 0 and s3.count("upload") == 0


def test_an_output_endpoint_that_never_answers_fails_the_check_in_bounded_time(
    tmp_path: Path, s3: FakeS3, model: FakeServer
) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # takes connections, never answers
    config = job(tmp_path, model, "s3://labels/x.csv")
    env = {**s3.env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"}
    started = time.monotonic()
    with silent:
        ran = run_cli("run", str(config), env={"TEST_KEY": MODEL_KEY, **env}, timeout=60)
    assert time.monotonic() - started < 30
    assert ran.code == 2, ran.stderr
    assert "s3://labels/x.csv: cannot reach the S3 endpoint at http://127.0.0.1:" in ran.stderr
    assert model.count == 0
