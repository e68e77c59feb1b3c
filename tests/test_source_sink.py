"""Unit tests for `pipeline.source.Source` and `pipeline.sink.Sink` on small local files."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline.config import InputConfig
from pipeline.errors import InputError, OutputError
from pipeline.sink import Sink
from pipeline.source import Source, table_format

FORMATS = ["csv", "parquet", "ndjson"]


def table(n: int = 25) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": list(range(n)),
            "score": [i / 4 if i % 5 else None for i in range(n)],
            "text": [f"row {i}" if i % 7 else None for i in range(n)],
            "flag": [i % 2 == 0 for i in range(n)],
        },
        schema={"id": pl.Int64, "score": pl.Float64, "text": pl.String, "flag": pl.Boolean},
    )


def write_table(frame: pl.DataFrame, path: Path) -> Path:
    writers: dict[str, Callable[[Path], None]] = {
        ".csv": frame.write_csv,
        ".tsv": lambda p: frame.write_csv(p, separator="\t"),
        ".parquet": frame.write_parquet,
        ".ndjson": frame.write_ndjson,
        ".jsonl": frame.write_ndjson,
    }
    writers[path.suffix](path)
    return path


def as_read(frame: pl.DataFrame, ext: str) -> pl.DataFrame:
    """What a Source gives for `frame` written as `ext`: CSV and TSV columns are text, each
    value as written; Parquet and NDJSON keep their types."""
    return frame.select(pl.all().cast(pl.String)) if ext in ("csv", "tsv") else frame


def read_table(path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    if path.suffix == ".ndjson":
        return pl.read_ndjson(path)
    return pl.read_csv(path, separator="\t" if path.suffix == ".tsv" else ",")


# --- Source ------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "tsv", "parquet", "ndjson", "jsonl"])
def test_source_reads_columns_schema_and_rows(tmp_path: Path, ext: str) -> None:
    frame = table()
    source = Source(write_table(frame, tmp_path / f"in.{ext}"))

    assert source.columns == ["id", "score", "text", "flag"]
    assert dict(source.schema) == dict(as_read(frame, ext).schema)
    assert source.count() == 25
    assert_frame_equal(pl.concat(list(source.chunks(100))), as_read(frame, ext))


@pytest.mark.parametrize("ext", FORMATS)
def test_chunks_are_in_order_bounded_and_share_the_schema(tmp_path: Path, ext: str) -> None:
    frame = table(25)
    source = Source(write_table(frame, tmp_path / f"in.{ext}"))
    chunks = list(source.chunks(10))

    assert [c.height for c in chunks] == [10, 10, 5]
    assert all(c.schema == source.schema for c in chunks)
    assert_frame_equal(pl.concat(chunks), as_read(frame, ext))


def test_chunks_can_be_read_twice(tmp_path: Path) -> None:
    source = Source(write_table(table(12), tmp_path / "in.parquet"))

    assert [c.height for c in source.chunks(5)] == [5, 5, 2]
    assert [c.height for c in source.chunks(12)] == [12]


@pytest.mark.parametrize("size", [1, 3, 7, 25, 1000])
def test_chunk_size_covers_every_row_once(tmp_path: Path, size: int) -> None:
    frame = table(25)
    source = Source(write_table(frame, tmp_path / "in.csv"))
    chunks = list(source.chunks(size))

    assert all(0 < c.height <= size for c in chunks)
    assert len(chunks) == -(-25 // size)
    assert pl.concat(chunks)["id"].to_list() == [str(i) for i in range(25)]


@pytest.mark.parametrize("ext", FORMATS)
def test_limit_takes_the_first_rows(tmp_path: Path, ext: str) -> None:
    frame = table(25)
    source = Source(write_table(frame, tmp_path / f"in.{ext}"), limit=7)

    assert source.count() == 7
    chunks = list(source.chunks(5))
    assert [c.height for c in chunks] == [5, 2]
    assert_frame_equal(pl.concat(chunks), as_read(frame, ext).head(7))


def test_limit_larger_than_the_table(tmp_path: Path) -> None:
    source = Source(write_table(table(4), tmp_path / "in.csv"), limit=100)

    assert source.count() == 4


def test_header_only_csv_yields_one_empty_frame_with_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,text\n")
    source = Source(path)
    chunks = list(source.chunks(10))

    assert source.columns == ["id", "text"]
    assert source.count() == 0
    assert len(chunks) == 1
    assert chunks[0].height == 0
    assert chunks[0].columns == ["id", "text"]


def test_empty_parquet_yields_one_empty_frame_with_its_schema(tmp_path: Path) -> None:
    empty = table(0)
    source = Source(write_table(empty, tmp_path / "in.parquet"))
    [chunk] = list(source.chunks(10))

    assert chunk.height == 0
    assert chunk.schema == empty.schema


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Source(tmp_path / "nope.csv")


def test_directory_is_input_error_saying_it_is_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "table.csv"
    folder.mkdir()
    with pytest.raises(InputError) as info:
        Source(folder)
    assert str(info.value).startswith(f"input.path {folder} is a folder, not a file;")
    assert "does not exist" not in str(info.value)


@pytest.mark.parametrize("name", ["in.xlsx", "in.json", "in"])
def test_unknown_extension_is_input_error_listing_formats(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("id\n1\n")
    with pytest.raises(InputError, match="unknown table format") as info:
        Source(path)
    assert ".csv" in str(info.value) and ".parquet" in str(info.value)


def test_table_format_is_case_insensitive() -> None:
    assert table_format(Path("A.CSV")) == "csv"
    assert table_format(Path("a.Parquet")) == "parquet"
    assert table_format(Path("a.pq")) == "parquet"
    assert table_format(Path("a.JSONL")) == "ndjson"


@pytest.mark.parametrize(
    ("name", "content"),
    [("in.csv", b""), ("in.parquet", b"PAR1 not really"), ("in.ndjson", b"{not json\n")],
)
def test_unreadable_content_is_input_error(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(InputError, match="cannot read input"):
        source = Source(path)
        list(source.chunks(10))


def csv_source(path: Path, content: bytes, **options: str) -> Source:
    path.write_bytes(content)
    return Source(path, None, InputConfig(path=path, **options))


def rows(source: Source) -> list[tuple[object, ...]]:
    return [row for frame in source.chunks(2) for row in frame.rows()]


LATIN = b"id,text\n1,plain\n2,also plain\n3,caf\xe9\n4,end\n"  # cp1252 / latin-1


def test_invalid_utf8_names_the_line_and_input_encoding(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        rows(csv_source(tmp_path / "in.csv", LATIN))

    message = str(info.value)
    assert "line 4 is not valid UTF-8 (byte 0xE9)" in message
    assert "input.encoding" in message and "utf8-lossy" in message


def test_invalid_utf8_far_into_a_big_file_names_its_line(tmp_path: Path) -> None:
    body = b"".join(b"%d,row %d\n" % (i, i) for i in range(200_000))  # over one 1 MiB block
    with pytest.raises(InputError, match="line 200002 is not valid UTF-8"):
        rows(csv_source(tmp_path / "in.csv", b"id,text\n" + body + b"x,\xff\xfe\n"))


@pytest.mark.parametrize(
    ("encoding", "third"),
    [("utf8-lossy", "caf\ufffd"), ("cp1252", "café"), ("latin-1", "café"), ("UTF-8", None)],
)
def test_input_encoding_reads_the_file(tmp_path: Path, encoding: str, third: str | None) -> None:
    content = LATIN if third is not None else LATIN.replace(b"\xe9", "é".encode())
    source = csv_source(tmp_path / "in.csv", content, encoding=encoding)

    assert rows(source)[2] == ("3", third or "café")
    assert source.count() == 4


def test_a_byte_the_codec_cannot_decode_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"line 3 is not valid cp1252 \(byte 0x81\)"):
        csv_source(tmp_path / "in.csv", b"id,text\n1,a\n2,\x81\n", encoding="cp1252")


RAGGED = b'id,text\n1,a\n2\n"3\nstill 3",b,extra\n4,d\n'


def test_a_row_with_more_fields_names_its_line_and_input_ragged(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        rows(csv_source(tmp_path / "in.csv", RAGGED))

    message = str(info.value)
    assert "line 4 has 3 fields where the header has 2" in message
    assert "input.ragged: truncate" in message and "input.separator" in message


def test_ragged_truncate_drops_extra_fields_and_short_rows_get_nulls(tmp_path: Path) -> None:
    source = csv_source(tmp_path / "in.csv", RAGGED, ragged="truncate")

    assert rows(source) == [("1", "a"), ("2", None), ("3\nstill 3", "b"), ("4", "d")]


def test_separator_is_configurable(tmp_path: Path) -> None:
    source = csv_source(tmp_path / "in.csv", b"id;text\n1;a,b\n", separator=";")

    assert source.columns == ["id", "text"]
    assert rows(source) == [("1", "a,b")]


@pytest.mark.parametrize(
    "options", [{"encoding": "latin-1"}, {"separator": ";"}, {"ragged": "truncate"}]
)
def test_csv_settings_on_other_formats_are_errors(tmp_path: Path, options: dict[str, str]) -> None:
    path = write_table(table(3), tmp_path / "in.parquet")
    with pytest.raises(InputError, match=f"input.{next(iter(options))} applies to CSV"):
        Source(path, None, InputConfig(path=path, **options))


def test_csv_values_are_text_exactly_as_written(tmp_path: Path) -> None:
    source = csv_source(tmp_path / "in.csv", b'zip,price,flag,note\n01234,1.50,TRUE,\n7,1e3,0,""\n')

    assert dict(source.schema) == dict.fromkeys(["zip", "price", "flag", "note"], pl.String())
    # an empty field is null; a quoted "" is the empty string
    assert rows(source) == [("01234", "1.50", "TRUE", None), ("7", "1e3", "0", "")]


def test_a_late_value_no_type_guess_would_fit_is_read(tmp_path: Path) -> None:
    body = b"".join(b"%d\n" % i for i in range(20_000))  # once inferred Int64 from 10,000 rows
    source = csv_source(tmp_path / "in.csv", b"n\n" + body + b"n/a\n")

    assert source.count() == 20_001
    assert pl.concat(list(source.chunks(5_000)))["n"].to_list()[-2:] == ["19999", "n/a"]


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        ("id\n1\n".encode("utf-32"), {}, "UTF-32 byte order mark; set input.encoding: utf-32"),
        ("id\n1\n".encode("utf-16-be"), {}, "line 1 holds a NUL byte (0x00), which UTF-8"),
        (b"id\n1\n2\x00\n", {"encoding": "utf8-lossy"}, "line 3 holds a NUL byte (0x00)"),
        (b"id\n1\x00\n", {"encoding": "latin-1"}, "which latin-1 text does not"),
        (b"id,\xff\n1,2\n", {}, "line 1 is not valid UTF-8 (byte 0xFF)"),
    ],
)
def test_text_not_in_the_encoding_is_refused_before_polars_reads_it(
    tmp_path: Path, content: bytes, options: dict[str, str], message: str
) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        csv_source(tmp_path / "in.csv", content, **options)


def test_a_bad_byte_in_the_header_is_replaced_under_utf8_lossy(tmp_path: Path) -> None:
    source = csv_source(tmp_path / "in.csv", b"id,caf\xe9\n1,2\n", encoding="utf8-lossy")

    assert source.columns == ["id", "caf\ufffd"]


@pytest.mark.parametrize("ext", ["csv", "tsv"])
def test_a_repeated_header_name_is_refused_naming_the_columns(tmp_path: Path, ext: str) -> None:
    header = ["a", "\x1bb", "a", "c", "\x1bb", "a"]
    path = tmp_path / f"in.{ext}"
    path.write_text(("\t" if ext == "tsv" else ",").join(header) + "\n")

    with pytest.raises(InputError) as info:
        Source(path)
    assert str(info.value) == (
        f"cannot read input {path}: the header repeats 'a' (columns 1, 3, 6); "
        "'\\x1bb' (columns 2, 5); the output keeps every input column under its own name, so "
        "give each column a name of its own"
    )


def test_names_that_only_look_renamed_are_kept(tmp_path: Path) -> None:
    source = csv_source(tmp_path / "in.csv", b"a,a_duplicated_0\n1,2\n")

    assert source.columns == ["a", "a_duplicated_0"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "line 3 is not valid JSON (Expecting value, column 1): 'not json'"),
        (b"[1, 2]", "line 3 is not a JSON object: '[1, 2]'"),
        (b'{"a": NaN}', """line 3 is not valid JSON: '{"a": NaN}'"""),
        (
            b"\x1b[2J" + b"x" * 100,
            "line 3 is not valid JSON (Expecting value, column 1): '\\x1b[2J" + "x" * 56 + "...'",
        ),
        (b'{"a": "\xff"}', "line 3 is not valid UTF-8 (byte 0xFF)"),
    ],
)
def test_a_bad_ndjson_line_is_named(tmp_path: Path, line: bytes, message: str) -> None:
    path = tmp_path / "in.ndjson"
    path.write_bytes(b'{"a": 1}\n\n' + line + b'\n{"a": 2}\n')

    with pytest.raises(InputError) as info:
        list(Source(path).chunks(10))
    assert str(info.value) == f"cannot read input {path}: {message}"


# --- Sink --------------------------------------------------------------------------------


def tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("ext", ["csv", "tsv", "parquet", "ndjson"])
def test_sink_writes_chunks_that_read_back_equal_with_types(tmp_path: Path, ext: str) -> None:
    frame = table(25).with_columns(pl.Series("answer", ["a"] * 20 + [None] * 5))
    path = tmp_path / "out" / f"answers.{ext}"  # the folder is created
    sink = Sink(path)
    for start in range(0, 25, 10):
        sink.write(frame.slice(start, 10))
    sink.commit()

    back = read_table(path)
    assert back.schema == frame.schema
    assert_frame_equal(back, frame)
    assert sink.rows == 25
    assert tmp_files(path.parent) == []


def test_csv_sink_keeps_empty_string_apart_from_null(tmp_path: Path) -> None:
    frame = pl.DataFrame({"id": [1, 2, 3], "answer": ["", None, "x"]})
    sink = Sink(tmp_path / "o.csv")
    sink.write(frame)
    sink.commit()

    assert pl.read_csv(tmp_path / "o.csv")["answer"].to_list() == ["", None, "x"]


def test_csv_sink_writes_one_header(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "o.csv")
    sink.write(pl.DataFrame({"a": [1]}))
    sink.write(pl.DataFrame({"a": [2]}))
    sink.commit()

    assert (tmp_path / "o.csv").read_text().splitlines() == ["a", "1", "2"]


def test_parquet_sink_casts_later_chunks_to_the_first_schema(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "o.parquet")
    sink.write(pl.DataFrame({"n": [1, 2]}, schema={"n": pl.Int64}))
    sink.write(pl.DataFrame({"n": [3]}, schema={"n": pl.Int32}))
    sink.commit()

    back = pl.read_parquet(tmp_path / "o.parquet")
    assert back.schema == pl.Schema({"n": pl.Int64})
    assert back["n"].to_list() == [1, 2, 3]


@pytest.mark.parametrize("ext", FORMATS)
def test_empty_frame_still_makes_a_file(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"o.{ext}"
    sink = Sink(path)
    sink.write(pl.DataFrame(schema={"id": pl.Int64, "answer": pl.String}))
    sink.commit()

    if ext == "ndjson":  # no rows, no lines: NDJSON has no header to keep the columns
        assert path.read_bytes() == b""
    else:
        back = read_table(path)
        assert back.height == 0
        assert back.columns == ["id", "answer"]


@pytest.mark.parametrize("ext", FORMATS)
def test_target_is_untouched_until_commit(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"o.{ext}"
    sink = Sink(path)
    sink.write(table(5))

    assert not path.exists()
    assert len(tmp_files(tmp_path)) == 1
    sink.commit()
    assert_frame_equal(read_table(path), table(5))


@pytest.mark.parametrize("ext", FORMATS)
def test_previous_output_stays_until_commit_then_is_replaced(tmp_path: Path, ext: str) -> None:
    path = write_table(table(3), tmp_path / f"o.{ext}")
    before = path.read_bytes()
    sink = Sink(path)
    sink.write(table(8))

    assert path.read_bytes() == before
    sink.commit()
    assert read_table(path).height == 8


@pytest.mark.parametrize("ext", FORMATS)
def test_abort_removes_temp_and_keeps_previous_output(tmp_path: Path, ext: str) -> None:
    path = write_table(table(3), tmp_path / f"o.{ext}")
    before = path.read_bytes()
    sink = Sink(path)
    sink.write(table(8))
    assert tmp_files(tmp_path)

    sink.abort()

    assert tmp_files(tmp_path) == []
    assert path.read_bytes() == before
    sink.abort()  # twice is harmless


def test_abort_without_previous_output_leaves_nothing(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "o.parquet")
    sink.write(table(2))
    sink.abort()

    assert list(tmp_path.iterdir()) == []


def test_stale_temp_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".o.csv.99999999.tmp"
    stale.write_text("half a file")
    other = tmp_path / ".other.csv.99999999.tmp"
    other.write_text("another output's temp")

    Sink(tmp_path / "o.csv")

    assert not stale.exists()
    assert other.exists()


def test_unknown_output_extension_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown table format"):
        Sink(tmp_path / "o.xlsx")


def test_unwritable_output_file_is_output_error(tmp_path: Path) -> None:
    (tmp_path / "o.csv").mkdir()  # the rename into place cannot replace a folder
    sink = Sink(tmp_path / "o.csv")
    sink.write(table(2))

    with pytest.raises(OutputError, match="cannot write output"):
        sink.commit()
    assert tmp_files(tmp_path) == []


def test_uncreatable_output_folder_is_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    sink = Sink(blocker / "o.csv")

    with pytest.raises(OutputError, match="cannot write output"):
        sink.write(table(2))


def test_nested_column_to_csv_is_output_error(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "o.csv")
    try:
        with pytest.raises(OutputError):
            sink.write(pl.DataFrame({"meta": [{"a": 1}]}))
        assert tmp_files(tmp_path) == []
    finally:
        sink.abort()
