"""Salvage stage: a damaged store -> a fresh store holding every answer still readable.

A corrupt page can make a scan fail half-way, so each table is read in its own order (the
key of `responses`, the rowid of `recent`) and a failure is stepped past: the next readable
position is found by doubling a bound in that order, then bisecting back, so what is lost is
about the damaged pages' rows. The memo is a cache and is not copied. The damaged file is
kept beside the store as `{name}.damaged-{time}`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OutputError, StoreError
from .lock import Lock
from .storedb import COLUMNS, connect, integrity, is_damage, migrate, store_error

_KEY_BYTES = 24  # keys are told apart on this many leading bytes while stepping past damage
_SIDE_FILES = ("-wal", "-shm")
_BATCH = 512  # rows read at a time from a damaged file


@dataclass(frozen=True)
class Health:
    """What `check` found: the problems (none: sound) and the requests stored."""

    problems: tuple[str, ...]
    answers: int


@dataclass(frozen=True)
class Salvaged:
    """What `salvage` did: answers kept, unreadable stretches skipped, the damaged file's place."""

    kept: int
    skipped: int
    damaged: Path


@dataclass(frozen=True)
class _Order:
    """A table's order, and how its positions map to numbers that can be bisected."""

    table: str
    column: str
    param: str
    top: int
    number: Callable[[Any], int]
    bound: Callable[[int], object]


def _key_number(key: str) -> int:
    return int.from_bytes(key.encode()[:_KEY_BYTES].ljust(_KEY_BYTES, b"\0"), "big")


def _key_bound(number: int) -> bytes:
    return number.to_bytes(_KEY_BYTES, "big").rstrip(b"\0")  # compared as text: CAST below


_ORDERS = (
    _Order("responses", "key", "CAST(? AS TEXT)", 256**_KEY_BYTES - 1, _key_number, _key_bound),
    _Order("recent", "rowid", "?", 2**63 - 1, int, int),  # after `responses`: later answers
)


def check(path: Path) -> Health:
    """Check the store at `path` without changing it; works on a file `Store` cannot open."""
    if not path.is_file():
        raise StoreError(f"there is no store at {path} yet; `pipeline run CONFIG` creates it")
    try:
        db = connect(path)
    except sqlite3.Error as exc:
        if not is_damage(exc):
            raise store_error(path, exc) from exc
        return Health((str(exc),), 0)
    try:
        problems = integrity(db)
        return Health(tuple(problems), 0 if problems else _answers(db))
    except sqlite3.Error as exc:
        raise store_error(path, exc) from exc
    finally:
        db.close()


def _answers(db: sqlite3.Connection) -> int:
    """Distinct requests stored, merged or still in `recent`."""
    tables = _tables(db)
    total = int(db.execute("SELECT count(*) FROM responses").fetchone()[0])
    if "recent" in tables:
        query = (
            "SELECT count(DISTINCT key) FROM recent WHERE key NOT IN (SELECT key FROM responses)"
        )
        total += int(db.execute(query).fetchone()[0])
    return total


def _tables(db: sqlite3.Connection) -> set[str]:
    return {
        str(name) for (name,) in db.execute("SELECT name FROM sqlite_schema WHERE type='table'")
    }


def salvage(path: Path, *, now: Callable[[], float] = time.time) -> Salvaged:
    """Copy every readable answer at `path` into a fresh store that replaces it.

    Holds the store's lock: a running job makes this a `LockError`.
    """
    if not path.is_file():
        raise StoreError(f"there is no store at {path} to salvage")
    with Lock(path):
        fresh = path.with_name(f"{path.name}.salvage-tmp")
        _remove(fresh)
        try:
            kept, skipped = _copy(path, fresh)
        except BaseException:
            _remove(fresh)
            raise
        damaged = _aside(path, now())
        try:
            fresh.replace(path)
        except OSError as exc:
            raise OutputError(f"cannot move {fresh} to {path}: {exc.strerror or exc}") from exc
    return Salvaged(kept, skipped, damaged)


def _copy(path: Path, fresh: Path) -> tuple[int, int]:
    """Build `fresh` from what `path` still gives; returns (answers kept, stretches skipped)."""
    skipped = [0]
    with contextlib.closing(sqlite3.connect(fresh, isolation_level=None)) as out:
        try:
            migrate(out)
            out.execute("BEGIN")
        except sqlite3.Error as exc:
            raise store_error(fresh, exc) from exc
        try:
            source = sqlite3.connect(path, isolation_level=None)
            source.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise store_error(path, exc) from exc
        with contextlib.closing(source):
            insert = f"INSERT OR REPLACE INTO responses ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
            try:
                tables = _tables(source)
            except sqlite3.Error as exc:
                if not is_damage(exc):
                    raise store_error(path, exc) from exc
                tables, skipped[0] = set(), 1  # not even the schema: nothing to copy
            for order in _ORDERS:
                if order.table not in tables:
                    continue
                for rows in _readable(source, path, order, skipped):  # translates its errors
                    try:
                        out.executemany(insert, rows)
                    except sqlite3.Error as exc:
                        raise store_error(fresh, exc) from exc
        try:
            out.execute("COMMIT")
            kept = int(out.execute("SELECT count(*) FROM responses").fetchone()[0])
        except sqlite3.Error as exc:
            raise store_error(fresh, exc) from exc
    return kept, skipped[0]


def _readable(
    db: sqlite3.Connection, path: Path, order: _Order, skipped: list[int]
) -> Iterator[list[tuple[Any, ...]]]:
    """Every readable row of `order.table` (its `COLUMNS`), in order and in batches.

    Rows are read `LIMIT n` at a time: a cursor reads one row ahead, so a plain scan fails
    on the row before the damage too. A failed batch is read again smaller, down to one row;
    when one row fails, `_next_readable` finds where the order can be read again.
    """
    select = (
        f"SELECT {order.column}, {COLUMNS} FROM {order.table} "
        f"WHERE {order.column} {{}} {order.param} ORDER BY {order.column} LIMIT ?"
    )
    op, bound, floor = ">=", order.bound(0), 0  # floor: the lowest number not yet passed
    size = _BATCH
    while True:
        try:
            rows = db.execute(select.format(op), (bound, size)).fetchall()
        except sqlite3.Error as exc:
            if not is_damage(exc):
                raise store_error(path, exc) from exc
            if size > 1:
                size //= 8
                continue
            skipped[0] += 1
            found = _next_readable(db, path, order, floor)
            if found is None:
                return
            op, bound, floor, size = ">=", order.bound(found), found + 1, 1
            continue
        if not rows:
            return
        yield [tuple(row[1:]) for row in rows]
        last = rows[-1][0]
        op, bound, floor = ">", last, max(floor, order.number(last) + 1)
        size = min(_BATCH, size * 8)


def _next_readable(db: sqlite3.Connection, path: Path, order: _Order, start: int) -> int | None:
    """The least number from `start` whose first row on is readable; None: nothing is."""
    probe = (
        f"SELECT {COLUMNS} FROM {order.table} WHERE {order.column} >= {order.param} "
        f"ORDER BY {order.column} LIMIT 1"
    )

    def readable(number: int) -> bool:
        try:
            db.execute(probe, (order.bound(number),)).fetchall()
        except sqlite3.Error as exc:
            if not is_damage(exc):
                raise store_error(path, exc) from exc
            return False
        return True

    if start > order.top:
        return None
    failed, found, step = start - 1, start, 1
    while not readable(found):  # at most log2(top) doublings
        if found >= order.top:
            return None
        failed, found, step = found, min(found + step, order.top), step * 2
    while found - failed > 1:  # as many halvings
        middle = (failed + found) // 2
        if readable(middle):
            found = middle
        else:
            failed = middle
    return found


def _aside(path: Path, when: float) -> Path:
    """Move the damaged file (and its -wal and -shm) to `{name}.damaged-{time}`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    damaged = path.with_name(f"{path.name}.damaged-{stamp}")
    for n in range(1, 100):
        if not damaged.exists():
            break
        damaged = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    try:
        for suffix in _SIDE_FILES:  # first: a stale -wal beside the fresh file would be replayed
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.replace(damaged.with_name(damaged.name + suffix))
        path.replace(damaged)
    except OSError as exc:
        raise OutputError(
            f"cannot move the damaged store {path} aside: {exc.strerror or exc}"
        ) from exc
    return damaged


def _remove(path: Path) -> None:
    """Remove `path` and the files SQLite keeps beside it, if there are any."""
    for name in (path.name, *(path.name + s for s in (*_SIDE_FILES, "-journal"))):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(name).unlink()
