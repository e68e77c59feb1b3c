"""OxenHub.check_branch: the output's repository and branch checked before anything is sent,
by reads alone, bounded, the key in no message."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fake_oxen import FakeOxen

from pipeline.errors import OutputError
from pipeline.oxen import OxenHub
from pipeline.oxenaddress import OxenAddress

KEY = "sk-oxen-secret-123"
OUT = OxenAddress.parse("oxen://ox:tickets@answers/data/out.csv")


@pytest.fixture
def fake() -> Iterator[FakeOxen]:
    with FakeOxen(require_key=KEY) as server:
        server.add_repo("ox", "tickets", {"data/in.csv": b"id,text\n1,a\n"})
        yield server


@pytest.fixture
def hub(fake: FakeOxen) -> Iterator[OxenHub]:
    with OxenHub(fake.host, "http", KEY, sleep=lambda _: None) as client:
        yield client


def test_a_branch_to_make_or_one_that_exists_passes_and_nothing_is_written(
    fake: FakeOxen, hub: OxenHub
) -> None:
    hub.check_branch(OUT)  # "answers" does not exist yet: the commit will make it
    hub.check_branch(OxenAddress("ox", "tickets", "main", "data/out.csv"))
    assert {method for method, _ in fake.requests} == {"GET"}
    assert sorted(fake.repos[("ox", "tickets")].branches) == ["main"]


def test_a_commit_id_is_refused(fake: FakeOxen, hub: OxenHub) -> None:
    head = fake.head("ox", "tickets", "main")
    assert head is not None
    with pytest.raises(OutputError, match=r"is a commit; the output must name a branch: put"):
        hub.check_branch(OxenAddress("ox", "tickets", head.id, "out.csv"))


def test_a_missing_repository_says_what_to_do(hub: OxenHub) -> None:
    with pytest.raises(OutputError, match=r"ox/nope not found .*create it first, or correct"):
        hub.check_branch(OxenAddress("ox", "nope", "answers", "out.csv"))


def test_an_empty_repository_passes(fake: FakeOxen, hub: OxenHub) -> None:
    fake.add_repo("ox", "empty", {})
    hub.check_branch(OxenAddress("ox", "empty", "answers", "out.csv"))
    assert not any("/commits/" in path for _, path in fake.requests)  # its first commit makes it


def test_a_refused_key_names_its_variable_not_the_key(fake: FakeOxen) -> None:
    wrong = "sk-wrong-key-0123456789"
    with (
        OxenHub(fake.host, "http", wrong, key_env="HUB_KEY", sleep=lambda _: None) as client,
        pytest.raises(OutputError) as caught,
    ):
        client.check_branch(OUT)
    assert "$HUB_KEY" in str(caught.value) and wrong not in str(caught.value)


def test_a_hub_that_does_not_answer_is_an_error_after_the_retries_given() -> None:
    calls: list[str] = []

    def hang(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ReadTimeout("no answer", request=request)

    transport = httpx.MockTransport(hang)
    with (
        OxenHub(
            "hub.test", "https", KEY, transport=transport, retries=1, sleep=lambda _: None
        ) as client,
        pytest.raises(OutputError, match=r"failed 2 times: .*timed out") as caught,
    ):
        client.check_branch(OUT)
    assert len(calls) == 2 and KEY not in str(caught.value)
