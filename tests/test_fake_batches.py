"""Tests for the fake server's Files and Batches routes (the OpenAI Batch API) used by the
end-to-end tests of batch mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_server import FakeServer, parse_multipart, validate_batch_input

SCRIPT = Path(__file__).with_name("fake_server.py")


def body_of(text: str, model: str = "fake-model") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0}


def line(custom_id: str, text: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": body_of(text),
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in lines).encode()


def upload(client: httpx.Client, data: bytes, filename: str = "input.jsonl") -> dict[str, Any]:
    response = client.post(
        "/files",
        data={"purpose": "batch"},
        files={"file": (filename, data, "application/jsonl")},
    )
    assert response.status_code == 200, response.text
    uploaded: dict[str, Any] = response.json()
    return uploaded


def create(
    client: httpx.Client, file_id: str, metadata: dict[str, str] | None = None
) -> httpx.Response:
    request: dict[str, Any] = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    if metadata is not None:
        request["metadata"] = metadata
    return client.post("/batches", json=request)


def submit(
    client: httpx.Client, lines: list[dict[str, Any]], metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    """Upload these lines and create a batch over them; returns the batch object."""
    response = create(client, upload(client, jsonl(lines))["id"], metadata)
    assert response.status_code == 200, response.text
    batch: dict[str, Any] = response.json()
    return batch


def poll(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    response = client.get(f"/batches/{batch_id}")
    assert response.status_code == 200, response.text
    batch: dict[str, Any] = response.json()
    return batch


def poll_until_final(client: httpx.Client, batch_id: str) -> tuple[list[str], dict[str, Any]]:
    """Poll until the batch ends: (the statuses seen, the final object)."""
    seen = []
    for _ in range(20):
        batch = poll(client, batch_id)
        seen.append(batch["status"])
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return seen, batch
    raise AssertionError(f"batch {batch_id} never ended: {seen}")


def download(client: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    response = client.get(f"/files/{file_id}/content")
    assert response.status_code == 200, response.text
    return [json.loads(text) for text in response.text.splitlines()]


def by_custom_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["custom_id"]: item for item in lines}


def test_a_batch_runs_through_its_states_and_answers_as_the_chat_route(
    server: FakeServer, client: httpx.Client
) -> None:
    lines = [line(f"row-{i}", f"text {i}") for i in range(3)]
    uploaded = upload(client, jsonl(lines), "rows.jsonl")
    assert uploaded["id"].startswith("file-") and uploaded["object"] == "file"
    assert uploaded["bytes"] == len(jsonl(lines)) and uploaded["filename"] == "rows.jsonl"
    assert uploaded["purpose"] == "batch" and isinstance(uploaded["created_at"], int)
    listed = client.get("/files", params={"purpose": "batch"}).json()
    assert listed["object"] == "list" and [f["id"] for f in listed["data"]] == [uploaded["id"]]
    assert client.get(f"/files/{uploaded['id']}/content").content == jsonl(lines)

    created = create(client, uploaded["id"], {"job": "j1"})
    assert created.status_code == 200
    batch = created.json()
    assert batch["id"].startswith("batch_") and batch["object"] == "batch"
    assert batch["status"] == "validating" and batch["input_file_id"] == uploaded["id"]
    assert batch["endpoint"] == "/v1/chat/completions" and batch["completion_window"] == "24h"
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["metadata"] == {"job": "j1"} and batch["errors"] is None
    assert batch["expires_at"] == batch["created_at"] + 24 * 3600

    seen, done = poll_until_final(client, batch["id"])
    assert seen == ["in_progress", "finalizing", "completed"]
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert done["error_file_id"] is None
    assert None not in (done["in_progress_at"], done["finalizing_at"], done["completed_at"])
    assert poll(client, batch["id"])["status"] == "completed"  # final: stays

    output = by_custom_id(download(client, done["output_file_id"]))
    assert sorted(output) == ["row-0", "row-1", "row-2"]
    for item in lines:
        got = output[item["custom_id"]]
        assert got["id"].startswith("batch_req_") and got["error"] is None
        assert got["response"]["status_code"] == 200 and got["response"]["request_id"]
        online = client.post("/chat/completions", json=item["body"]).json()
        answer = got["response"]["body"]
        assert answer["object"] == "chat.completion" and answer["model"] == "fake-model"
        assert answer["choices"] == online["choices"]
        assert answer["usage"] == online["usage"]
    assert server.count == 3  # only the online requests above: batch lines are not chat ones
    assert (server.uploads, server.creates, server.polls, server.downloads) == (1, 1, 4, 2)
    recorded = server.batch(batch["id"])
    assert recorded.metadata == {"job": "j1"} and recorded.lines == lines
    assert recorded.status == "completed" and recorded.polls == 4
    assert server.submitted_custom_ids() == ["row-0", "row-1", "row-2"]


def test_a_custom_answer_reaches_the_batch_output() -> None:
    with (
        FakeServer(answer=lambda body: "label: spam", batch_states=["completed"]) as fake,
        httpx.Client(base_url=fake.base_url, timeout=5) as http,
    ):
        batch = submit(http, [line("a", "buy now")])
        assert batch["status"] == "completed"  # a one-state script ends at the create
        (got,) = download(http, batch["output_file_id"])
        assert got["response"]["body"]["choices"][0]["message"]["content"] == "label: spam"


def test_failing_lines_go_to_the_error_file(server: FakeServer, client: httpx.Client) -> None:
    server.batch_fail = {"poison", "toxic"}
    lines = [line("ok-1", "fine"), line("bad-1", "a poison row"), line("bad-2", "toxic")]
    batch = submit(client, [*lines, line("ok-2", "fine too")])
    _, done = poll_until_final(client, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    assert sorted(by_custom_id(download(client, done["output_file_id"]))) == ["ok-1", "ok-2"]
    errors = by_custom_id(download(client, done["error_file_id"]))
    assert sorted(errors) == ["bad-1", "bad-2"]
    for item in errors.values():
        assert item["id"].startswith("batch_req_") and item["error"] is None
        response = item["response"]
        assert response["status_code"] == 400 and response["request_id"]
        assert response["body"]["error"]["type"] == "invalid_request_error"
        assert response["body"]["error"]["message"]


def test_a_predicate_picks_the_failing_lines() -> None:
    with (
        FakeServer(batch_fail=lambda body: body["messages"][-1]["content"] == "x") as fake,
        httpx.Client(base_url=fake.base_url, timeout=5) as http,
    ):
        batch = submit(http, [line("a", "x"), line("b", "xx")])
        _, done = poll_until_final(http, batch["id"])
        assert [e["custom_id"] for e in download(http, done["error_file_id"])] == ["a"]
        assert [o["custom_id"] for o in download(http, done["output_file_id"])] == ["b"]


def test_an_expired_batch_answers_a_share_and_the_rest_expire() -> None:
    with (
        FakeServer(batch_states=["validating", "in_progress", "expired"], batch_fail="bad") as fake,
        httpx.Client(base_url=fake.base_url, timeout=5) as http,
    ):
        fake.batch_partial = 0.5
        lines = [line("r0", "bad"), line("r1", "b"), line("r2", "c"), line("r3", "d")]
        batch = submit(http, lines)
        seen, done = poll_until_final(http, batch["id"])
        assert seen == ["in_progress", "expired"] and done["expired_at"] is not None
        assert [o["custom_id"] for o in download(http, done["output_file_id"])] == ["r1"]
        errors = by_custom_id(download(http, done["error_file_id"]))
        assert errors["r0"]["response"]["status_code"] == 400  # answered: failed
        for custom_id in ("r2", "r3"):  # not answered before the window ended
            assert errors[custom_id]["response"] is None
            assert errors[custom_id]["error"]["code"] == "batch_expired"
        assert done["request_counts"] == {"total": 4, "completed": 1, "failed": 3}


def test_a_cancel_keeps_the_lines_answered_so_far(server: FakeServer, client: httpx.Client) -> None:
    server.batch_partial = 0.75
    batch = submit(client, [line(f"r{i}", f"t{i}") for i in range(4)])
    assert poll(client, batch["id"])["status"] == "in_progress"
    cancelling = client.post(f"/batches/{batch['id']}/cancel")
    assert cancelling.status_code == 200
    assert cancelling.json()["status"] == "cancelling"
    assert cancelling.json()["cancelling_at"] is not None
    assert client.post(f"/batches/{batch['id']}/cancel").json()["status"] == "cancelling"
    done = poll(client, batch["id"])
    assert done["status"] == "cancelled" and done["cancelled_at"] is not None
    assert [o["custom_id"] for o in download(client, done["output_file_id"])] == ["r0", "r1", "r2"]
    assert done["error_file_id"] is None  # the unanswered line gets no line at all
    assert done["request_counts"] == {"total": 4, "completed": 3, "failed": 0}
    again = client.post(f"/batches/{batch['id']}/cancel")
    assert again.status_code == 400 and "cancelled" in again.json()["error"]["message"]
    assert server.cancels == 3


def test_list_batches_newest_first_with_metadata_and_pages(
    server: FakeServer, client: httpx.Client
) -> None:
    ids = [submit(client, [line("a", "x")], {"job": f"j{i}"})["id"] for i in range(3)]
    first = client.get("/batches", params={"limit": 2}).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [b["id"] for b in first["data"]] == [ids[2], ids[1]]
    assert [b["metadata"] for b in first["data"]] == [{"job": "j2"}, {"job": "j1"}]
    assert (first["first_id"], first["last_id"]) == (ids[2], ids[1])
    rest = client.get("/batches", params={"limit": 2, "after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False
    assert rest["data"][0]["status"] == "validating"  # listing does not move a batch
    everything = client.get("/batches").json()
    assert len(everything["data"]) == 3 and everything["has_more"] is False
    assert client.get("/batches", params={"after": "batch_999"}).status_code == 400
    assert server.lists == 4 and server.polls == 0


def test_without_batch_routes_files_and_batches_are_404() -> None:
    with (
        FakeServer(batch_routes=False) as fake,
        httpx.Client(base_url=fake.base_url, timeout=5) as http,
    ):
        for response in (
            http.post("/files", data={"purpose": "batch"}, files={"file": ("a.jsonl", b"{}")}),
            http.get("/files"),
            http.get("/files/file-1/content"),
            create(http, "file-1"),
            http.get("/batches"),
            http.get("/batches/batch_1"),
            http.post("/batches/batch_1/cancel"),
            http.delete("/files/file-1"),
        ):
            assert response.status_code == 404
            assert "error" in response.json()
        assert http.post("/chat/completions", json=body_of("x")).status_code == 200
        assert fake.batches == [] and fake.files == {}
        fake.batch_routes = True
        assert http.get("/batches").status_code == 200


def test_a_malformed_input_file_fails_the_batch_at_validation(
    server: FakeServer, client: httpx.Client
) -> None:
    good = json.dumps(line("a", "x"))
    wrong_url = json.dumps({**line("b", "y"), "url": "/v1/completions"})
    duplicate = json.dumps(line("a", "z"))
    data = f"{good}\n{{not json\n{wrong_url}\n{duplicate}\n".encode()
    uploaded = upload(client, data)  # the upload itself is fine
    batch = create(client, uploaded["id"]).json()
    assert batch["status"] == "validating" and batch["request_counts"]["total"] == 0
    failed = poll(client, batch["id"])
    assert failed["status"] == "failed" and failed["failed_at"] is not None
    errors = failed["errors"]["data"]
    assert [e["line"] for e in errors] == [2, 3, 4]
    assert {e["code"] for e in errors} == {"invalid_request"}
    assert "url" in errors[1]["message"] and "duplicate" in errors[2]["message"]
    assert failed["output_file_id"] is None and failed["error_file_id"] is None
    assert poll(client, batch["id"])["status"] == "failed"


def test_validation_of_input_lines() -> None:
    assert validate_batch_input(jsonl([line("a", "x"), line("b", "y")]))[1] == []
    _, missing = validate_batch_input(
        jsonl([{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": []}])
    )
    assert len(missing) == 2 and {e["line"] for e in missing} == {1}
    assert validate_batch_input(b"\n")[1][0]["message"] == "the file has no requests"
    assert validate_batch_input(b"\xff")[1][0]["line"] is None


def test_a_dropped_create_still_makes_the_batch(server: FakeServer, client: httpx.Client) -> None:
    server.batch_create_drop = 1
    file_id = upload(client, jsonl([line("a", "x")]))["id"]
    with pytest.raises(httpx.RemoteProtocolError):
        create(client, file_id, {"job": "lost"})
    listed = client.get("/batches").json()["data"]
    assert [b["metadata"] for b in listed] == [{"job": "lost"}]
    assert poll(client, listed[0]["id"])["status"] == "in_progress"
    assert create(client, file_id, {"job": "next"}).status_code == 200  # one drop only
    assert server.creates == 2 and len(server.batches) == 2


def wait_for(condition: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_create_whose_client_hangs_up_during_the_delay_is_not_made(
    server: FakeServer, client: httpx.Client
) -> None:
    server.batch_create_delay_s = 0.3
    file_id = upload(client, jsonl([line("a", "x")]))["id"]
    with (
        httpx.Client(base_url=server.base_url, timeout=0.05) as hasty,
        pytest.raises(httpx.ReadTimeout),
    ):
        create(hasty, file_id, {"job": "killed"})
    wait_for(lambda: server.abandoned_creates == 1)
    assert server.batches == [] and server.creates == 1
    started = time.monotonic()
    assert create(client, file_id).status_code == 200  # a patient client waits it out
    assert time.monotonic() - started >= 0.3
    assert len(server.batches) == 1


def test_an_upload_whose_client_hangs_up_during_the_delay_is_not_stored(
    server: FakeServer,
) -> None:
    server.upload_delay_s = 0.3
    with (
        httpx.Client(base_url=server.base_url, timeout=0.05) as hasty,
        pytest.raises(httpx.ReadTimeout),
    ):
        upload(hasty, jsonl([line("a", "x")]))
    wait_for(lambda: server.abandoned_uploads == 1)
    assert server.files == {} and server.uploads == 1


def test_scripted_batches_and_the_lines_submitted(server: FakeServer, client: httpx.Client) -> None:
    server.script_batch(["in_progress", "expired"], partial=0.0)
    expired = submit(client, [line("a", "x"), line("b", "y")])
    _, done = poll_until_final(client, expired["id"])
    assert done["status"] == "expired" and done["output_file_id"] is None
    assert len(download(client, done["error_file_id"])) == 2
    retried = submit(client, [line("a", "x"), line("b", "y")])  # back to batch_states
    seen, done = poll_until_final(client, retried["id"])
    assert seen[-1] == "completed"
    submitted = Counter(server.submitted_custom_ids())
    assert submitted == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="last batch state"):
        server.batch_states = ["validating", "in_progress"]
    with pytest.raises(ValueError, match="before the last"):
        server.script_batch(["completed", "completed"])
    with pytest.raises(ValueError, match="batch_partial"):
        FakeServer(batch_partial=1.5)


def test_a_scripted_failed_batch(server: FakeServer, client: httpx.Client) -> None:
    server.batch_states = ["validating", "failed"]
    batch = submit(client, [line("a", "x")])
    failed = poll(client, batch["id"])
    assert failed["status"] == "failed" and failed["errors"]["data"][0]["code"]
    assert failed["output_file_id"] is None


def test_shuffled_output_keeps_every_line() -> None:
    with (
        FakeServer(batch_states=["completed"], batch_shuffle=True, seed=3) as fake,
        httpx.Client(base_url=fake.base_url, timeout=5) as http,
    ):
        ids = [f"r{i}" for i in range(20)]
        batch = submit(http, [line(custom_id, custom_id) for custom_id in ids])
        got = [o["custom_id"] for o in download(http, batch["output_file_id"])]
        assert got != ids and sorted(got) == sorted(ids)


def test_bad_requests_on_the_batch_routes(server: FakeServer, client: httpx.Client) -> None:
    wrong = client.post("/files", data={"purpose": "fine-tune"}, files={"file": ("a", b"")})
    assert wrong.status_code == 400
    assert client.post("/files", data={"purpose": "batch"}).status_code == 400  # no file
    assert client.post("/files", json={"purpose": "batch"}).status_code == 400  # not multipart
    unknown = create(client, "file-404")
    assert unknown.status_code == 400 and "file-404" in unknown.json()["error"]["message"]
    file_id = upload(client, jsonl([line("a", "x")]))["id"]
    bad_window = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    assert client.post("/batches", json=bad_window).status_code == 400
    assert client.get("/batches/batch_404").status_code == 404
    assert client.post("/batches/batch_404/cancel").status_code == 404
    missing = client.get("/files/file-404/content")
    assert missing.status_code == 404 and "error" in missing.json()
    assert client.get(f"/files/{file_id}").json()["id"] == file_id
    assert client.delete(f"/files/{file_id}").json() == {
        "id": file_id,
        "object": "file",
        "deleted": True,
    }
    assert client.get(f"/files/{file_id}").status_code == 404
    assert server.batches == [] and server.deletes == 1


def test_require_key_guards_the_batch_routes(server: FakeServer, client: httpx.Client) -> None:
    server.require_key = "sk-right"
    assert client.get("/batches").status_code == 401
    assert client.post("/files", data={"purpose": "batch"}).status_code == 401
    right = {"Authorization": "Bearer sk-right"}
    assert client.get("/batches", headers=right).status_code == 200


def test_parse_multipart_keeps_the_bytes() -> None:
    request = httpx.Request(
        "POST",
        "http://x/v1/files",
        data={"purpose": "batch"},
        files={"file": ("in.jsonl", b"line 1\r\nline 2\n\r\n", "application/jsonl")},
    )
    fields = parse_multipart(request.headers["content-type"], request.read())
    assert fields["purpose"] == (None, b"batch")
    assert fields["file"] == ("in.jsonl", b"line 1\r\nline 2\n\r\n")
    with pytest.raises(ValueError, match="multipart"):
        parse_multipart("application/json", b"{}")


def test_the_shell_flags_script_batches() -> None:
    shown = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    for flag in ("--no-batch-routes", "--batch-states", "--batch-partial", "--batch-fail"):
        assert flag in shown.stdout
    args = ["--batch-states", "in_progress,completed", "--batch-fail", "bad"]
    with subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().split()[-1]
            with httpx.Client(base_url=base_url, timeout=5) as http:
                batch = submit(http, [line("a", "bad"), line("b", "good")])
                assert batch["status"] == "in_progress"
                done = poll(http, batch["id"])
                assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
        finally:
            proc.terminate()
            proc.wait(timeout=5)
