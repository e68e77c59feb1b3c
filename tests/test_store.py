"""Unit tests for `pipeline.store`: the SQLite store, the batching writer, the run lock."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import LockError, OutputError, StoreError
from pipeline.lock import Lock
from pipeline.records import FAILED, OK, Result
from pipeline.salvage import check, salvage
from pipeline.store import Store, Writer
from pipeline.storedb import MIGRATIONS


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "s.db")
    yield opened
    opened.close()


def ok(
    key: str,
    answer: str = "yes",
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    attempts: int = 0,
) -> Result:
    return Result(
        key,
        OK,
        answer=answer,
        raw=f'{{"a":"{answer}"}}',
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        attempts=attempts,
    )


def read_directly(path: Path, key: str, table: str = "recent") -> tuple[str, str | None] | None:
    """Read one row over a separate connection: only committed data is visible."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        order = " ORDER BY rowid DESC" if table == "recent" else ""  # the latest answer
        query = f"SELECT status, answer FROM {table} WHERE key = ?{order}"
        row = db.execute(query, (key,)).fetchone()
    return None if row is None else (row[0], row[1])


# --- Store -------------------------------------------------------------------------------


def test_put_many_then_lookup_returns_equal_results(store: Store) -> None:
    results = [
        ok("k1", "a", prompt_tokens=10, completion_tokens=2, attempts=1),
        Result("k2", FAILED, error="HTTP 400: bad", attempts=3),
        ok("k3", "ünïcødé ✓", attempts=2),
    ]
    store.put_many(results)

    found = store.lookup(["k1", "k2", "k3"])
    assert found == {r.key: r for r in results}
    assert found["k2"].answer is None
    assert found["k1"].raw == '{"a":"a"}'


def test_lookup_returns_only_the_keys_asked_for(store: Store) -> None:
    store.put_many([ok("a"), ok("b"), ok("c")])

    assert set(store.lookup(["a", "c", "missing"])) == {"a", "c"}
    assert store.lookup([]) == {}
    assert store.lookup(iter(["b"])) == {"b": ok("b")}


def test_lookup_of_more_than_500_keys(store: Store) -> None:
    results = [ok(f"key-{i:05d}", str(i)) for i in range(1234)]
    store.put_many(results)

    asked = [r.key for r in results] + [f"absent-{i}" for i in range(300)]
    found = store.lookup(asked)
    assert len(found) == 1234
    assert found["key-01233"].answer == "1233"
    assert found["key-00500"] == results[500]


def test_replace_overwrites_failed_with_ok(store: Store) -> None:
    store.put_many([Result("k", FAILED, error="timeout", attempts=6)])
    store.put_many([ok("k", "fine", attempts=1)])

    assert store.lookup(["k"]) == {"k": ok("k", "fine", attempts=1)}
    assert store.counts() == {OK: 1}


def test_counts_by_status(store: Store) -> None:
    assert store.counts() == {}
    store.put_many([ok("a"), ok("b"), Result("c", FAILED, error="x")])

    assert store.counts() == {OK: 2, FAILED: 1}


def test_put_many_of_nothing_is_harmless(store: Store) -> None:
    store.put_many([])

    assert store.counts() == {}


def test_schema_version_and_wal(store: Store) -> None:
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        columns = [row[1] for row in db.execute("PRAGMA table_info(responses)")]
    assert version == len(MIGRATIONS)
    assert mode == "wal"
    assert columns[:2] == ["key", "status"]
    assert "raw" in columns and "updated_at" in columns


def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "s.db"  # parents are created
    first = Store(path)
    first.put_many([ok("kept", "v")])
    first.close()

    second = Store(path)
    try:
        assert second.lookup(["kept"]) == {"kept": ok("kept", "v")}
        assert second.counts() == {OK: 1}
    finally:
        second.close()


def test_committed_data_is_visible_to_other_connections(store: Store) -> None:
    store.put_many([ok("k", "v")])

    assert read_directly(store.path, "k") == (OK, "v")
    assert read_directly(store.path, "k", "responses") is None  # not merged yet
    store.merge()
    assert read_directly(store.path, "k", "responses") == (OK, "v")
    assert read_directly(store.path, "k") is None


def test_answers_move_to_responses_in_bulk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipeline.store.MERGE_ROWS", 3)
    store = Store(tmp_path / "s.db")
    try:
        store.put_many([Result("a", FAILED, error="timeout"), ok("b")])
        assert read_directly(store.path, "a", "responses") is None
        store.put_many([ok("a", "later")])  # the third answer: all three move
        assert read_directly(store.path, "a", "responses") == (OK, "later")
        assert read_directly(store.path, "b", "responses") == (OK, "yes")
        assert read_directly(store.path, "a") is None
        assert store.lookup(["a", "b"]) == {"a": ok("a", "later"), "b": ok("b")}
    finally:
        store.close()


def test_answers_a_killed_run_left_are_merged_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    store.put_many([Result("k", FAILED, error="timeout"), ok("j")])
    store.put_many([ok("k", "fine")])
    # no close(): as after kill -9, the answers are only in `recent`
    assert read_directly(path, "k", "responses") is None
    reopened = Store(path)
    try:
        assert read_directly(path, "k", "responses") == (OK, "fine")
        assert reopened.lookup(["k", "j"]) == {"k": ok("k", "fine"), "j": ok("j")}
        assert reopened.counts() == {OK: 2}
    finally:
        reopened.close()
        store.close()


def test_unopenable_store_is_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot open store"):
        Store(tmp_path)  # a directory, not a database file


def test_file_that_is_not_a_database_is_a_damaged_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(StoreError) as caught:
        Store(path)
    assert str(caught.value).startswith(f"the store {path} is damaged (file is not a database);")
    assert "`pipeline store salvage CONFIG`" in str(caught.value)


def test_failed_put_leaves_the_store_usable(store: Store) -> None:
    with contextlib.suppress(OverflowError, OutputError):
        store.put_many([ok("huge", prompt_tokens=10**30)])

    store.put_many([ok("next")])
    assert store.lookup(["next", "huge"]) == {"next": ok("next")}


def test_a_full_disk_is_an_output_error_not_a_damaged_store(store: Store) -> None:
    store._db.execute("PRAGMA max_page_count = 20")  # as if the disk had room for 20 pages
    with pytest.raises(OutputError, match=r"cannot write store .*full") as caught:
        store.put_many([ok(f"k{i}", "x" * 4000) for i in range(40)])
    assert not isinstance(caught.value, StoreError)
    assert store.lookup(["k0"]) == {}


def test_a_read_only_store_is_refused_when_it_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    Store(path).close()

    def read_only(path: Path) -> sqlite3.Connection:  # what SQLite does with a file it can't write
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    monkeypatch.setattr("pipeline.store.connect", read_only)
    with pytest.raises(StoreError) as caught:
        Store(path)
    assert str(caught.value).startswith(f"the store {path} is read-only: ")
    assert str(caught.value).endswith("make it writable or set run.store to another path")


def test_the_write_probe_leaves_nothing_behind(store: Store) -> None:
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        assert db.execute("SELECT count(*) FROM recent").fetchone() == (0,)
    assert store.counts() == {}


# --- Damage and salvage ------------------------------------------------------------------


def key(i: int) -> str:
    return "r1:" + hashlib.sha256(str(i).encode()).hexdigest()


def filled(path: Path, rows: int = 3000) -> list[Result]:
    """A closed store of `rows` answers (long enough to span a few hundred pages)."""
    results = [ok(key(i), f"answer {i} " + "x" * 300) for i in range(rows)]
    store = Store(path)
    store.put_many(results)
    store.memo_put(b"d" * 32, "fingerprint", b"columns", rows, 0)
    store.close()
    return results


def pages_of(path: Path, table: str, *, leaves_only: bool = False) -> list[int]:
    """The page numbers of `table`'s b-tree, in file order (from SQLite's dbstat table)."""
    query = "SELECT pageno FROM dbstat WHERE name = ?" + (" AND pagetype = 'leaf'" * leaves_only)
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            found = db.execute(query, (table,)).fetchall()
        except sqlite3.OperationalError:
            pytest.skip("this SQLite has no dbstat table to find a table's pages with")
    return sorted(page for (page,) in found)


def corrupt(path: Path, pages: list[int]) -> None:
    """Overwrite whole pages with bytes SQLite cannot read, as a failing disk might."""
    assert not path.with_name(path.name + "-wal").exists()  # every page is in the file
    with contextlib.closing(sqlite3.connect(path)) as db:
        size = int(db.execute("PRAGMA page_size").fetchone()[0])
    with path.open("r+b") as file:
        for page in pages:
            file.seek((page - 1) * size)
            file.write(bytes(range(256)) * (size // 256))


def middle_leaves(path: Path, n: int) -> list[int]:
    leaves = pages_of(path, "responses", leaves_only=True)
    return leaves[len(leaves) // 2 : len(leaves) // 2 + n]


def test_corrupt_pages_are_a_store_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    results = filled(path)
    corrupt(path, middle_leaves(path, 3))

    store = Store(path)  # the pages it reads on opening are sound
    try:
        with pytest.raises(StoreError) as caught:
            store.lookup(r.key for r in results)
        assert str(caught.value).startswith(f"the store {path} is damaged (")
        assert "`pipeline store check CONFIG` shows what is wrong" in str(caught.value)
        with pytest.raises(StoreError, match="is damaged"):
            store.counts()
        assert store.check()
    finally:
        store.close()


def test_check_finds_a_sound_store_sound(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    filled(path, 10)
    store = Store(path)
    try:
        assert store.check() == []
        store.put_many([ok(key(1), "later"), ok("new")])  # in `recent`, counted once each
        assert check(path).problems == () and check(path).answers == 11
    finally:
        store.close()


def test_check_reports_damage_without_opening_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    filled(path)
    corrupt(path, middle_leaves(path, 2))
    assert check(path).problems
    path.write_bytes(b"not sqlite" * 500)
    assert check(path).problems == ("file is not a database",)
    with pytest.raises(StoreError, match="there is no store at"):
        check(tmp_path / "missing.db")


def test_salvage_keeps_every_readable_answer_and_the_later_one(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    results = filled(path)
    corrupt(path, middle_leaves(path, 4))
    killed = Store(path)  # answers of a run killed before they moved to `responses`
    killed.put_many([ok(key(i), "later") for i in range(0, 3000, 10)])
    killed.close()  # merging fails on the damage: the answers stay in `recent`
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM recent").fetchone() == (300,)
    when = time.time()

    done = salvage(path, now=lambda: when)

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    assert done.damaged == tmp_path / f"s.db.damaged-{stamp}" and done.damaged.is_file()
    assert done.skipped >= 1
    store = Store(path)
    try:
        assert store.check() == []
        found = store.lookup(r.key for r in results)
        assert len(found) == done.kept and 3000 - 60 < done.kept < 3000  # 4 pages, no more
        for i, result in enumerate(results):
            if result.key in found:
                expected = ok(key(i), "later") if i % 10 == 0 else result
                assert found[result.key] == expected
        assert all(found[key(i)].answer == "later" for i in range(0, 3000, 10))
        assert store.memo_counts(b"d" * 32) is None  # a cache: not copied
    finally:
        store.close()


def test_salvage_of_a_file_that_is_not_a_database_leaves_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"not sqlite" * 500)
    done = salvage(path)
    assert done.kept == 0 and done.damaged.read_bytes() == b"not sqlite" * 500
    assert check(path).problems == () and check(path).answers == 0


def test_salvage_while_the_store_is_locked_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    filled(path, 10)
    with Lock(path), pytest.raises(LockError):
        salvage(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db", "s.db.lock"]


# --- Writer ------------------------------------------------------------------------------


class CountingStore(Store):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[list[str]] = []

    def put_many(self, results: list[Result]) -> None:
        self.batches.append([r.key for r in results])
        super().put_many(results)


class BrokenStore(Store):
    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(path)
        self.error = error

    def put_many(self, results: list[Result]) -> None:
        raise self.error


def test_puts_in_one_tick_share_one_commit(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "s.db")

    async def go() -> None:
        writer = Writer(store)
        await asyncio.gather(*(writer.put(ok(f"k{i}")) for i in range(10)))
        await writer.put(ok("later"))

    try:
        asyncio.run(go())
        assert store.batches == [[f"k{i}" for i in range(10)], ["later"]]
        assert store.counts() == {OK: 11}
    finally:
        store.close()


def test_put_returns_only_once_the_result_is_committed(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    seen: dict[str, tuple[str, str | None] | None] = {}

    async def worker(writer: Writer, key: str) -> None:
        await writer.put(ok(key, key.upper()))
        seen[key] = read_directly(store.path, key)

    async def go() -> None:
        writer = Writer(store)
        await asyncio.gather(*(worker(writer, key) for key in "abc"))

    try:
        asyncio.run(go())
    finally:
        store.close()
    assert seen == {"a": (OK, "A"), "b": (OK, "B"), "c": (OK, "C")}


def test_put_does_not_commit_before_the_loop_turns(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "s.db")

    async def go() -> None:
        writer = Writer(store)
        task = asyncio.ensure_future(writer.put(ok("k")))
        await asyncio.sleep(0)  # put has queued the result; the flush is scheduled
        assert store.batches == []
        await task
        assert store.batches == [["k"]]

    try:
        asyncio.run(go())
    finally:
        store.close()


def test_workers_cancelled_while_waiting_still_store_and_log_nothing(tmp_path: Path) -> None:
    # The run ends by cancelling every worker; some may be waiting for their commit.
    store = CountingStore(tmp_path / "s.db")
    errors: list[dict[str, object]] = []

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        writer = Writer(store)
        tasks = [asyncio.ensure_future(writer.put(ok(f"k{i}"))) for i in range(3)]
        await asyncio.sleep(0)  # all three wait on the scheduled commit
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
        await asyncio.sleep(0)  # the commit runs after the cancellations

    try:
        asyncio.run(go())
        assert store.batches == [["k0", "k1", "k2"]]
        assert store.counts() == {OK: 3}
    finally:
        store.close()
    assert errors == []


def test_write_error_reaches_every_waiting_put(tmp_path: Path) -> None:
    store = BrokenStore(tmp_path / "s.db", OutputError("disk full"))

    async def go() -> list[BaseException | None]:
        writer = Writer(store)
        results = await asyncio.gather(
            *(writer.put(ok(f"k{i}")) for i in range(3)), return_exceptions=True
        )
        return list(results)

    try:
        outcomes = asyncio.run(go())
    finally:
        store.close()
    assert [str(e) for e in outcomes] == ["disk full"] * 3
    assert all(isinstance(e, OutputError) for e in outcomes)


def test_unexpected_write_error_does_not_hang_put(tmp_path: Path) -> None:
    store = BrokenStore(tmp_path / "s.db", OverflowError("int too large"))

    async def go() -> None:
        writer = Writer(store)
        with pytest.raises((OverflowError, OutputError)):  # anything but a hang
            await asyncio.wait_for(writer.put(ok("k")), timeout=0.2)

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # the escaped callback error
    try:
        loop.run_until_complete(go())
    finally:
        loop.close()
        store.close()


# --- Lock --------------------------------------------------------------------------------


def test_second_lock_on_the_same_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Lock(db) as held:
        assert held.path == tmp_path / "s.db.lock"
        with pytest.raises(LockError) as info:
            Lock(db).__enter__()
    message = str(info.value)
    assert f"pid {os.getpid()}" in message
    assert str(db) in message


def test_lock_can_be_taken_after_release(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Lock(db):
        pass
    with Lock(db) as again:
        assert again.path.read_text() == f"pid {os.getpid()}"


def test_locks_on_different_stores_do_not_conflict(tmp_path: Path) -> None:
    with Lock(tmp_path / "a.db"), Lock(tmp_path / "b.db"):
        assert (tmp_path / "a.db.lock").exists()
        assert (tmp_path / "b.db.lock").exists()


def test_lock_held_by_another_process_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pipeline.errors import LockError\n"
        "from pipeline.lock import Lock\n"
        "try:\n"
        "    Lock(Path(sys.argv[1])).__enter__()\n"
        "except LockError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    with Lock(db):
        held = subprocess.run(
            [sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=30
        )
    free = subprocess.run(
        [sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=30
    )

    assert held.returncode == 3, held.stderr
    assert f"pid {os.getpid()}" in held.stdout
    assert free.returncode == 0, free.stdout + free.stderr


def test_lock_in_uncreatable_folder_is_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file where the store folder should be")

    with pytest.raises(OutputError), Lock(blocker / "s.db"):
        pass
