"""Store stage: request key -> stored result, in SQLite (WAL), queryable with `sqlite3`.

The store keeps the raw response apart from the answer, so a parser change costs no
request. Writes go through `Writer`, which commits everything finished in one event-loop
tick as one transaction: a worker moves on only once its answer is on disk, so a kill -9
repeats at most the requests that were in flight.

Answers are first appended to `recent` (an insert at the end of a table writes a page or
two per commit, where one into the key-ordered `responses` writes a page per row); every
`MERGE_ROWS` answers, on close, and on opening after a kill, they move to `responses` in one
transaction, in key order.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import LockError, OutputError
from .records import Result

_COLUMNS = "key, status, answer, raw, error, prompt_tokens, completion_tokens, attempts, updated_at"
_FIELDS = """status TEXT NOT NULL, answer TEXT, raw TEXT, error TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL"""
MERGE_ROWS = 20_000  # answers kept in `recent` (and in memory) before they move to `responses`


def _m001_responses(db: sqlite3.Connection) -> None:
    db.execute(f"CREATE TABLE responses (key TEXT PRIMARY KEY, {_FIELDS}) WITHOUT ROWID")


def _m002_memo(db: sqlite3.Connection) -> None:
    """Memoised chunks (see memo.py); any change to a stored response clears them all."""
    db.execute(
        """CREATE TABLE memo (
            digest BLOB PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            columns BLOB NOT NULL,
            ok INTEGER NOT NULL,
            skipped INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    for event in ("DELETE", "UPDATE"):
        db.execute(
            f"CREATE TRIGGER responses_{event.lower()}_clears_memo AFTER {event} ON responses "
            "BEGIN DELETE FROM memo; END"
        )


def _m003_recent(db: sqlite3.Connection) -> None:
    """Answers in arrival order, not yet merged into `responses`."""
    db.execute(f"CREATE TABLE recent (key TEXT NOT NULL, {_FIELDS})")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m001_responses,
    _m002_memo,
    _m003_recent,
]


class Store:
    """The checkpoint and cache of one job."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA cache_size=-16384")  # 16 MiB of pages, not 2
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise OutputError(f"cannot open store {path}: {exc}") from exc
        self._recent: dict[str, Result] = {}  # what `recent` holds, for lookups
        self._recent_rows = 0
        self.merge()  # answers a killed run left in `recent`

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN IMMEDIATE")
            migration(self._db)
            self._db.execute(f"PRAGMA user_version={number}")
            self._db.execute("COMMIT")

    def lookup(self, keys: Iterable[str], *, with_raw: bool = True) -> dict[str, Result]:
        """The stored results among `keys`; `with_raw=False` may leave out the raw bodies."""
        columns = _COLUMNS if with_raw else _COLUMNS.replace("raw,", "NULL,")
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
        self._write(f"INSERT INTO recent ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        for result in results:
            self._recent[result.key] = result
        self._recent_rows += len(rows)
        if self._recent_rows >= MERGE_ROWS:
            self.merge()

    def merge(self) -> None:
        """Move the answers in `recent` to `responses`, the later of two for a key winning."""
        if not self._recent and self._db.execute("SELECT 1 FROM recent LIMIT 1").fetchone() is None:
            return
        with self._transaction():
            self._db.execute(
                f"INSERT OR REPLACE INTO responses ({_COLUMNS}) "
                f"SELECT {_COLUMNS} FROM recent ORDER BY key, rowid"
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
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise OutputError(f"cannot write store {self.path}: {exc}") from exc

    def memo_get(self, digest: bytes) -> tuple[bytes, int, int] | None:
        """A memoised chunk's (columns, ok, skipped), if the store has it."""
        query = "SELECT columns, ok, skipped FROM memo WHERE digest = ?"
        row = self._db.execute(query, (digest,)).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]), int(row[2]))

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

    def memo_prune(self, keep: set[bytes]) -> None:
        """Drop the memoised chunks not in `keep` (those of older data or settings)."""
        stale = [(d,) for (d,) in self._db.execute("SELECT digest FROM memo") if d not in keep]
        if stale:
            self._write("DELETE FROM memo WHERE digest = ?", stale)

    def counts(self) -> dict[str, int]:
        """Stored requests by status."""
        self.merge()
        query = "SELECT status, count(*) FROM responses GROUP BY status"
        return {status: n for status, n in self._db.execute(query)}

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


class Lock:
    """An exclusive lock beside the store; the OS frees it if the run is killed."""

    def __init__(self, store_path: Path) -> None:
        self.path = store_path.with_name(store_path.name + ".lock")
        self._file: IO[str] | None = None

    def __enter__(self) -> Lock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+")
        except OSError as exc:
            raise OutputError(f"cannot create the lock {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LockError(
                f"another run ({holder}) is using the store {self.path.with_suffix('')}; "
                "wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
