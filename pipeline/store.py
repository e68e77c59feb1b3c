"""Store stage: request key -> stored result, in SQLite (WAL), queryable with `sqlite3`.

The store keeps the raw response apart from the answer, so a parser change costs no
request. Writes go through `Writer`, which commits everything finished in one event-loop
tick as one transaction: a worker moves on only once its answer is on disk, so a kill -9
repeats at most the requests that were in flight.

Answers are first appended to `recent` (an insert at the end of a table writes a page or
two per commit, where one into the key-ordered `responses` writes a page per row); every
`MERGE_ROWS` answers, on close, and on opening after a kill, they move to `responses` in one
transaction, in key order.

Every SQLite error is translated by `storedb.store_error`, naming the file and what to do; a
damaged file is left to `salvage.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from .errors import OutputError
from .records import Result
from .storedb import COLUMNS, connect, integrity, migrate, store_error

MERGE_ROWS = 20_000  # answers kept in `recent` (and in memory) before they move to `responses`
_P = ParamSpec("_P")
_T = TypeVar("_T")


def _translated(
    method: Callable[Concatenate[Store, _P], _T],
) -> Callable[Concatenate[Store, _P], _T]:
    """`method` with its SQLite errors translated by `store_error`."""

    def translated(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc

    functools.update_wrapper(translated, method)
    return translated


BATCH_FIELDS = (
    "id, submission, part, state, remote, file_id, batch_id, requests, completed, failed, "
    "created_at, deadline_at"
)


@dataclass
class BatchRecord:
    """One submitted (or being submitted) batch, as the store records it."""

    id: int
    submission: str
    part: int
    state: str  # prepared, uploaded, submitted, collected
    remote: str | None  # the server's status, as last polled
    file_id: str | None
    batch_id: str | None
    requests: int
    completed: int
    failed: int
    created_at: float  # Unix time, when the batch was recorded, just before its upload
    deadline_at: float | None  # as the submitting run set it; a run measures its own
    # run.batch.deadline from created_at instead (`batchcollect.due_at`)


class Store:
    """The checkpoint and cache of one job."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._recent: dict[str, Result] = {}  # what `recent` holds, for lookups
        self._recent_rows = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot open store {path}: {exc.strerror or exc}") from exc
        try:
            self._db = connect(path)
        except sqlite3.Error as exc:
            raise store_error(path, exc) from exc
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    @_translated
    def _open(self) -> None:
        migrate(self._db)
        self._probe_write()
        self.merge()  # answers a killed run left in `recent`

    def _probe_write(self) -> None:
        """Fail now, before any request is sent, if the file cannot be written.

        A real write, rolled back: file modes say nothing when the process runs as root, and
        an immutable file or a read-only mount refuses it all the same.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT INTO recent (key, status, updated_at) VALUES ('', '', 0)")
        finally:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    @_translated
    def check(self) -> list[str]:
        """What `PRAGMA quick_check` finds wrong with the store (empty when it is sound)."""
        return integrity(self._db)

    @_translated
    def lookup(self, keys: Iterable[str], *, with_raw: bool = True) -> dict[str, Result]:
        """The stored results among `keys`; `with_raw=False` may leave out the raw bodies."""
        columns = COLUMNS if with_raw else COLUMNS.replace("raw,", "NULL,")
        found: dict[str, Result] = {}
        batch: list[str] = []
        recent = self._recent
        for key in sorted(keys):  # neighbouring keys share pages of the index
            if key in recent:
                found[key] = recent[key]
                continue
            batch.append(key)
            if len(batch) == 500:
                self._lookup_batch(columns, batch, found)
                batch = []
        if batch:
            self._lookup_batch(columns, batch, found)
        return found

    def _lookup_batch(self, columns: str, keys: list[str], found: dict[str, Result]) -> None:
        marks = ",".join("?" * len(keys))
        query = f"SELECT {columns} FROM responses WHERE key IN ({marks})"
        for row in self._db.execute(query, keys):
            found[row[0]] = Result(*row[:8])

    def put_many(self, results: list[Result]) -> None:
        """Store `results` in one transaction (a later result for a key replaces it)."""
        now = time.time()
        rows = [
            (
                r.key,
                r.status,
                r.answer,
                r.raw,
                r.error,
                r.prompt_tokens,
                r.completion_tokens,
                r.attempts,
                now,
            )
            for r in results
        ]
        self._write(f"INSERT INTO recent ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        for result in results:
            self._recent[result.key] = result
        self._recent_rows += len(rows)
        if self._recent_rows >= MERGE_ROWS:
            self.merge()

    @_translated
    def merge(self) -> None:
        """Move the answers in `recent` to `responses`, the later of two for a key winning."""
        if not self._recent and self._db.execute("SELECT 1 FROM recent LIMIT 1").fetchone() is None:
            return
        with self._transaction():
            self._db.execute(
                f"INSERT OR REPLACE INTO responses ({COLUMNS}) "
                f"SELECT {COLUMNS} FROM recent ORDER BY key, rowid"
            )
            self._db.execute("DELETE FROM recent")
        self._recent.clear()
        self._recent_rows = 0

    def _write(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        """Run `statement` over `rows` in one transaction; a failure leaves nothing behind."""
        with self._transaction():
            self._db.executemany(statement, rows)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN")
            yield
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise store_error(self.path, exc) from exc
        except (OverflowError, ValueError) as exc:
            self._rollback()
            raise OutputError(f"cannot write store {self.path}: {exc}") from exc

    def _rollback(self) -> None:
        """Undo the open transaction, if SQLite has not already (a damaged file may refuse)."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    @_translated
    def memo_get(self, digest: bytes) -> tuple[bytes, int, int] | None:
        """A memoised chunk's (columns, ok, skipped), if the store has it."""
        query = "SELECT columns, ok, skipped FROM memo WHERE digest = ?"
        row = self._db.execute(query, (digest,)).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]), int(row[2]))

    @_translated
    def memo_counts(self, digest: bytes) -> tuple[int, int] | None:
        """A memoised chunk's (ok, skipped) rows, without reading its columns."""
        row = self._db.execute(
            "SELECT ok, skipped FROM memo WHERE digest = ?", (digest,)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def memo_put(
        self, digest: bytes, fingerprint: str, columns: bytes, ok: int, skipped: int
    ) -> None:
        row = (digest, fingerprint, columns, ok, skipped, time.time())
        self._write("INSERT OR REPLACE INTO memo VALUES (?,?,?,?,?,?)", [row])

    @_translated
    def memo_prune(self, keep: set[bytes]) -> None:
        """Drop the memoised chunks not in `keep` (those of older data or settings)."""
        stale = [(d,) for (d,) in self._db.execute("SELECT digest FROM memo") if d not in keep]
        if stale:
            self._write("DELETE FROM memo WHERE digest = ?", stale)

    @_translated
    def counts(self) -> dict[str, int]:
        """Stored requests by status."""
        self.merge()
        query = "SELECT status, count(*) FROM responses GROUP BY status"
        return {status: n for status, n in self._db.execute(query)}

    @_translated
    def store_id(self) -> str:
        """This store's id, put in the metadata of the batches it submits."""
        return str(self._db.execute("SELECT value FROM meta WHERE name = 'store_id'").fetchone()[0])

    def batch_add(
        self,
        submission: str,
        part: int,
        keys: list[str],
        deadline_at: float | None,
        reserved_usd: float = 0.0,
    ) -> BatchRecord:
        """Record a batch about to be uploaded, with its keys, in one transaction;
        `reserved_usd`: its worst-case cost, held against run.max_cost_usd while it is open."""
        now = time.time()
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO batches (submission, part, state, requests, reserved_usd, created_at,"
                " deadline_at, updated_at) VALUES (?, ?, 'prepared', ?, ?, ?, ?, ?)",
                (submission, part, len(keys), reserved_usd, now, deadline_at, now),
            )
            number = int(cursor.lastrowid or 0)
            self._db.executemany(
                "INSERT OR IGNORE INTO batch_keys VALUES (?, ?)", ((k, number) for k in keys)
            )
        return BatchRecord(
            number,
            submission,
            part,
            "prepared",
            None,
            None,
            None,
            len(keys),
            0,
            0,
            now,
            deadline_at,
        )

    def batch_update(self, record: BatchRecord, **changes: Any) -> None:
        """Write `changes` (fields of `BatchRecord`) to the record and the store at once."""
        names = ", ".join(f"{name} = ?" for name in changes)
        with self._transaction():
            self._db.execute(
                f"UPDATE batches SET {names}, updated_at = ? WHERE id = ?",
                (*changes.values(), time.time(), record.id),
            )
        for name, value in changes.items():
            setattr(record, name, value)

    def batch_forget(self, record: BatchRecord) -> None:
        """Drop a batch that never reached the server (its keys are free again)."""
        with self._transaction():
            self._db.execute("DELETE FROM batch_keys WHERE batch = ?", (record.id,))
            self._db.execute("DELETE FROM batches WHERE id = ?", (record.id,))

    @_translated
    def batches(self, *, open_only: bool = True) -> list[BatchRecord]:
        """The recorded batches, oldest first; `open_only`: those not collected yet."""
        where = " WHERE state != 'collected'" if open_only else ""
        query = f"SELECT {BATCH_FIELDS} FROM batches{where} ORDER BY id"
        return [BatchRecord(*row) for row in self._db.execute(query)]

    @_translated
    def batch_keys(self, record: BatchRecord) -> list[str]:
        query = "SELECT key FROM batch_keys WHERE batch = ? ORDER BY key"
        return [key for (key,) in self._db.execute(query, (record.id,))]

    @_translated
    def batch_reserved_usd(self) -> float:
        """The worst-case cost of the batches not collected yet."""
        query = "SELECT total(reserved_usd) FROM batches WHERE state != 'collected'"
        return float(self._db.execute(query).fetchone()[0])

    @_translated
    def open_batch_keys(self) -> set[str]:
        """The keys of every batch not collected yet: not to be submitted again."""
        query = (
            "SELECT key FROM batch_keys JOIN batches ON batches.id = batch_keys.batch "
            "WHERE batches.state != 'collected'"
        )
        return {key for (key,) in self._db.execute(query)}

    @_translated
    def close(self) -> None:
        with contextlib.suppress(OutputError):  # a full disk: the next open merges `recent`
            self.merge()
        self._db.close()


class Writer:
    """Batches results from many workers into one commit per event-loop tick."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[Result] = []
        self._flushed: asyncio.Future[None] | None = None

    async def put(self, result: Result) -> None:
        """Queue `result` and wait until it is committed.

        Workers wait on one shared future, not a shielded copy each (a third of the
        callbacks); they are only ever cancelled all together, when the run ends.
        """
        self._pending.append(result)
        if self._flushed is None:
            loop = asyncio.get_running_loop()
            self._flushed = loop.create_future()
            loop.call_soon(self._flush)
        await self._flushed

    def _flush(self) -> None:
        flushed, self._flushed = self._flushed, None
        pending, self._pending = self._pending, []
        assert flushed is not None
        try:
            self._store.put_many(pending)
        except BaseException as exc:  # every waiting worker must hear of it
            if not flushed.done():
                flushed.set_exception(exc)
                flushed.exception()  # seen here: no "never retrieved" noise if all waiters left
        else:
            if not flushed.done():  # cancelled: the run is ending, the answers are stored
                flushed.set_result(None)
