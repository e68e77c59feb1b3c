"""The store's SQLite file: opening it (WAL), its schema and migrations, and the one
translation of a SQLite error into a message that names the file and what to do.

Shared by `store.Store` and by `salvage.py`, which opens damaged files with the same settings.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError, StoreError

COLUMNS = "key, status, answer, raw, error, prompt_tokens, completion_tokens, attempts, updated_at"
_FIELDS = """status TEXT NOT NULL, answer TEXT, raw TEXT, error TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL"""
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


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


def _m004_batches(db: sqlite3.Connection) -> None:
    """The store's id (for the metadata of what it submits) and its batches (see batches.py).

    A batch row is written before each step of a submission and after it: `state` is the
    last step done (prepared: keys chosen; uploaded: file_id; submitted: batch_id;
    collected: its answers are in `responses`).
    """
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    db.execute("INSERT INTO meta VALUES ('store_id', ?)", (uuid.uuid4().hex,))
    db.execute(
        """CREATE TABLE batches (
            id INTEGER PRIMARY KEY,
            submission TEXT NOT NULL,
            part INTEGER NOT NULL,
            state TEXT NOT NULL,
            remote TEXT,
            file_id TEXT,
            batch_id TEXT,
            requests INTEGER NOT NULL,
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            reserved_usd REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            deadline_at REAL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        "CREATE TABLE batch_keys (key TEXT NOT NULL, batch INTEGER NOT NULL, "
        "PRIMARY KEY (key, batch)) WITHOUT ROWID"
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m001_responses,
    _m002_memo,
    _m003_recent,
    _m004_batches,
]


def _code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code; None for an error of the `sqlite3` module itself."""
    code: int | None = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether the file is corrupt or not a database at all.

    The `sqlite3` module's own OperationalError (no SQLite code) is a stored text it cannot
    decode: the store only ever writes `str`, so the bytes on disk are damaged.
    """
    code = _code(exc)
    return code in _DAMAGED or (code is None and isinstance(exc, sqlite3.OperationalError))


def store_error(path: Path, exc: sqlite3.Error) -> OutputError:
    """The one translation of a SQLite error: what is wrong with which file, and what to do."""
    code = _code(exc)
    if is_damage(exc):
        detail = str(exc) if len(str(exc)) <= 200 else str(exc)[:200] + "..."
        return StoreError(
            f"the store {path} is damaged ({detail}); `pipeline store check CONFIG` shows what "
            "is wrong and `pipeline store salvage CONFIG` copies every readable answer into a "
            "fresh store"
        )
    if code == sqlite3.SQLITE_READONLY:
        return StoreError(
            f"the store {path} is read-only: {exc}; make it writable or set run.store to "
            "another path"
        )
    if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
        return OutputError(f"cannot write store {path}: {exc}; free some disk space and rerun")
    if code == sqlite3.SQLITE_CANTOPEN:
        return StoreError(
            f"cannot open store {path}: {exc}; check that it is a file in a writable folder "
            "or set run.store to another path"
        )
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreError(
            f"the store {path} is busy ({exc}): another program is writing it; close that "
            "program and rerun"
        )
    return StoreError(f"cannot use the store {path}: {exc}")


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the store at `path` in WAL mode; reads nothing but the header."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA cache_size=-16384")  # 16 MiB of pages, not 2
    except sqlite3.Error:
        db.close()
        raise
    return db


def migrate(db: sqlite3.Connection) -> None:
    """Bring the schema up to the last of `MIGRATIONS`, one transaction per step."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        db.execute("BEGIN IMMEDIATE")
        migration(db)
        db.execute(f"PRAGMA user_version={number}")
        db.execute("COMMIT")


def integrity(db: sqlite3.Connection, limit: int = 20) -> list[str]:
    """What `PRAGMA quick_check` finds wrong in the file (at most `limit` lines; none: sound)."""
    try:
        rows = db.execute(f"PRAGMA quick_check({limit})").fetchall()
    except sqlite3.Error as exc:
        if not is_damage(exc):
            raise
        return [str(exc)]
    found = [line for (text,) in rows for line in str(text).splitlines() if "***" not in line]
    return [] if found == ["ok"] else found[:limit]
