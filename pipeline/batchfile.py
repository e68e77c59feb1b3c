"""Batch input files: requests -> OpenAI Batch API JSONL lines, split at the file limits.

One line per distinct request the store has no answer for, its `custom_id` the store key
and its body the request's own bytes, so a batch answer lands under the key an online
answer would have. Parts are written to files whole or not at all. `batchresults` reads
what comes back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .config import Config
from .errors import InputError, OutputError
from .parse import Parser
from .reask import Reasker
from .records import OK, Request
from .render import reask_key
from .store import Store

ENDPOINT = "/v1/chat/completions"
MB = 1_000_000  # run.batch.max_file_mb counts these (the providers' "200 MB" is decimal)
_KEY = re.compile(r"r1:[0-9a-f]{64}(?:~[0-9]+)?")  # a request's key, or its n-th re-ask's
_HEAD = b'{"custom_id":%s,"method":"POST","url":"' + ENDPOINT.encode() + b'","body":'


def request_line(request: Request) -> bytes:
    """One batch input line for `request`, its body exactly the request's payload bytes."""
    if b"\n" in request.payload:
        raise ValueError(f"request {request.key}: a body with a raw newline cannot be one line")
    return _HEAD % json.dumps(request.key).encode() + request.payload + b"}\n"


def parts(
    lines: Iterable[tuple[str, bytes]], max_requests: int, max_bytes: int
) -> Iterator[tuple[int, str, bytes]]:
    """(part number from 1, key, line): a new part before one would pass either limit.

    The streaming form of `split`, for writing parts to files without holding one whole.
    """
    number, count, size = 1, 0, 0
    for key, line in lines:
        if len(line) > max_bytes:
            raise InputError(
                f"request {key} is {len(line):,} bytes as a batch line, more than one batch "
                f"file may hold ({max_bytes:,} bytes); raise run.batch.max_file_mb"
            )
        if count and (count >= max_requests or size + len(line) > max_bytes):
            number, count, size = number + 1, 0, 0
        count += 1
        size += len(line)
        yield number, key, line


def split(
    lines: Iterable[tuple[str, bytes]], max_requests: int, max_bytes: int
) -> Iterator[list[tuple[str, bytes]]]:
    """(key, line) pairs in parts of at most `max_requests` lines and `max_bytes` bytes."""
    part: list[tuple[str, bytes]] = []
    current = 1
    for number, key, line in parts(lines, max_requests, max_bytes):
        if number != current:
            yield part
            part, current = [], number
        part.append((key, line))
    if part:
        yield part


def prefix(key: str) -> int | None:
    """The first 64 bits of a request key's hash (a re-ask's: its request's); None for what
    is not a request key."""
    return int(key[3:19], 16) if _KEY.fullmatch(key) else None


@dataclass
class Tally:
    """What `unanswered` saw: rows by what became of them, and the requests it gave."""

    rows: int = 0
    skipped: int = 0  # prompt.skip_null
    row_errors: int = 0  # the template (or an image) fails on the row: not a request
    already_answered: int = 0  # rows whose request has an answer in the store
    in_open_batches: int = 0  # rows whose request is in `skip`
    requests: int = 0  # distinct requests given


def _rendered(config: Config, limit: int | None, tally: Tally) -> Iterator[list[Request]]:
    """Per chunk of the input, the requests of its rows (as a run renders them)."""
    # Imported here: batch mode's modules, which the runner and the job reach, import this one.
    from .job import render_rows
    from .runner import open_input

    opened = open_input(config, limit)
    for frame in opened.source.chunks(config.run.chunk_rows):
        requests, errors = render_rows(opened.renderer, frame)
        tally.rows += len(requests)
        tally.row_errors += len(errors)
        tally.skipped += requests.count(None) - len(errors)
        yield [r for r in requests if r is not None]


def unanswered(
    config: Config,
    store: Store | None,
    *,
    skip: Container[str] = frozenset(),
    limit: int | None = None,
    tally: Tally | None = None,
) -> Iterator[Request]:
    """Every distinct request of the input that has no answer in `store` and is not in `skip`.

    In input order, each once: a given key is remembered as a 64-bit prefix of its hash
    (about 70 bytes a request), not as its row. `store` None: nothing is answered yet.
    `tally`, when given, counts the rows as they are read.
    """
    tally = tally if tally is not None else Tally()
    given: set[int] = set()
    reasker = None
    if store is not None and config.output.retry_invalid:
        reasker = Reasker(Parser(config.output), config.output.retry_invalid, store)
    for requests in _rendered(config, limit, tally):
        unique = {r.key: r for r in requests}
        stored = store.lookup(unique, with_raw=False) if store is not None else {}
        answered = {key for key, result in stored.items() if result.status == OK}
        for request in requests:
            if request.key in answered:
                tally.already_answered += 1
            elif request.key in skip:
                tally.in_open_batches += 1
        for key, request in unique.items():
            if key in answered and reasker is not None:
                # An answer that does not parse: its next re-ask, a request of its own.
                attempt = reasker.from_store(key, stored[key])[1]
                if attempt is None:
                    continue
                request = Request(reask_key(key, attempt), request.payload, request.est_tokens)
                key = request.key
            elif key in answered:
                continue
            head = prefix(key)
            if key in skip or head is None or head in given:
                continue
            given.add(head)
            tally.requests += 1
            yield request


def request_keys(config: Config, limit: int | None = None) -> set[int]:
    """The 64-bit key prefixes of every request of the input (to tell its results apart)."""
    heads = (prefix(r.key) for requests in _rendered(config, limit, Tally()) for r in requests)
    return {head for head in heads if head is not None}


@dataclass
class Written:
    """One batch input file written: where, how many requests, how many bytes."""

    path: Path
    requests: int = 0
    bytes: int = 0


def part_path(out: Path, number: int) -> Path:
    """Part 1 is `out` itself; part n is `out` with `.n` before its extension."""
    return out if number == 1 else out.with_name(f"{out.stem}.{number}{out.suffix}")


def write_parts(
    lines: Iterable[tuple[str, bytes]], out: Path, max_requests: int, max_bytes: int
) -> list[Written]:
    """Write (key, line) pairs into batch files at the limits; each appears whole or not at all.

    Parts stream through a temporary file beside their path, renamed into place once
    complete, so memory holds one line at a time, not a file.
    """
    written: list[Written] = []
    handle: IO[bytes] | None = None
    tmp = out
    try:
        for number, _key, line in parts(lines, max_requests, max_bytes):
            if number > len(written):
                if handle is not None:
                    _commit(handle, tmp, written[-1].path)
                written.append(Written(part_path(out, number)))
                tmp = out.with_name(f".{written[-1].path.name}.{os.getpid()}.tmp")
                out.parent.mkdir(parents=True, exist_ok=True)
                handle = tmp.open("wb")
            assert handle is not None
            handle.write(line)
            written[-1].requests += 1
            written[-1].bytes += len(line)
        if handle is not None:
            _commit(handle, tmp, written[-1].path)
            handle = None
    except OSError as exc:
        where = written[-1].path if written else out
        raise OutputError(f"cannot write {where}: {exc.strerror or exc}") from exc
    finally:
        if handle is not None:
            handle.close()
            tmp.unlink(missing_ok=True)
    return written


def _commit(handle: IO[bytes], tmp: Path, path: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    tmp.replace(path)
