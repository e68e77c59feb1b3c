"""Batch results: batch output or error lines -> `Result`s, put into the store.

Reads lines in OpenAI's shape or `vllm run-batch`'s (the same shape; vLLM may give `error`
as a string or an object beside a bodiless `response`); no line, however long, deep or
badly encoded, raises anything but a `ValueError` that says why it cannot be read. Only the
results of the config's own requests are stored, and a failure never replaces an answer.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import httpx

from .batchfile import MB, prefix
from .client import error_detail, parse_completion, utf8_safe
from .errors import RequestError
from .records import FAILED, OK, Result
from .store import Store

MAX_LINE_BYTES = 64 * MB  # a longer result line is unreadable, not read into memory whole
KEEP_UNREADABLE = 5  # unreadable lines named in a report
# Why a batch input line (a request, as `pipeline batch export` writes) is no result.
A_REQUEST = (
    "a request (method, url, body), not a result: was the file `pipeline batch export` "
    "wrote imported instead of the batch server's output?"
)


def result_of(line: bytes | str, *, max_bytes: int = MAX_LINE_BYTES) -> Result:
    """One batch output or error line as the store keeps it: answered, or failed with why.

    Raises ValueError, saying why, for a line without a readable `custom_id` and for a
    request line (`A_REQUEST`): neither is a result. Bytes that are not UTF-8 become U+FFFD,
    as in an online answer.
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
    if data.get("response") is None and not data.get("error") and "body" in data:
        raise ValueError(A_REQUEST)
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
    requests: int = 0  # of which request lines (`A_REQUEST`), not results
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
                self.requests += str(exc) == A_REQUEST
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
