"""Source stage: the input file -> polars DataFrames of at most `chunk_rows` rows, in order.

CSV, Parquet and NDJSON, chosen by extension; several Parquet files (an s3:// glob's parts)
are read as one table, in the order given. The schema is read once from a lazy scan,
so every chunk has the same column types. CSV and TSV columns are text, every value as
written (`01234` stays `01234`, `1.50` stays `1.50`); Parquet and NDJSON keep their types.
A CSV file whose first block holds a NUL byte, or bytes that are not UTF-8, is not taken for
text, and a header that names a column twice is refused: polars would rename the repeat.
A file that polars cannot read is scanned again, only then, for the first line at fault,
which the error names with the config key that gets past it (`input.encoding`,
`input.ragged`, `input.separator`).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import polars as pl

from .config import InputConfig
from .errors import InputError, printable

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
_EXCERPT = 60  # characters of a bad NDJSON line shown in the error
_BOMS = (  # longest first: UTF-32-LE's mark begins with UTF-16-LE's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


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
            if file.is_dir():
                raise InputError(
                    f"input.path {file} is a folder, not a file; name one table file "
                    f"({', '.join(sorted(FORMATS))})"
                )
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
                self._check_text(options.encoding, strict=encoding == "utf8")
                scan = pl.scan_csv(
                    self._data,
                    separator=self._separator,
                    infer_schema=False,  # every column text, as written
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
        if fmt == "csv":
            self._check_header()
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
        fmt = table_format(self.path)
        if fmt == "csv":
            if "utf-8" in text or "utf8" in text:
                found = self._bad_utf8()
            elif "more fields" in text:
                found = self._ragged()
        elif fmt == "ndjson":
            found = self._bad_json()
        return InputError(f"cannot read input {self.name}: {found or _first_line(exc)}")

    def _check_text(self, encoding: str, *, strict: bool) -> None:
        """The first block is text: no NUL byte, no UTF-16 mark and (`strict`) valid UTF-8.
        polars would read a UTF-16 or binary file into garbage column names without a word."""
        with self._open() as file:
            head = file.read(_BLOCK)
        for mark, name in _BOMS:
            if head.startswith(mark):
                raise InputError(
                    f"cannot read input {self.name}: line 1 is not valid UTF-8 "
                    f"(byte 0x{head[0]:02X}): the file starts with a {name.upper()} byte order "
                    f"mark; set input.encoding: {name}"
                )
        nul = head.find(b"\0")
        if nul >= 0:
            line = head.count(b"\n", 0, nul) + 1
            label = "UTF-8" if _polars_encoding(encoding) else encoding
            raise InputError(
                f"cannot read input {self.name}: line {line} holds a NUL byte (0x00), which "
                f"{label} text does not (UTF-16, or not a text file); set input.encoding to "
                "the file's encoding (e.g. utf-16-le), or input.path to a CSV file"
            )
        if strict and (found := self._bad_utf8(blocks=1)):
            raise InputError(f"cannot read input {self.name}: {found}")

    def _check_header(self) -> None:
        """Each header name once: polars renames a repeat (`a_duplicated_0`), and the output
        must hold the input's columns as they are."""
        with self._open() as raw, io.TextIOWrapper(raw, "utf-8-sig", "replace", newline="") as text:
            try:
                header = next(csv.reader(text, delimiter=self._separator), [])
            except csv.Error:
                return  # polars read it; a header too odd for the csv module is left to it
        places: dict[str, list[str]] = {}
        for number, name in enumerate(header, 1):
            places.setdefault(name, []).append(str(number))
        repeated = [
            f"'{printable(name)}' (columns {', '.join(numbers)})"
            for name, numbers in places.items()
            if len(numbers) > 1
        ]
        if repeated:
            raise InputError(
                f"cannot read input {self.name}: the header repeats {'; '.join(repeated)}; "
                "the output keeps every input column under its own name, so give each "
                "column a name of its own"
            )

    def _bad_json(self) -> str | None:
        """The first NDJSON line that is not one JSON object, and how it begins."""
        with self.path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw.decode(), parse_constant=_no_constant)
                except UnicodeDecodeError as exc:
                    return f"line {number} is not valid UTF-8 (byte 0x{raw[exc.start]:02X})"
                except json.JSONDecodeError as exc:
                    return (
                        f"line {number} is not valid JSON ({exc.msg}, column {exc.colno}): "
                        f"{_excerpt(raw)}"
                    )
                except (ValueError, RecursionError):
                    return f"line {number} is not valid JSON: {_excerpt(raw)}"
                if not isinstance(value, dict):
                    return f"line {number} is not a JSON object: {_excerpt(raw)}"
        return None

    def _open(self) -> IO[bytes]:
        if isinstance(self._data, io.BytesIO):
            return io.BytesIO(self._data.getbuffer())
        return self._data.open("rb")

    def _bad_utf8(self, blocks: int | None = None) -> str | None:
        """Where the first invalid UTF-8 byte is (in the first `blocks` MiB when given), and
        how to read the file anyway."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        lines = 0
        with self._open() as file:
            while (blocks is None or blocks > 0) and (block := file.read(_BLOCK)):
                if blocks is not None:
                    blocks -= 1
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


def _no_constant(name: str) -> None:
    """NaN and Infinity, which Python's json reads and JSON (and polars) does not."""
    raise ValueError(f"{name} is not JSON")


def _excerpt(raw: bytes) -> str:
    """The start of a line, quoted, with control characters escaped."""
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    cut = text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")
    return f"'{printable(cut)}'"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
