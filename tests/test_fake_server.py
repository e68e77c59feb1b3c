"""Tests for the scriptable fake chat-completions server used by the end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_server import FakeServer


def chat(client: httpx.Client, content: Any, model: str = "fake-model") -> httpx.Response:
    """POST one chat request whose only (user) message has `content`."""
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return client.post("/chat/completions", json=body)


def test_base_url_needs_start() -> None:
    fake = FakeServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.base_url
    with fake:
        assert fake.base_url.startswith("http://127.0.0.1:")
        assert fake.base_url.endswith("/v1")


def test_default_answer_is_openai_completion(server: FakeServer, client: httpx.Client) -> None:
    body = {
        "model": "some-model",
        "messages": [
            {"role": "system", "content": "Be brief."},  # 9 chars
            {"role": "user", "content": "Classify this message"},  # 21 chars
        ],
        "temperature": 0,
    }
    response = client.post(
        "/chat/completions", json=body, headers={"Authorization": "Bearer sk-test"}
    )
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "some-model"
    assert isinstance(data["id"], str)
    assert isinstance(data["created"], int)
    answer = "echo: Classify this message"
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": answer},
            "finish_reason": "stop",
        }
    ]
    completion_tokens = len(answer) // 4
    assert data["usage"] == {
        "prompt_tokens": 30 // 4,
        "completion_tokens": completion_tokens,
        "total_tokens": 30 // 4 + completion_tokens,
    }
    assert server.requests == [body]
    assert server.headers[0]["authorization"] == "Bearer sk-test"
    assert server.headers[0]["content-type"] == "application/json"
    assert server.count == 1


def test_usage_is_at_least_one() -> None:
    fake = FakeServer(answer=lambda body: "")
    with fake, httpx.Client(base_url=fake.base_url) as http:
        usage = chat(http, "").json()["usage"]
    assert usage == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


def test_content_parts_are_joined(server: FakeServer, client: httpx.Client) -> None:
    parts = [
        {"type": "text", "text": "hello "},
        {"type": "image_url", "image_url": {"url": "data:,"}},
        {"type": "text", "text": "world"},
    ]
    response = chat(client, parts)
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello world"
    assert server.count_matching("hello world") == 1


def test_custom_answer_sees_the_body() -> None:
    fake = FakeServer(answer=lambda body: body["model"].upper())
    with fake, httpx.Client(base_url=fake.base_url) as http:
        response = chat(http, "hi", model="tiny")
    assert response.json()["choices"][0]["message"]["content"] == "TINY"


def test_failing_answer_becomes_500() -> None:
    def broken(body: dict[str, Any]) -> str:
        raise KeyError("nope")

    with FakeServer(answer=broken) as fake, httpx.Client(base_url=fake.base_url) as http:
        response = chat(http, "hi")
    assert response.status_code == 500
    assert "KeyError" in response.json()["error"]["message"]


def test_429_without_retry_after(server: FakeServer, client: httpx.Client) -> None:
    server.script("x", ["429"])
    response = chat(client, "x")
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    assert response.json() == {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }


def test_429_with_retry_after(server: FakeServer, client: httpx.Client) -> None:
    server.script("x", ["429:retry-after=0.2"])
    response = chat(client, "x")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "0.2"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("action", "status", "expected"),
    [
        (500, 500, {"error": {"message": "upstream failure"}}),
        ("503", 503, {"error": {"message": "upstream failure"}}),
        (
            401,
            401,
            {
                "error": {
                    "type": "unauthenticated",
                    "title": "Unauthenticated",
                    "detail": "Invalid API key",
                },
                "status": "error",
                "status_message": "unauthenticated",
            },
        ),
        (403, 403, {"error": {"message": "Forbidden: key lacks access"}}),
    ],
)
def test_error_statuses(
    server: FakeServer, client: httpx.Client, action: str | int, status: int, expected: Any
) -> None:
    server.script("x", [action])
    response = chat(client, "x")
    assert response.status_code == status
    assert response.json() == expected


def test_404_names_the_model(server: FakeServer, client: httpx.Client) -> None:
    server.script("x", [404])
    response = chat(client, "x", model="no-such-model")
    assert response.status_code == 404
    data = response.json()
    assert data["error"]["type"] == "resource_not_found"
    assert data["error"]["detail"] == "Model 'no-such-model' not found"
    assert data["status"] == "error"


def test_400_is_invalid_params(server: FakeServer, client: httpx.Client) -> None:
    server.script("x", [400])
    response = chat(client, "x")
    assert response.status_code == 400
    data = response.json()
    assert data["error"]["type"] == "invalid_params"
    assert data["error"]["detail"] == "temperature must be <= 2"
    assert data["status_message"] == "invalid_params"


def test_drop_closes_without_a_response(server: FakeServer, client: httpx.Client) -> None:
    server.script("x", ["drop"])
    with pytest.raises(httpx.TransportError):
        chat(client, "x")
    assert server.count == 1  # the request was read and recorded before the hang-up
    assert chat(client, "x").status_code == 200  # a fresh connection works


def test_drop_on_a_reused_connection(server: FakeServer, client: httpx.Client) -> None:
    assert chat(client, "warm up").status_code == 200
    server.script("x", ["drop"])
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, "x")


def test_truncate_sends_half_a_body(server: FakeServer, client: httpx.Client) -> None:
    server.script("x", ["truncate"])
    response = chat(client, "x")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content.startswith(b'{"id"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    assert chat(client, "x").status_code == 200  # the connection stays usable


def test_nochoices(server: FakeServer, client: httpx.Client) -> None:
    server.script("x", ["nochoices"])
    response = chat(client, "x")
    assert response.status_code == 200
    assert response.json() == {"id": "x", "object": "chat.completion"}


def test_script_is_consumed_in_order_by_matching_requests_only(
    server: FakeServer, client: httpx.Client
) -> None:
    server.script("row 2", ["429", 500, 200, "drop"])
    statuses = []
    for content in ["row 1", "row 2", "row 3", "row 2", "row 2"]:
        statuses.append(chat(client, content).status_code)
    assert statuses == [200, 429, 200, 500, 200]
    with pytest.raises(httpx.TransportError):
        chat(client, "row 2")
    assert chat(client, "row 2").status_code == 200  # script used up
    assert server.count == 7
    assert server.count_matching("row 2") == 5
    assert server.count_matching("row") == 7
    assert server.count_matching("nothing") == 0


def test_scripts_are_used_in_the_order_added(server: FakeServer, client: httpx.Client) -> None:
    server.script("row", [503])
    server.script("row 1", [401, 403])
    assert [chat(client, "row 1").status_code for _ in range(4)] == [503, 401, 403, 200]


def test_match_uses_the_last_message_only(server: FakeServer, client: httpx.Client) -> None:
    server.script("secret", [500])
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "secret"},
            {"role": "user", "content": "plain"},
        ],
    }
    assert client.post("/chat/completions", json=body).status_code == 200
    assert chat(client, "the secret").status_code == 500


def test_always_overrides_everything_until_reset(server: FakeServer, client: httpx.Client) -> None:
    server.script("x", [500])
    server.always = 401
    assert server.always == 401
    assert [chat(client, c).status_code for c in ["x", "y", "x"]] == [401, 401, 401]
    server.always = None
    assert chat(client, "x").status_code == 500  # the script was not consumed meanwhile
    assert chat(client, "x").status_code == 200
    assert server.count == 5


def test_always_drop(server: FakeServer, client: httpx.Client) -> None:
    server.always = "drop"
    for _ in range(2):
        with pytest.raises(httpx.TransportError):
            chat(client, "x")
    assert server.count == 2


def test_unknown_actions_are_rejected(server: FakeServer) -> None:
    with pytest.raises(ValueError, match="unknown fake-server action"):
        server.script("x", [418])
    with pytest.raises(ValueError, match="unknown fake-server action"):
        server.always = "explode"
    assert server.always is None


def test_latency_delays_each_answer() -> None:
    with FakeServer(latency=0.2) as fake, httpx.Client(base_url=fake.base_url) as http:
        started = time.monotonic()
        assert chat(http, "x").status_code == 200
        assert time.monotonic() - started >= 0.2


def test_requests_are_served_concurrently() -> None:
    with (
        FakeServer(latency=0.3) as fake,
        httpx.Client(base_url=fake.base_url, limits=httpx.Limits(max_connections=8)) as http,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        started = time.monotonic()
        statuses = list(pool.map(lambda i: chat(http, f"row {i}").status_code, range(8)))
        elapsed = time.monotonic() - started
    assert statuses == [200] * 8
    assert elapsed < 0.9  # 8 x 0.3 s serially would be 2.4 s
    contents = sorted(body["messages"][-1]["content"] for body in fake.requests)
    assert contents == sorted(f"row {i}" for i in range(8))
    assert len(fake.headers) == 8


def test_models_list_and_get(client: httpx.Client) -> None:
    listing = client.get("/models")
    assert listing.status_code == 200
    data = listing.json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["fake-model"]
    assert data["data"][0]["object"] == "model"

    model = client.get("/models/fake-model").json()
    assert model["pricing"]["input_cost_per_token"] == 1e-07
    assert model["request_schema"]["properties"]["temperature"]["maximum"] == 2

    missing = client.get("/models/other")
    assert missing.status_code == 404
    assert missing.json()["error"]["detail"] == "Model 'other' not found"


def test_custom_models() -> None:
    models = [{"id": "org/model-a", "object": "model"}, {"id": "b", "object": "model"}]
    with FakeServer(models=models) as fake, httpx.Client(base_url=fake.base_url) as http:
        assert [m["id"] for m in http.get("/models").json()["data"]] == ["org/model-a", "b"]
        assert http.get("/models/org/model-a").json() == models[0]
        assert http.get("/models/fake-model").status_code == 404


def test_unknown_paths_and_bad_json(server: FakeServer, client: httpx.Client) -> None:
    assert client.get("/nowhere").status_code == 404
    assert client.post("/completions", json={}).status_code == 404
    bad = client.post(
        "/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400
    assert "invalid JSON" in bad.json()["error"]["message"]
    assert server.count == 0


def test_stop_is_prompt_with_an_open_connection() -> None:
    fake = FakeServer().start()
    with httpx.Client(base_url=fake.base_url) as http:
        assert chat(http, "x").status_code == 200  # leaves a keep-alive connection open
        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 0.5
        with pytest.raises(httpx.TransportError):
            chat(http, "x")
    fake.stop()  # idempotent


def test_foreground_mode() -> None:
    script = Path(__file__).with_name("fake_server.py")
    with subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--latency", "0"],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().split()[-1]
            assert base_url.startswith("http://127.0.0.1:")
            with httpx.Client(base_url=base_url, timeout=5) as http:
                response = chat(http, "ping")
            assert response.json()["choices"][0]["message"]["content"] == "echo: ping"
        finally:
            proc.terminate()
            proc.wait(timeout=5)


def test_random_rates_fail_a_share_of_unscripted_requests() -> None:
    with FakeServer(seed=7) as fake, httpx.Client(base_url=fake.base_url, timeout=5) as http:
        fake.error_rate, fake.rate_limit_rate = 0.3, 0.3
        fake.script("scripted", [200] * 5)
        codes = [chat(http, f"row {i}").status_code for i in range(60)]
        assert {chat(http, "scripted").status_code for _ in range(5)} == {200}
        fake.error_rate = fake.rate_limit_rate = 0.0
        fake.truncate_rate = 1.0
        cut = chat(http, "x")
    assert 8 < codes.count(500) < 30 and 8 < codes.count(429) < 30 and 200 in codes
    assert cut.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        cut.json()


def test_random_429s_carry_retry_after_and_ratelimit_headers_when_asked(
    server: FakeServer, client: httpx.Client
) -> None:
    server.rate_limit_rate = 1.0
    plain = chat(client, "x")
    assert plain.status_code == 429 and "retry-after" not in plain.headers
    assert "x-ratelimit-remaining-requests" not in plain.headers
    server.retry_after, server.ratelimit_headers = 2.5, True
    told = chat(client, "x")
    assert told.headers["retry-after"] == "2.5"
    assert told.headers["x-ratelimit-remaining-requests"] == "0"
    assert told.headers["x-ratelimit-reset-requests"] == "2.5s"


SCRIPT = Path(__file__).with_name("fake_server.py")


def test_help_lists_the_scripted_behaviours() -> None:
    shown = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "COLUMNS": "200"},  # one help line per option
    )
    assert shown.returncode == 0, shown.stderr
    for flag in (
        "--port",
        "--latency",
        "--error-rate",
        "--rate-limit-rate",
        "--retry-after",
        "--ratelimit-headers",
        "--truncate-rate",
        "--down-after",
        "--no-model-route",
        "--seed",
    ):
        assert flag in shown.stdout
    assert "default 0" in shown.stdout


def test_the_shell_flags_script_the_server() -> None:
    args = ["--rate-limit-rate", "1", "--retry-after", "3", "--ratelimit-headers"]
    with subprocess.Popen(
        [sys.executable, str(SCRIPT), *args, "--down-after", "1", "--no-model-route"],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().split()[-1]
            assert base_url.startswith("http://127.0.0.1:") and ":8787/" not in base_url
            with httpx.Client(base_url=base_url, timeout=5) as http:
                assert http.get("/models/fake-model").status_code == 404
                limited = chat(http, "ping")
                assert limited.status_code == 429
                assert limited.headers["retry-after"] == "3"
                assert limited.headers["x-ratelimit-reset-requests"] == "3s"
                with pytest.raises(httpx.TransportError):
                    chat(http, "ping")  # the second request: down
            assert proc.wait(timeout=10) == 0  # down for good: the process ends
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
