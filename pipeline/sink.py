"""Sink stage: answered chunks -> the output file, written whole or not at all.

Chunks are appended to a temporary file beside the output; `commit` renames it into
place, so a crash or a full disk never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import OutputError
from .source import table_format


class Sink:
    """Writes DataFrames in order to `path`, in the format its extension names."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.format = table_format(path)
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._file: IO[bytes] | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self.rows = 0
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed run
            stale.unlink(missing_ok=True)

    def write(self, frame: pl.DataFrame) -> None:
        """Append one chunk."""
        try:
            if self.format == "parquet":
                self._write_parquet(frame)
            else:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = self._tmp.open("wb")
                    if self.format == "csv":
                        sep = "\t" if self.path.suffix.lower() == ".tsv" else ","
                        frame.write_csv(self._file, include_header=True, separator=sep)
                    else:
                        frame.write_ndjson(self._file)
                elif self.format == "csv":
                    sep = "\t" if self.path.suffix.lower() == ".tsv" else ","
                    frame.write_csv(self._file, include_header=False, separator=sep)
                else:
                    frame.write_ndjson(self._file)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write output {self.path}: {exc.strerror or exc}") from exc
        except (pl.exceptions.PolarsError, pa.ArrowException) as exc:
            self.abort()
            raise OutputError(f"cannot write output {self.path}: {exc}") from exc
        self.rows += frame.height

    def _write_parquet(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if self._parquet is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._schema = table.schema
            self._parquet = pq.ParquetWriter(self._tmp, self._schema)
        elif self._schema is not None and table.schema != self._schema:
            table = table.cast(self._schema)
        self._parquet.write_table(table)

    def commit(self) -> None:
        """Flush, fsync and move the finished file into place."""
        try:
            if self._parquet is not None:
                self._parquet.close()
                self._parquet = None
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
            self._tmp.replace(self.path)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write output {self.path}: {exc.strerror or exc}") from exc

    def abort(self) -> None:
        """Drop the temporary file; the previous output stays as it was."""
        for closer in (self._parquet, self._file):
            if closer is not None:
                with contextlib.suppress(OSError, pa.ArrowException):
                    closer.close()
        self._parquet = None
        self._file = None
        with contextlib.suppress(OSError):
            self._tmp.unlink(missing_ok=True)
