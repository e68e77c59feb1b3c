"""Batch files: requests -> batch JSONL lines, and batch output or error lines -> results.

The input side writes one OpenAI Batch API line per distinct request the store has no
answer for, its `custom_id` the store key and its body the request's own bytes, so a batch
answer lands under the key an online answer would have. The output side reads lines in
OpenAI's shape or `vllm run-batch`'s (the same shape; vLLM may give `error` as a string or
an object beside a bodiless `response`) into `Result`s; no line, however long, deep or
badly encoded, raises anything but a `ValueError` that says why it cannot be read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from .client import error_detail, parse_completion, utf8_safe
from .config import Config
from .errors import InputError, OutputError, RequestError
from .parse import Parser
from .reask import Reasker
from .records import FAILED, OK, Request, Result
from .render import reask_key
from .store import Store

ENDPOINT = "/v1/chat/completions"
MB = 1_000_000  # run.batch.max_file_mb counts these (the providers' "200 MB" is decimal)
MAX_LINE_BYTES = 64 * MB  # a longer result line is unreadable, not read into memory whole
KEEP_UNREADABLE = 5  # unreadable lines named in a report
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


def result_of(line: bytes | str, *, max_bytes: int = MAX_LINE_BYTES) -> Result:
    """One batch output or error line as the store keeps it: answered, or failed with why.

    Raises ValueError, saying why, for a line without a readable `custom_id`. Bytes that
    are not UTF-8 become U+FFFD, as in an online answer.
    """
    if len(line) > max_bytes:
        raise ValueError(f"longer than {max_bytes:,} bytes")
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if not text.strip():
        raise ValueError("an empty line")
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None
    except ValueError as exc:
        raise ValueError(f"not JSON ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    key = data.get("custom_id")
    if key is None or key == "":
        raise ValueError("no custom_id")
    if not isinstance(key, str):
        raise ValueError(f"custom_id is a JSON {type(key).__name__}, not a string")
    try:
        return _outcome(utf8_safe(key), data)
    except RecursionError:  # a body nested just under the decoder's limit
        return _failed(utf8_safe(key), "unreadable", "the response is nested too deeply")


def _outcome(key: str, data: dict[str, Any]) -> Result:
    response, error = data.get("response"), data.get("error")
    status: int | None = None
    if isinstance(response, dict):
        code = response.get("status_code", 200)  # vLLM's default when it leaves it out
        status = code if type(code) is int else None
    if error:
        code, message = _error_parts(error)
        label = status if status not in (None, 200) else code or status or "error"
        return _failed(key, label, message)
    if not isinstance(response, dict):
        return _failed(key, "no response", "the line has neither a response nor an error")
    body = response.get("body")
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    if status is None:
        return _failed(key, "no status", "the response's status_code is not a number")
    if status != 200:
        detail = error_detail(status, text) if body is not None else None
        return _failed(key, status, detail or httpx.codes.get_reason_phrase(status) or "no body")
    try:
        completion = parse_completion(200, text, {})
    except RequestError as exc:
        return _failed(key, 200, str(exc))
    return Result(
        key,
        OK,
        answer=completion.content,
        raw=utf8_safe(text),
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        attempts=1,
    )


def _error_parts(error: object) -> tuple[str | int | None, str]:
    """(code, message) of an `error` as OpenAI (object) or vLLM (string, object) give it."""
    if isinstance(error, str):
        return None, error
    if not isinstance(error, dict):
        return None, json.dumps(error)
    inner = error.get("error")
    if isinstance(inner, dict):  # vLLM's ErrorResponse: {"error": {"message", "code", ...}}
        return _error_parts(inner)
    code = error.get("code")
    code = code if isinstance(code, str | int) and not isinstance(code, bool) else None
    for name in ("message", "detail", "title", "type"):
        if isinstance(error.get(name), str) and error[name]:
            return code, str(error[name])
    return code, json.dumps(error, ensure_ascii=False)


def _failed(key: str, label: object, message: str) -> Result:
    message = " ".join(message.split())
    message = message if len(message) <= 500 else message[:500] + "..."
    return Result(key, FAILED, error=utf8_safe(f"batch: {label}: {message}"), attempts=1)


@dataclass
class Unreadable:
    """A line that could not be read: where, and why."""

    file: str
    line: int
    why: str


@dataclass
class ResultReader:
    """Results from batch output or error lines; unreadable lines are counted, not raised.

    Iterate once; `unreadable` counts the lines that gave no result and `first` names the
    first few. Blank lines are passed over.
    """

    lines: Iterable[bytes | str]
    file: str = ""
    max_bytes: int = MAX_LINE_BYTES
    lines_read: int = 0  # lines that are not blank
    unreadable: int = 0
    first: list[Unreadable] = field(default_factory=list)

    def __iter__(self) -> Iterator[Result]:
        for number, line in enumerate(self.lines, start=1):
            if not line or line.isspace():
                continue
            self.lines_read += 1
            try:
                yield result_of(line, max_bytes=self.max_bytes)
            except ValueError as exc:
                self.unreadable += 1
                if len(self.first) < KEEP_UNREADABLE:
                    self.first.append(Unreadable(self.file, number, str(exc)))


def read_results(lines: Iterable[bytes | str], file: str = "") -> ResultReader:
    """The results of batch output or error lines, in order (see `ResultReader`)."""
    return ResultReader(lines, file)


def file_lines(handle: IO[bytes], max_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of a binary file; a line over `max_bytes` is cut to `max_bytes + 1` bytes
    (which `result_of` refuses) and the rest of it is passed over, never held."""
    while line := handle.readline(max_bytes + 1):
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while (rest := handle.readline(MB)) and not rest.endswith(b"\n"):
                pass
        yield line


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


@dataclass
class Imported:
    """What `store_results` did, by request (ok, failed) or by line (the rest)."""

    ok: int = 0  # requests answered by these lines
    failed: int = 0  # requests these lines left failed (a later answer takes one back)
    already_answered: int = 0  # lines whose request had an answer: the store keeps it
    not_this_config: int = 0  # lines whose custom_id is no request of the config
    _failed: set[int] = field(default_factory=set, repr=False)


def store_results(
    store: Store,
    results: Iterable[Result],
    wanted: Container[int],
    imported: Imported | None = None,
    *,
    batch: int = 1000,
) -> Imported:
    """Put the results of the requests whose key prefix is `wanted` into `store`, in order.

    An answer replaces a failure or nothing; a failure never replaces an answer; an answer
    already stored is kept. One transaction per `batch` results.
    """
    imported = imported if imported is not None else Imported()
    pending: list[Result] = []
    for result in results:
        head = prefix(result.key)
        if head is None or head not in wanted:
            imported.not_this_config += 1
            continue
        pending.append(result)
        if len(pending) >= batch:
            _store(store, pending, imported)
            pending = []
    if pending:
        _store(store, pending, imported)
    return imported


def _store(store: Store, results: list[Result], imported: Imported) -> None:
    stored = store.lookup({r.key for r in results}, with_raw=False)
    answered = {key for key, found in stored.items() if found.status == OK}
    final: dict[str, Result] = {}
    for result in results:
        if result.key in answered:
            imported.already_answered += 1
            continue
        final[result.key] = result
        head = prefix(result.key)
        assert head is not None
        if result.status == OK:
            answered.add(result.key)
            imported.ok += 1
            if head in imported._failed:
                imported._failed.discard(head)
                imported.failed -= 1
        elif head not in imported._failed:
            imported._failed.add(head)
            imported.failed += 1
    if final:
        store.put_many(list(final.values()))
