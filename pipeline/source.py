"""Source stage: the input file -> polars DataFrames of at most `chunk_rows` rows, in order.

CSV, Parquet and NDJSON, chosen by extension; several Parquet files (an s3:// glob's parts)
are read as one table, in the order given. The schema is read once from a lazy scan,
so every chunk has the same column types. A CSV file that polars cannot read is scanned
again, only then, for the first line at fault, which the error names with the config key
that gets past it (`input.encoding`, `input.ragged`, `input.separator`).
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import polars as pl

from .config import InputConfig
from .errors import InputError

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}
LOSSY = "utf8-lossy"
_BLOCK = 1 << 20


def table_format(path: Path) -> str:
    """`csv`, `parquet` or `ndjson`, by the file's extension."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(sorted(FORMATS))
        raise InputError(
            f"{path}: unknown table format '{path.suffix}'; use one of {known}"
        ) from None


class Source:
    """A lazily read input table; `options` carries the CSV settings of `input`; `parts`,
    when given, are the files that hold it (`path` then only names its format), read as one
    table in that order."""

    def __init__(
        self,
        path: Path,
        limit: int | None = None,
        options: InputConfig | None = None,
        parts: Sequence[Path] | None = None,
    ) -> None:
        options = options or InputConfig(path=path)
        files = list(parts) if parts is not None else [path]
        self.name = options.url or str(path)  # what errors call the input
        if not files:
            raise InputError(f"{self.name}: no input files")
        for file in files:
            if not file.is_file():
                raise InputError(f"input file {file} does not exist")
        fmt = table_format(path)
        if len(files) != 1 and fmt != "parquet":
            raise InputError(f"{self.name}: only Parquet inputs may be read from several files")
        path = self.path = files[0]
        self._data: Path | io.BytesIO = path  # what polars reads: the file, or it as UTF-8
        self._separator = options.separator or ("\t" if path.suffix.lower() == ".tsv" else ",")
        if fmt != "csv":
            _csv_only(options, path)
        try:
            if fmt == "csv":
                encoding = _polars_encoding(options.encoding)
                if encoding is None:
                    self._data = self._transcode(options.encoding)
                    encoding = "utf8"
                scan = pl.scan_csv(
                    self._data,
                    separator=self._separator,
                    infer_schema_length=10_000,
                    encoding=encoding,  # type: ignore[arg-type]
                    truncate_ragged_lines=options.ragged == "truncate",
                )
            elif fmt == "parquet":
                scan = pl.scan_parquet(files if len(files) > 1 else path)
            else:
                scan = pl.scan_ndjson(path, infer_schema_length=10_000)
            if limit is not None:
                scan = scan.head(limit)
            self.schema = scan.collect_schema()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise self._error(exc) from None
        self._scan = scan

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names())

    def count(self) -> int:
        """The number of rows (a cheap scan for Parquet, a full pass for text formats)."""
        try:
            return int(self._scan.select(pl.len()).collect().item())
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise self._error(exc) from None

    def chunks(self, size: int) -> Iterator[pl.DataFrame]:
        """The table in order, `size` rows at a time; at least one (maybe empty) frame."""
        yielded = False
        try:
            for frame in self._scan.collect_batches(chunk_size=size, maintain_order=True):
                for start in range(0, frame.height, size):
                    yielded = True
                    yield frame.slice(start, size)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise self._error(exc) from None
        if not yielded:
            yield pl.DataFrame(schema=self.schema)

    def _transcode(self, encoding: str) -> io.BytesIO:
        """The file read whole, as UTF-8 (polars reads UTF-8 only)."""
        data = self.path.read_bytes()
        try:
            return io.BytesIO(data.decode(encoding).encode())
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise InputError(
                f"cannot read input {self.name}: line {line} is not valid {encoding} "
                f"(byte 0x{data[exc.start]:02X}); set input.encoding to the file's encoding"
            ) from None

    def _error(self, exc: BaseException) -> InputError:
        """The error as an `InputError`, naming the line at fault where one can be found."""
        text = str(exc).lower()
        found = None
        if table_format(self.path) == "csv":
            if "utf-8" in text or "utf8" in text:
                found = self._bad_utf8()
            elif "more fields" in text:
                found = self._ragged()
        return InputError(f"cannot read input {self.name}: {found or _first_line(exc)}")

    def _open(self) -> IO[bytes]:
        if isinstance(self._data, io.BytesIO):
            return io.BytesIO(self._data.getbuffer())
        return self._data.open("rb")

    def _bad_utf8(self) -> str | None:
        """Where the first invalid UTF-8 byte is, and how to read the file anyway."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        lines = 0
        with self._open() as file:
            while block := file.read(_BLOCK):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as exc:  # exc.object: the decoder's buffer + block
                    line = lines + exc.object.count(b"\n", 0, exc.start) + 1
                    return (
                        f"line {line} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02X}); "
                        "set input.encoding to the file's encoding (e.g. cp1252 or latin-1), "
                        f"or to {LOSSY} to replace the bad bytes with U+FFFD"
                    )
                lines += block.count(b"\n")
        return None

    def _ragged(self) -> str | None:
        """The first row with more fields than the header, and the settings that help."""
        with self._open() as raw, io.TextIOWrapper(raw, "utf-8", "replace", newline="") as text:
            reader = csv.reader(text, delimiter=self._separator)
            header = next(reader, [])
            start = reader.line_num + 1
            for row in reader:
                if len(row) > len(header):
                    return (
                        f"line {start} has {len(row)} fields where the header has "
                        f"{len(header)}; set input.ragged: truncate to drop the extra fields, "
                        f"or input.separator if {self._separator!r} is not the separator"
                    )
                start = reader.line_num + 1
        return None


def _polars_encoding(name: str) -> str | None:
    """The polars name of a text encoding polars reads itself; None: transcode it first."""
    if name.lower() == LOSSY:
        return LOSSY
    return "utf8" if codecs.lookup(name).name == "utf-8" else None


def _csv_only(options: InputConfig, path: Path) -> None:
    """A CSV setting on another format is a mistake worth naming, not a silent no-op."""
    for key, value, default in (
        ("encoding", _polars_encoding(options.encoding), "utf8"),
        ("separator", options.separator, None),
        ("ragged", options.ragged, "error"),
    ):
        if value != default:
            raise InputError(f"input.{key} applies to CSV files only, and {path} is not one")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
