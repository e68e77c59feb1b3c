"""Memo: an unchanged, fully answered chunk gets last run's answer columns in one read.

A rerun over a table that did not change (a resume, a nightly run over a grown table)
would otherwise render every row and look each one up in the store. The memo keys a chunk
by a digest of its rows' values and of every setting that shapes its requests or answers,
so a changed row, prompt, model parameter or parser misses it and takes the per-row path.

Only chunks whose every row is final (ok or skipped) are kept; the store clears all of
them when a stored response is deleted or updated. Chunks with images are never kept: an
image file can change under the same path.
"""

from __future__ import annotations

import hashlib
import io
import json
from array import array
from dataclasses import dataclass

import polars as pl

from .config import Config
from .store import Store

MEMO_VERSION = 2  # 2: null cells reach Jinja as None
_SEEDS = (0, 0x5EED_CAFE)  # two 64-bit row hashes: 128 bits per row


@dataclass(frozen=True, slots=True)
class Hit:
    """A memoised chunk: its answer (and meta) columns and its row counts."""

    columns: pl.DataFrame
    ok: int
    skipped: int


def fingerprint(config: Config) -> str | None:
    """The settings that shape a chunk's requests and answer columns; None: no memo."""
    if config.prompt.images:
        return None
    settings = {
        "memo": MEMO_VERSION,
        "polars": pl.__version__,  # row hashes are stable within a polars version only
        "prompt": config.prompt.model_dump(mode="json"),
        "model": config.model.model_dump(
            mode="json", include={"name", "params", "structured_output"}
        ),
        "output": config.output.model_dump(
            mode="json", exclude={"path", "retry_invalid", "url", "storage_options"}
        ),
    }
    text = json.dumps(settings, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Memo:
    """Reads and writes memoised chunks of one job in its store."""

    def __init__(self, store: Store, config: Config, columns: list[str]) -> None:
        self.store = store
        self.fingerprint = fingerprint(config)
        self._columns = columns  # the input columns the prompt reads
        self.touched: set[bytes] = set()  # the chunks this run read or wrote

    def digest(self, frame: pl.DataFrame) -> bytes | None:
        """The chunk's key: settings, column types and every row's values, in order."""
        if self.fingerprint is None or frame.height == 0:
            return None
        used = frame.select(self._columns)
        hashed = hashlib.sha256(f"{self.fingerprint}|{frame.height}|{used.schema}".encode())
        if self._columns:
            try:
                text = used.select(pl.all().cast(pl.String))  # -0.0 and 0.0 render apart
            except pl.exceptions.PolarsError:
                return None  # nested values: no memo, the per-row path handles them
            for seed in _SEEDS:
                hashed.update(array("Q", text.hash_rows(seed=seed).to_list()).tobytes())
        return hashed.digest()

    def get(self, digest: bytes) -> Hit | None:
        found = self.store.memo_get(digest)
        if found is None:
            return None
        blob, ok, skipped = found
        self.touched.add(digest)
        return Hit(pl.read_ipc(io.BytesIO(blob)), ok, skipped)

    def counts(self, digest: bytes) -> tuple[int, int] | None:
        """A memoised chunk's (ok, skipped) rows, without reading its columns."""
        return self.store.memo_counts(digest)

    def put(self, digest: bytes, columns: pl.DataFrame, ok: int, skipped: int) -> None:
        buffer = io.BytesIO()
        columns.write_ipc(buffer, compression="zstd")
        assert self.fingerprint is not None
        self.store.memo_put(digest, self.fingerprint, buffer.getvalue(), ok, skipped)
        self.touched.add(digest)

    def prune(self) -> None:
        """Forget the chunks this run did not see: the memo holds one run's worth."""
        self.store.memo_prune(self.touched)
