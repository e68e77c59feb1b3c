"""pipeline.oxen against the fake Oxen hub (tests/fake_oxen.py) and MockTransport handlers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_oxen import FakeOxen
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ConfigError, InputError, OutputError
from pipeline.oxen import COMMIT_TRIES, OxenHub
from pipeline.oxenaddress import OxenAddress, is_oxen

KEY = "sk-oxen-secret-123"
INPUT = b"id,text\n1,hello\n2,world\n"
IN = OxenAddress.parse("oxen://ox:tickets@main/data/in.csv")
OUT = OxenAddress.parse("oxen://ox:tickets@answers/data/out.csv")


@pytest.fixture
def fake() -> Iterator[FakeOxen]:
    with FakeOxen(require_key=KEY) as server:
        server.add_repo("ox", "tickets", {"data/in.csv": INPUT, "README.md": b"# tickets\n"})
        yield server


@pytest.fixture
def hub(fake: FakeOxen) -> Iterator[OxenHub]:
    with OxenHub(fake.host, "http", KEY, sleep=lambda _: None) as client:
        yield client


@pytest.fixture
def outputs(tmp_path: Path) -> dict[str, Path]:
    table, summary = tmp_path / "out.csv", tmp_path / "out.summary.json"
    table.write_bytes(b"id,label\n1,greeting\n2,noun\n")
    summary.write_bytes(b'{"rows": 2}\n')
    return {"out.csv": table, "out.summary.json": summary}


# -- addresses ---------------------------------------------------------------------------


def test_parse_an_address() -> None:
    address = OxenAddress.parse("oxen://ox:my-repo.v2@main/data/train/in.parquet")
    assert address == OxenAddress("ox", "my-repo.v2", "main", "data/train/in.parquet")
    assert str(address) == "oxen://ox:my-repo.v2@main/data/train/in.parquet"
    assert (address.directory, address.name) == ("data/train", "in.parquet")
    commit = OxenAddress.parse("oxen://ox:r@c5aaf5297d4bc2bee1cdb93a42210729/in.csv")
    assert (commit.revision, commit.directory) == ("c5aaf5297d4bc2bee1cdb93a42210729", "")


@pytest.mark.parametrize(
    "text",
    [
        "data/in.csv",
        "oxen://ox/tickets/main/in.csv",
        "oxen://ox:tickets/in.csv",
        "oxen://ox:tickets@main",
        "oxen://ox:tickets@main/",
        "oxen://ox:tickets@main/data/",
        "oxen://ox:tickets@main/data//in.csv",
        "oxen://ox:tickets@main/../in.csv",
        "oxen://:tickets@main/in.csv",
        "oxen://ox:@main/in.csv",
        "oxen://ox:tickets@/in.csv",
        "oxen://ox:tickets@main/in put.csv",
        "s3://ox:tickets@main/in.csv",
    ],
)
def test_bad_addresses_name_the_expected_form(text: str) -> None:
    with pytest.raises(ConfigError, match=r"oxen://NAMESPACE:REPO@REVISION/PATH"):
        OxenAddress.parse(text)


def test_is_oxen() -> None:
    assert is_oxen("oxen://ox:tickets@main/in.csv")
    assert not is_oxen("data/in.csv")
    assert not is_oxen("s3://bucket/in.csv")


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True)
_segments = st.lists(_names.filter(lambda s: s not in (".", "..")), min_size=1, max_size=4)


@given(_names, _names, _names, _segments)
def test_address_round_trips(namespace: str, repo: str, revision: str, parts: list[str]) -> None:
    address = OxenAddress(namespace, repo, revision, "/".join(parts))
    assert OxenAddress.parse(str(address)) == address


# -- reading -----------------------------------------------------------------------------


def test_resolve_a_branch_and_a_commit_id(fake: FakeOxen, hub: OxenHub) -> None:
    head = fake.head("ox", "tickets", "main")
    assert head is not None
    assert hub.resolve(IN) == head.id
    at_commit = OxenAddress("ox", "tickets", head.id, "data/in.csv")
    assert hub.resolve(at_commit) == head.id


def test_resolve_names_a_missing_repository_or_revision(fake: FakeOxen, hub: OxenHub) -> None:
    with pytest.raises(InputError, match=r"repository ox/nope not found") as error:
        hub.resolve(OxenAddress("ox", "nope", "main", "in.csv"))
    assert "oxen://ox:nope@main/in.csv" in str(error.value)
    with pytest.raises(InputError, match=r"no branch or commit 'dev' in ox/tickets"):
        hub.resolve(OxenAddress("ox", "tickets", "dev", "data/in.csv"))


def test_fetch_streams_to_the_cache_once(fake: FakeOxen, hub: OxenHub, tmp_path: Path) -> None:
    commit = hub.resolve(IN)
    path = hub.fetch(IN, commit, tmp_path / "cache")
    assert path == tmp_path / "cache" / commit / "in.csv"
    assert path.read_bytes() == INPUT
    assert sorted(p.name for p in path.parent.iterdir()) == ["in.csv"]  # no temp file left
    seen = len(fake.requests)
    assert hub.fetch(IN, commit, tmp_path / "cache") == path
    assert len(fake.requests) == seen  # a rerun at the same commit downloads nothing


def test_fetch_retries_transient_errors(fake: FakeOxen, hub: OxenHub, tmp_path: Path) -> None:
    commit = hub.resolve(IN)
    fake.fail_reads = 2  # two 503s, then the file
    assert hub.fetch(IN, commit, tmp_path).read_bytes() == INPUT


def test_fetch_gives_up_after_a_few_tries(fake: FakeOxen, hub: OxenHub, tmp_path: Path) -> None:
    commit = hub.resolve(IN)
    fake.fail_reads = 100
    with pytest.raises(InputError, match=r"failed 5 times.*HTTP 503"):
        hub.fetch(IN, commit, tmp_path)
    assert not any((tmp_path / commit).iterdir())


def test_fetch_names_a_missing_path(hub: OxenHub, tmp_path: Path) -> None:
    missing = OxenAddress("ox", "tickets", "main", "data/nope.csv")
    commit = hub.resolve(IN)
    with pytest.raises(InputError, match=rf"no file 'data/nope.csv' at commit {commit}"):
        hub.fetch(missing, commit, tmp_path)
    assert not any((tmp_path / commit).iterdir())


def test_file_at(fake: FakeOxen, hub: OxenHub) -> None:
    assert hub.file_at(IN) == INPUT
    assert hub.file_at(OxenAddress("ox", "tickets", "main", "data/nope.csv")) is None
    assert hub.file_at(OUT) is None  # no such branch yet
    with pytest.raises(OutputError, match=r"repository ox/nope not found"):
        hub.file_at(OxenAddress("ox", "nope", "main", "in.csv"))


# -- writing -----------------------------------------------------------------------------


def test_ensure_branch_creates_from_the_default_branch_once(fake: FakeOxen, hub: OxenHub) -> None:
    hub.ensure_branch(OUT)
    main, answers = fake.head("ox", "tickets", "main"), fake.head("ox", "tickets", "answers")
    assert main is not None and answers is not None and answers.id == main.id
    hub.ensure_branch(OUT)
    assert [r for r in fake.requests if r[0] == "POST"] == [
        ("POST", "/api/repos/ox/tickets/branches")
    ]


def test_ensure_branch_refuses_a_commit_id(fake: FakeOxen, hub: OxenHub) -> None:
    head = fake.head("ox", "tickets", "main")
    assert head is not None
    with pytest.raises(OutputError, match=r"is a commit; the output must name a branch"):
        hub.ensure_branch(OxenAddress("ox", "tickets", head.id, "out.csv"))


def test_commit_puts_both_files_in_one_commit(
    fake: FakeOxen, hub: OxenHub, outputs: dict[str, Path]
) -> None:
    hub.ensure_branch(OUT)
    commit_id = hub.commit(OUT, outputs, "Answers for data/in.csv", author="bot", email="b@x.io")
    history = fake.commits("ox", "tickets", "answers")
    assert len(history) == 2 and history[0].id == commit_id
    new = history[0]
    assert (new.message, new.author, new.email) == ("Answers for data/in.csv", "bot", "b@x.io")
    assert new.files["data/out.csv"] == outputs["out.csv"].read_bytes()
    assert new.files["data/out.summary.json"] == b'{"rows": 2}\n'
    assert new.files["data/in.csv"] == INPUT  # the rest of the tree is kept
    assert len(fake.commits("ox", "tickets", "main")) == 1  # the default branch is untouched
    assert hub.file_at(OUT) == outputs["out.csv"].read_bytes()


def test_commit_at_the_repository_root(
    fake: FakeOxen, hub: OxenHub, outputs: dict[str, Path]
) -> None:
    root = OxenAddress("ox", "tickets", "main", "out.csv")
    hub.commit(root, outputs, "root")
    head = fake.head("ox", "tickets", "main")
    assert head is not None and {"out.csv", "out.summary.json"} <= set(head.files)


def test_commit_to_an_empty_repository_creates_the_branch(
    fake: FakeOxen, hub: OxenHub, outputs: dict[str, Path]
) -> None:
    fake.add_repo("ox", "empty")
    address = OxenAddress("ox", "empty", "answers", "out/out.csv")
    hub.ensure_branch(address)  # nothing to branch from: the commit creates it
    commit_id = hub.commit(address, outputs, "first")
    head = fake.head("ox", "empty", "answers")
    assert head is not None and head.id == commit_id
    assert set(head.files) == {"out/out.csv", "out/out.summary.json"}


def test_a_500_before_the_commit_is_retried(
    fake: FakeOxen, hub: OxenHub, outputs: dict[str, Path]
) -> None:
    hub.ensure_branch(OUT)
    fake.fail_next_commit("before")
    commit_id = hub.commit(OUT, outputs, "answers")
    history = fake.commits("ox", "tickets", "answers")
    assert len(history) == 2 and history[0].id == commit_id  # exactly one new commit
    assert fake.puts == 2


def test_a_500_after_the_commit_is_not_committed_twice(
    fake: FakeOxen, hub: OxenHub, outputs: dict[str, Path]
) -> None:
    hub.ensure_branch(OUT)
    fake.fail_next_commit("after")
    commit_id = hub.commit(OUT, outputs, "answers")
    history = fake.commits("ox", "tickets", "answers")
    assert len(history) == 2 and history[0].id == commit_id
    assert fake.puts == 1  # the branch head held the bytes: no second upload


def test_a_commit_that_keeps_failing_leaves_the_branch_as_it_was(
    fake: FakeOxen, hub: OxenHub, outputs: dict[str, Path]
) -> None:
    hub.ensure_branch(OUT)
    before = fake.head("ox", "tickets", "answers")
    assert before is not None
    fake.fail_next_commit("before", times=COMMIT_TRIES)
    with pytest.raises(OutputError) as error:
        hub.commit(OUT, outputs, "answers")
    assert f"the branch is as it was (at commit {before.id}): nothing was committed" in str(
        error.value
    )
    assert "HTTP 500" in str(error.value)
    assert fake.puts == COMMIT_TRIES
    assert fake.commits("ox", "tickets", "answers") == [before]


def test_commit_to_a_missing_branch(fake: FakeOxen, hub: OxenHub, outputs: dict[str, Path]) -> None:
    expected = r"a commit to branch 'answers' failed: .* HTTP 404: Could not find branch: answers"
    with pytest.raises(OutputError, match=expected):
        hub.commit(OUT, outputs, "answers")


# -- auth and error messages -------------------------------------------------------------


def test_a_wrong_key_is_refused_without_showing_it(
    fake: FakeOxen, outputs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-key-456"
    with OxenHub(fake.host, "http", wrong, key_env="MY_OXEN_KEY", sleep=lambda _: None) as hub:
        with pytest.raises(InputError) as error:
            hub.resolve(IN)
        message = str(error.value)
        assert "HTTP 401" in message and "check the API key in $MY_OXEN_KEY" in message
        assert str(IN) in message
        with pytest.raises(OutputError) as out_error:
            hub.commit(OUT, outputs, "answers")
    for text in (message, str(out_error.value), caplog.text):
        assert wrong not in text and KEY not in text


def test_no_key_says_which_variable_to_set(fake: FakeOxen) -> None:
    hub = OxenHub(fake.host, "http", None, sleep=lambda _: None)
    with hub, pytest.raises(InputError, match=r"HTTP 401.*no API key was sent: set \$OXEN_API"):
        hub.resolve(IN)


def _mock(status: int, body: bytes, content_type: str = "application/json") -> OxenHub:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        return httpx.Response(status, content=body, headers={"Content-Type": content_type})

    transport = httpx.MockTransport(handler)
    return OxenHub(api_key=KEY, transport=transport, sleep=lambda _: None)


def test_a_403_says_the_key_has_no_access() -> None:
    body = b'{"status": "error", "status_message": "forbidden"}'
    with _mock(403, body) as hub, pytest.raises(InputError) as error:
        hub.resolve(IN)
    assert "HTTP 403: forbidden" in str(error.value)
    assert "the key in $OXEN_API_KEY has no access" in str(error.value)
    assert KEY not in str(error.value)


def test_other_errors_carry_the_status_and_the_servers_message() -> None:
    body = (
        b'{"error": {"type": "bad_request", "title": "Bad Request", "detail": "A namespace '
        b'and a repository name must each be a single path segment"}, "status": "error"}'
    )
    with _mock(400, body) as hub, pytest.raises(InputError) as error:
        hub.resolve(IN)
    assert "hub.oxen.ai answered HTTP 400: A namespace and a repository name" in str(error.value)


def test_an_answer_that_is_not_oxen_json() -> None:
    with _mock(200, b"<html>hello</html>", "text/html") as hub, pytest.raises(InputError) as error:
        hub.resolve(IN)
    assert "is https://hub.oxen.ai an Oxen server?" in str(error.value)


def test_a_server_that_echoes_the_key_is_redacted() -> None:
    body = f'{{"status": "error", "status_message": "bad token {KEY}"}}'.encode()
    with _mock(401, body) as hub, pytest.raises(InputError) as error:
        hub.resolve(IN)
    assert KEY not in str(error.value) and "bad token ***" in str(error.value)


def test_the_fake_lists_branches_and_history_in_oxens_shapes(
    fake: FakeOxen, hub: OxenHub, outputs: dict[str, Path]
) -> None:
    hub.ensure_branch(OUT)
    commit_id = hub.commit(OUT, outputs, "answers")
    base = f"http://{fake.host}/api/repos/ox/tickets"
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        branches = http.get(f"{base}/branches").json()
        history = http.get(f"{base}/commits/history/answers", params={"page_size": 1}).json()
    assert {b["name"] for b in branches["branches"]} == {"main", "answers"}
    assert history["status"] == "success" and history["status_message"] == "resource_found"
    assert [c["id"] for c in history["commits"]] == [commit_id]
    assert (history["total_entries"], history["total_pages"], history["page_size"]) == (2, 2, 1)
    assert set(history["commits"][0]) == {
        "id",
        "parent_ids",
        "message",
        "author",
        "email",
        "timestamp",
    }
