"""Batch files: request lines, splitting, the requests left to answer, and result lines read
from OpenAI's and vLLM's output and error files, hostile ones included."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import batchfile
from pipeline.batchfile import (
    Tally,
    part_path,
    prefix,
    request_keys,
    request_line,
    split,
    unanswered,
    write_parts,
)
from pipeline.batchresults import (
    A_REQUEST,
    Imported,
    ResultReader,
    file_lines,
    read_results,
    result_of,
    store_results,
)
from pipeline.config import Config
from pipeline.errors import InputError, OutputError
from pipeline.records import FAILED, OK, Request, Result
from pipeline.render import canonical_body, key_of, reask_key
from pipeline.store import Store

KEY = "r1:" + "ab" * 32


def key(n: int) -> str:
    """A request key whose 64-bit prefix is `n`."""
    return f"r1:{n:016x}{'0' * 48}"


def completion(content: Any = "yes", prompt: int = 7, done: int = 2) -> dict[str, Any]:
    """A chat completion body, as a batch server answers one."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "fake-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": done,
            "total_tokens": prompt + done,
        },
    }


def openai_line(custom_id: str, body: dict[str, Any]) -> str:
    """A line of an OpenAI batch output file: an answered request."""
    response = {"status_code": 200, "request_id": "req_1", "body": body}
    return json.dumps(
        {"id": "batch_req_1", "custom_id": custom_id, "response": response, "error": None}
    )


# --- request lines -----------------------------------------------------------------------


def test_a_request_line_carries_the_payload_bytes_exactly() -> None:
    payload = canonical_body("m", [{"role": "user", "content": 'é \u2028 "x"\n'}], {"seed": 1})
    request = Request(key_of(payload), payload, est_tokens=3)
    line = request_line(request)
    head = (
        b'{"custom_id":"' + request.key.encode() + b'","method":"POST",'
        b'"url":"/v1/chat/completions","body":'
    )
    assert line == head + payload + b"}\n"
    assert line.count(b"\n") == 1
    parsed = json.loads(line)
    assert parsed == {
        "custom_id": request.key,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": json.loads(payload),
    }
    assert key_of(line[len(head) : -2]) == request.key  # the answer lands under the same key


def test_a_request_line_keeps_a_payload_that_is_not_canonical_as_it_is() -> None:
    payload = b'{"model": "m",  "messages": []}'
    assert request_line(Request(KEY, payload, 1)).endswith(b'"body":' + payload + b"}\n")


def test_a_body_with_a_raw_newline_cannot_be_a_line() -> None:
    with pytest.raises(ValueError, match=KEY):
        request_line(Request(KEY, b'{"a":\n1}', 1))


# --- splitting -----------------------------------------------------------------------------


def pairs(*sizes: int) -> list[tuple[str, bytes]]:
    return [(key(i), b"x" * (size - 1) + b"\n") for i, size in enumerate(sizes)]


def test_split_at_the_request_limit() -> None:
    lines = pairs(*[10] * 5)
    parts = list(split(lines, max_requests=2, max_bytes=1000))
    assert [len(p) for p in parts] == [2, 2, 1]
    assert [item for part in parts for item in part] == lines


def test_split_at_the_byte_limit_with_a_line_that_just_fits() -> None:
    lines = pairs(40, 60, 1, 100, 30)
    parts = list(split(lines, max_requests=100, max_bytes=100))
    assert [[len(line) for _, line in part] for part in parts] == [[40, 60], [1], [100], [30]]


def test_a_line_over_the_byte_limit_is_an_error_naming_its_key() -> None:
    lines = pairs(10, 101)
    with pytest.raises(InputError, match=rf"request {key(1)} is 101 bytes.*run.batch.max_file_mb"):
        list(split(lines, max_requests=10, max_bytes=100))


def test_nothing_to_split_gives_no_part() -> None:
    assert list(split([], 2, 100)) == []


@given(
    st.lists(st.integers(min_value=1, max_value=50), max_size=40),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=50, max_value=200),
)
def test_split_keeps_order_and_limits_and_fills_each_part(
    sizes: list[int], max_requests: int, max_bytes: int
) -> None:
    lines = pairs(*sizes)
    parts = list(split(lines, max_requests, max_bytes))
    assert [item for part in parts for item in part] == lines
    for number, part in enumerate(parts):
        size = sum(len(line) for _, line in part)
        assert part and len(part) <= max_requests and size <= max_bytes
        if number + 1 < len(parts):  # a part ends only where the next line would not fit
            following = len(parts[number + 1][0][1])
            assert len(part) == max_requests or size + following > max_bytes
    numbered = list(batchfile.parts(lines, max_requests, max_bytes))
    assert [n for n, _, _ in numbered] == [n for n, p in enumerate(parts, 1) for _ in p]


# --- the requests left to answer ---------------------------------------------------------


def config_for(folder: Path, texts: list[str | None], **run: Any) -> Config:
    pl.DataFrame({"text": texts, "n": [0 if t == "bad" else 1 for t in texts]}).write_csv(
        folder / "in.csv"
    )
    return Config.model_validate(
        {
            "input": {"path": str(folder / "in.csv")},
            "prompt": {"template": "{{ text }} {{ 1 / (n | int) }}", "skip_null": ["text"]},
            "model": {"base_url": "http://127.0.0.1:9/v1", "name": "m"},
            "output": {"path": str(folder / "out.csv")},
            "run": {"store": str(folder / "store.db"), **run},
        }
    )


def contents(requests: list[Request]) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in requests]


def test_unanswered_gives_each_request_without_an_answer_once_in_input_order(
    tmp_path: Path,
) -> None:
    texts = ["a", "b", None, "a", "bad", "c", "b", "d", "a", "e"]
    config = config_for(tmp_path, texts, chunk_rows=3)  # duplicates across chunks
    everything = list(unanswered(config, None))
    assert contents(everything) == ["a 1.0", "b 1.0", "c 1.0", "d 1.0", "e 1.0"]
    by_text = dict(zip(contents(everything), everything, strict=True))
    store = Store(config.store_path)
    try:
        store.put_many(
            [
                Result(by_text["a 1.0"].key, OK, answer="A"),
                Result(by_text["c 1.0"].key, FAILED, error="HTTP 500"),
            ]
        )
        tally = Tally()
        left = list(unanswered(config, store, skip={by_text["d 1.0"].key}, tally=tally))
    finally:
        store.close()
    assert contents(left) == ["b 1.0", "c 1.0", "e 1.0"]  # a failed request is asked again
    assert all(r.payload == by_text[c].payload for r, c in zip(left, contents(left), strict=True))
    assert tally == Tally(
        rows=10, skipped=1, row_errors=1, already_answered=3, in_open_batches=1, requests=3
    )


def test_an_answer_that_does_not_parse_gives_its_next_reask(tmp_path: Path) -> None:
    config = config_for(tmp_path, ["a", "b"])
    config = config.model_copy(
        update={
            "output": config.output.model_copy(
                update={"parse": "label", "labels": ["yes", "no"], "retry_invalid": 2}
            )
        }
    )
    first = list(unanswered(config, None))
    store = Store(config.store_path)
    try:
        store.put_many(
            [
                Result(first[0].key, OK, answer="maybe"),  # does not parse: re-ask 1 is due
                Result(first[1].key, OK, answer="yes"),
            ]
        )
        left = list(unanswered(config, store))
        assert [r.key for r in left] == [reask_key(first[0].key, 1)]
        assert left[0].payload == first[0].payload  # asked again as it was
        store.put_many([Result(left[0].key, OK, answer="perhaps")])
        assert [r.key for r in unanswered(config, store)] == [reask_key(first[0].key, 2)]
        store.put_many([Result(reask_key(first[0].key, 2), OK, answer="unsure")])
        assert list(unanswered(config, store)) == []  # out of re-asks: invalid, not sent
    finally:
        store.close()


def test_unanswered_with_a_limit_reads_only_the_first_rows(tmp_path: Path) -> None:
    config = config_for(tmp_path, ["a", "b", "c"])
    assert contents(list(unanswered(config, None, limit=2))) == ["a 1.0", "b 1.0"]


def test_request_keys_are_the_prefixes_of_every_request(tmp_path: Path) -> None:
    config = config_for(tmp_path, ["a", "b", "a", "bad", None])
    keys = [r.key for r in unanswered(config, None)]
    assert request_keys(config) == {prefix(k) for k in keys}
    assert len(request_keys(config)) == 2


def test_prefix_only_of_a_request_key() -> None:
    assert prefix(KEY) == int("ab" * 8, 16)
    assert prefix(KEY + "~2") == prefix(KEY)  # a re-ask is its request's
    for other in ("", "r1:xyz", KEY.upper(), KEY + "~", KEY + "~x", "r2:" + "ab" * 32, KEY[:-1]):
        assert prefix(other) is None, other


# --- result lines ------------------------------------------------------------------------


def test_an_openai_answer_becomes_an_ok_result() -> None:
    body = completion("  label-a.\n")
    result = result_of(openai_line(KEY, body).encode())
    assert result == Result(
        KEY,
        OK,
        answer="  label-a.\n",
        raw=result.raw,
        prompt_tokens=7,
        completion_tokens=2,
        attempts=1,
    )
    assert result.raw is not None and json.loads(result.raw) == body


def test_content_parts_are_joined_as_online() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert result_of(openai_line(KEY, completion(parts))).answer == "ab"


def test_a_vllm_answer_becomes_an_ok_result() -> None:
    line = {
        "id": "vllm-1",
        "custom_id": KEY,
        "response": {"request_id": "vllm-batch-1", "body": completion("ok")},  # no status_code
        "error": None,
    }
    result = result_of(json.dumps(line))
    assert (result.status, result.answer, result.attempts) == (OK, "ok", 1)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (  # OpenAI's error file: the request expired with the batch
            {
                "custom_id": KEY,
                "response": None,
                "error": {"code": "batch_expired", "message": "This request could not be executed"},
            },
            "batch: batch_expired: This request could not be executed",
        ),
        (  # OpenAI: a request the model endpoint refused
            {
                "custom_id": KEY,
                "response": {
                    "status_code": 400,
                    "body": {"error": {"message": "Invalid 'temperature'", "code": None}},
                },
                "error": None,
            },
            "batch: 400: Invalid 'temperature'",
        ),
        (  # vLLM: an error as a string, beside a bodiless 400
            {
                "custom_id": KEY,
                "response": {"status_code": 400, "request_id": "r", "body": None},
                "error": "Request must not be sent in stream mode",
            },
            "batch: 400: Request must not be sent in stream mode",
        ),
        (  # vLLM: an ErrorResponse object
            {
                "custom_id": KEY,
                "response": {"status_code": 404, "request_id": "r", "body": None},
                "error": {"error": {"message": "The model `x` does not exist.", "code": 404}},
            },
            "batch: 404: The model `x` does not exist.",
        ),
        (  # older vLLM: the ErrorResponse flat
            {
                "custom_id": KEY,
                "response": {"status_code": 400, "request_id": "r"},
                "error": {"object": "error", "message": "too long", "code": 400},
            },
            "batch: 400: too long",
        ),
        (
            {"custom_id": KEY, "response": {"status_code": 500, "body": None}, "error": None},
            "batch: 500: Internal Server Error",
        ),
        (
            {"custom_id": KEY, "response": None, "error": None},
            "batch: no response: the line has neither a response nor an error",
        ),
        (
            {"custom_id": KEY, "response": {"status_code": "200", "body": completion()}},
            "batch: no status: the response's status_code is not a number",
        ),
        (  # a 200 that parse_completion rejects, as online
            {"custom_id": KEY, "response": {"status_code": 200, "body": {"choices": []}}},
            "batch: 200: HTTP 200 without choices in the body",
        ),
        (
            {
                "custom_id": KEY,
                "response": {
                    "status_code": 200,
                    "body": {"choices": [{"message": {"content": None, "refusal": "No."}}]},
                },
            },
            "batch: 200: no answer: the model refused: No.",
        ),
        (
            {"custom_id": KEY, "response": {"status_code": 200, "body": "not json {"}},
            "batch: 200: HTTP 200 with a truncated or non-JSON body",
        ),
    ],
)
def test_anything_but_an_answer_is_a_failed_result(line: dict[str, Any], error: str) -> None:
    assert result_of(json.dumps(line)) == Result(KEY, FAILED, error=error, attempts=1)


def test_a_long_error_message_is_cut_to_one_line() -> None:
    line = {"custom_id": KEY, "response": None, "error": {"code": "x", "message": "a\nb " * 1000}}
    error = result_of(json.dumps(line)).error
    assert error is not None and "\n" not in error and len(error) < 600


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"", "an empty line"),
        (b"  \n", "an empty line"),
        (b'{"custom_id": "' + KEY.encode() + b'", "response": {"status_', "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'{"response": null, "error": "x"}', "no custom_id"),
        (b'{"custom_id": 12, "response": null}', "custom_id is a JSON int, not a string"),
        (b'{"custom_id": "", "response": null}', "no custom_id"),
        (b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
        (
            b'{"custom_id": "'
            + KEY.encode()
            + b'", "response": {"body": '
            + b"[" * 10_000
            + b"]" * 10_000
            + b"}}",
            "nested too deeply",
        ),
    ],
)
def test_a_line_without_a_readable_custom_id_is_a_value_error(line: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        result_of(line)


def test_a_request_line_is_no_result_and_the_reader_counts_it_apart() -> None:
    request = Request(KEY, b'{"model":"m","messages":[]}', 1)
    line = batchfile.request_line(request)
    with pytest.raises(ValueError, match="not a result: was the file `pipeline batch export`"):
        result_of(line)
    answer = openai_line(KEY, completion("ok")).encode()
    reader = read_results([line, answer, b"{broken", line], "requests.jsonl")
    assert [r.status for r in reader] == [OK]
    assert (reader.unreadable, reader.requests) == (3, 2)
    assert [u.why for u in reader.first][::2] == [A_REQUEST, A_REQUEST]


def test_a_ten_megabyte_answer_is_read() -> None:
    big = "x" * 10_000_000
    result = result_of(openai_line(KEY, completion(big)).encode())
    assert result.status == OK and result.answer == big


def test_ten_megabytes_of_garbage_is_one_unreadable_line() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        result_of(b"{" + b"\x80" * 10_000_000)


def test_a_line_over_the_cap_is_refused_unread() -> None:
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        result_of(openai_line(KEY, completion("x" * 200)), max_bytes=100)


def test_bytes_that_are_not_utf8_become_replacement_characters_as_online() -> None:
    line = openai_line(KEY, completion("caf#")).encode().replace(b"caf#", b"caf\xe9")
    assert result_of(line).answer == "caf\ufffd"


def test_a_lone_surrogate_is_stored_safely(tmp_path: Path) -> None:
    line = openai_line(KEY, completion("a\ud800b"))
    result = result_of(line)
    assert result.answer == "a\ufffdb"
    store = Store(tmp_path / "s.db")
    try:
        store.put_many([result])
        store.merge()
        assert store.lookup([KEY])[KEY].answer == "a\ufffdb"
    finally:
        store.close()


def test_the_reader_counts_unreadable_lines_by_number_and_passes_blank_ones() -> None:
    good = openai_line(KEY, completion("ok")).encode()
    lines = [good, b"", b"{broken", b"\n", good, *[b"nope"] * 6]
    reader = read_results(lines, "out.jsonl")
    results = list(reader)
    assert [r.status for r in results] == [OK, OK]
    assert (reader.lines_read, reader.unreadable) == (9, 7)
    assert [(u.file, u.line) for u in reader.first] == [
        ("out.jsonl", 3),
        ("out.jsonl", 6),
        ("out.jsonl", 7),
        ("out.jsonl", 8),
        ("out.jsonl", 9),
    ]
    assert reader.first[0].why.startswith("not JSON")


def test_the_reader_reads_text_lines_too() -> None:
    assert [r.answer for r in ResultReader([openai_line(KEY, completion("t"))])] == ["t"]


def test_file_lines_cut_an_overlong_line_and_go_on_after_it() -> None:
    data = b"first\n" + b"y" * 5000 + b"\nlast"
    lines = list(file_lines(io.BytesIO(data), max_bytes=100))
    assert lines[0] == b"first\n" and lines[2] == b"last"
    assert len(lines[1]) == 101 and len(lines) == 3
    with pytest.raises(ValueError, match="longer than"):
        result_of(lines[1], max_bytes=100)


# --- writing parts -----------------------------------------------------------------------


def test_parts_are_named_after_the_first_file() -> None:
    assert part_path(Path("d/req.jsonl"), 1) == Path("d/req.jsonl")
    assert part_path(Path("d/req.jsonl"), 2) == Path("d/req.2.jsonl")
    assert part_path(Path("d/req"), 3) == Path("d/req.3")


def test_write_parts_writes_whole_files_at_the_limits(tmp_path: Path) -> None:
    lines = pairs(10, 10, 10, 10, 10)
    written = write_parts(lines, tmp_path / "sub" / "req.jsonl", max_requests=2, max_bytes=1000)
    names = ["req.jsonl", "req.2.jsonl", "req.3.jsonl"]
    assert [(w.path.name, w.requests, w.bytes) for w in written] == [
        (names[0], 2, 20),
        (names[1], 2, 20),
        (names[2], 1, 10),
    ]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(names)
    joined = b"".join((tmp_path / "sub" / n).read_bytes() for n in names)
    assert joined == b"".join(line for _, line in lines)


def test_nothing_to_write_writes_no_file(tmp_path: Path) -> None:
    assert write_parts([], tmp_path / "req.jsonl", 2, 100) == []
    assert list(tmp_path.iterdir()) == []


def test_a_failure_part_way_leaves_whole_files_only(tmp_path: Path) -> None:
    def lines() -> Any:
        yield from pairs(10, 10, 10)
        raise InputError("the input went away")

    with pytest.raises(InputError):
        write_parts(lines(), tmp_path / "req.jsonl", max_requests=2, max_bytes=1000)
    assert [p.name for p in tmp_path.iterdir()] == ["req.jsonl"]  # part 2 was under way
    assert (tmp_path / "req.jsonl").read_bytes() == b"".join(line for _, line in pairs(10, 10))


def test_a_folder_that_cannot_be_written_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write"):
        write_parts(pairs(10), blocker / "req.jsonl", 2, 100)
    assert list(tmp_path.iterdir()) == [blocker]


# --- storing results ---------------------------------------------------------------------


def test_store_results_keeps_answers_and_replaces_only_failures(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        store.put_many(
            [Result(key(1), OK, answer="kept"), Result(key(2), FAILED, error="HTTP 500")]
        )
        results = [
            Result(key(1), FAILED, error="batch: 500: x"),  # never replaces an answer
            Result(key(1), OK, answer="other"),  # an answer already stored is kept
            Result(key(2), OK, answer="two"),  # replaces a failure
            Result(key(3), FAILED, error="batch: batch_expired: late"),
            Result(key(4), FAILED, error="batch: 400: bad"),
            Result(key(4), OK, answer="four"),  # a later answer takes the failure back
            Result(key(5), OK, answer="five"),
            Result(key(5), FAILED, error="batch: 400: late"),
            Result(key(9), OK, answer="not ours"),
            Result("custom-1", OK, answer="not ours"),
        ]
        wanted = {prefix(key(n)) for n in range(1, 6)}
        imported = store_results(store, results, wanted, batch=3)
        found = store.lookup([key(n) for n in range(1, 10)])
    finally:
        store.close()
    assert (imported.ok, imported.failed) == (3, 1)
    assert (imported.already_answered, imported.not_this_config) == (3, 2)
    assert {k: (r.status, r.answer or r.error) for k, r in found.items()} == {
        key(1): (OK, "kept"),
        key(2): (OK, "two"),
        key(3): (FAILED, "batch: batch_expired: late"),
        key(4): (OK, "four"),
        key(5): (OK, "five"),
    }


def test_store_results_adds_to_the_counts_it_is_given(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        imported = Imported()
        wanted = {prefix(key(1)), prefix(key(2))}
        store_results(store, [Result(key(1), FAILED, error="x")], wanted, imported)
        store_results(store, [Result(key(1), OK, answer="a"), Result(key(2), OK)], wanted, imported)
    finally:
        store.close()
    assert (imported.ok, imported.failed, imported.already_answered) == (2, 0, 0)
