"""Source stage: the input file -> polars DataFrames of at most `chunk_rows` rows, in order.

CSV, Parquet and NDJSON, chosen by extension. The schema is read once from a lazy scan,
so every chunk has the same column types.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from .errors import InputError

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}


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
    """A lazily read input table."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        self.path = path
        if not path.is_file():
            raise InputError(f"input file {path} does not exist")
        fmt = table_format(path)
        try:
            if fmt == "csv":
                sep = "\t" if path.suffix.lower() == ".tsv" else ","
                scan = pl.scan_csv(path, separator=sep, infer_schema_length=10_000)
            elif fmt == "parquet":
                scan = pl.scan_parquet(path)
            else:
                scan = pl.scan_ndjson(path, infer_schema_length=10_000)
            if limit is not None:
                scan = scan.head(limit)
            self.schema = scan.collect_schema()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"cannot read input {path}: {_first_line(exc)}") from None
        self._scan = scan

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names())

    def count(self) -> int:
        """The number of rows (a cheap scan for Parquet, a full pass for text formats)."""
        try:
            return int(self._scan.select(pl.len()).collect().item())
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"cannot read input {self.path}: {_first_line(exc)}") from None

    def chunks(self, size: int) -> Iterator[pl.DataFrame]:
        """The table in order, `size` rows at a time; at least one (maybe empty) frame."""
        yielded = False
        try:
            for frame in self._scan.collect_batches(chunk_size=size, maintain_order=True):
                for start in range(0, frame.height, size):
                    yielded = True
                    yield frame.slice(start, size)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"cannot read input {self.path}: {_first_line(exc)}") from None
        if not yielded:
            yield pl.DataFrame(schema=self.schema)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
