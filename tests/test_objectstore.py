"""Unit tests for `pipeline.objectstore` and the s3:// config keys: URLs, stand-ins, the
credentials' variables, error messages without secrets, and the upload's two paths."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from fake_s3 import ACCESS_KEY, SECRET_KEY, FakeS3

from pipeline.config import Config, StorageOptions
from pipeline.configfile import load
from pipeline.errors import ConfigError, InputError, OutputError
from pipeline.objectstore import S3Url, Session, fetch_input
from pipeline.s3output import check_bucket, upload_output

BASE = """\
input:
  path: {input}
prompt:
  template: "{{{{ text }}}}"
output:
  path: {output}
"""


def config_at(
    folder: Path, input: str = "in.csv", output: str = "out.csv", extra: str = ""
) -> Config:
    path = folder / "job.yaml"
    path.write_text(BASE.format(input=input, output=output) + extra, encoding="utf-8")
    return load(path)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeS3]:
    with FakeS3() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        yield fake


@pytest.mark.parametrize(
    ("text", "bucket", "key", "glob"),
    [
        ("s3://my-bucket/data/tickets.csv", "my-bucket", "data/tickets.csv", False),
        ("s3://b.with.dots/t.parquet", "b.with.dots", "t.parquet", False),
        ("s3://lake/tickets/part-*.parquet", "lake", "tickets/part-*.parquet", True),
    ],
)
def test_urls_parse_into_bucket_and_key(text: str, bucket: str, key: str, glob: bool) -> None:
    url = S3Url.parse(text)
    assert (url.bucket, url.key, url.is_glob, str(url)) == (bucket, key, glob, text)


@pytest.mark.parametrize(
    ("text", "side", "expected"),
    [
        ("s3://bucket", "in", "not an S3 object URL"),
        ("s3://bucket/", "in", "not an S3 object URL"),
        ("s3://bucket/a//b.csv", "in", "not an S3 object URL"),
        ("s3://bucket/../b.csv", "in", "not an S3 object URL"),
        ("s3://-bad/b.csv", "in", "not an S3 object URL"),
        ("s3://bucket/*/b.parquet", "in", "only be in the last path segment"),
        ("s3://bucket/*.csv", "in", "a glob is for Parquet inputs"),
        ("s3://bucket/*.parquet", "out", "a glob is for inputs"),
    ],
)
def test_bad_urls_say_what_is_wrong(text: str, side: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        S3Url.parse(text, side)


def test_an_s3_path_keeps_its_url_and_stands_in_a_local_file_beside_the_config(
    tmp_path: Path,
) -> None:
    config = config_at(tmp_path, "s3://lake/in/*.parquet", "s3://lake/out/answers.csv")
    assert config.input.url == "s3://lake/in/*.parquet"
    assert config.input.path == tmp_path / ".pipeline-s3/in/lake/in/*.parquet"
    assert config.output.url == "s3://lake/out/answers.csv"
    assert config.output.path == tmp_path / ".pipeline-s3/out/lake/out/answers.csv"
    assert config.store_path == tmp_path / ".pipeline-s3/out/lake/out/answers.db"
    assert config.input.storage_options == StorageOptions()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("  storage_options:\n    secret_access_key: hunter2-value\n", "is a secret"),
        ("  storage_options:\n    session_token: hunter2-value\n", "is a secret"),
        ("  storage_options:\n    region: eu-west-1\n", "applies to s3:// paths only"),
        ("  storage_options:\n    endpoint: x\n", "unknown key 'output.storage_options.endpoint'"),
    ],
)
def test_storage_options_hold_no_secrets_and_need_an_s3_path(
    tmp_path: Path, extra: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        config_at(tmp_path, extra=extra)
    assert "hunter2" not in str(info.value)


def test_an_unset_variable_named_for_the_credentials_is_an_error(
    tmp_path: Path, s3: FakeS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = (
        "  storage_options:\n    access_key_id_env: JOB_KEY\n"
        "    secret_access_key_env: JOB_SECRET\n"
    )
    config = config_at(tmp_path, output="s3://bucket/out.csv", extra=extra)
    with pytest.raises(ConfigError, match="JOB_KEY is not set"):
        check_bucket(config)
    monkeypatch.setenv("JOB_KEY", ACCESS_KEY)
    with pytest.raises(ConfigError, match="JOB_SECRET is not set"):
        check_bucket(config)


def test_error_messages_name_the_url_and_never_a_credential(s3: FakeS3) -> None:
    url = S3Url.parse("s3://bucket/key.csv")
    session = Session(StorageOptions(), url, InputError)
    leaked = OSError(f"AWS Error ACCESS_DENIED for {ACCESS_KEY} signed with {SECRET_KEY}")
    text = session.describe(leaked, "reading the object", url)
    assert text.startswith("s3://bucket/key.csv: access denied (reading the object)")
    odd = session.describe(OSError(f"odd failure near {SECRET_KEY}"), "reading", url)
    assert SECRET_KEY not in odd and "***" in odd


def test_a_parquet_glob_is_fetched_as_parts_in_key_order(tmp_path: Path, s3: FakeS3) -> None:
    s3.create_bucket("lake")
    for name, rows in (("p-2.parquet", [3]), ("p-1.parquet", [1, 2]), ("q.parquet", [9])):
        out = io.BytesIO()
        pl.DataFrame({"n": rows}).write_parquet(out)
        s3.put("lake", f"in/{name}", out.getvalue())
    config = config_at(tmp_path, "s3://lake/in/p-*.parquet")
    parts = fetch_input(config)
    assert [part.name for part in parts] == ["p-1.parquet", "p-2.parquet"]
    assert all(part.parent.parent == tmp_path / ".pipeline-s3/in/lake/in" for part in parts)
    s3.put("lake", "in/p-1.parquet", parts[1].read_bytes())  # a new version of p-1
    again = fetch_input(config)
    assert again[1] == parts[1] and again[0] != parts[0]
    assert not parts[0].exists()  # the older version was removed


@pytest.mark.parametrize("copy_limit", [0, 1 << 30])
def test_the_output_replaces_the_object_whole_by_either_path(
    tmp_path: Path, s3: FakeS3, copy_limit: int
) -> None:
    s3.create_bucket("bucket")
    s3.put("bucket", "out/answers.csv", b"old\n")
    config = config_at(tmp_path, output="s3://bucket/out/answers.csv")
    config.output.path.parent.mkdir(parents=True)
    config.output.path.write_bytes(b"new\n")
    written = upload_output(config, config.output.path, copy_limit=copy_limit)
    assert written == "s3://bucket/out/answers.csv"
    assert s3.get("bucket", "out/answers.csv") == b"new\n"
    assert [key for key in s3.keys("bucket") if key.endswith(".tmp")] == []
    assert s3.count("copy") == (1 if copy_limit else 0)


def test_a_refused_upload_is_an_output_error_and_the_object_stays(
    tmp_path: Path, s3: FakeS3
) -> None:
    s3.create_bucket("bucket")
    s3.put("bucket", "answers.csv", b"old\n")
    config = config_at(tmp_path, output="s3://bucket/answers.csv")
    config.output.path.parent.mkdir(parents=True)
    config.output.path.write_bytes(b"new\n")
    s3.refuse("copy", times=1)
    with pytest.raises(OutputError, match=r"s3://bucket/answers.csv: access denied \(copying"):
        upload_output(config, config.output.path)
    assert s3.get("bucket", "answers.csv") == b"old\n"
    assert [key for key in s3.keys("bucket") if key.endswith(".tmp")] == []
