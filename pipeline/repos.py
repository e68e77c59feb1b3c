"""Repositories stage: an Oxen repository as a run's input or output.

    oxen://NS:REPO@REV/PATH -> the commit REV names -> the file, cached by that commit
    the written output -> the same bytes as the branch holds? no commit
                       -> else one commit: the output and its provenance, on the branch

The input is fetched once per commit (a rerun at the same commit downloads nothing and the
store's keys stay the same); the output is committed only after it is complete, once. The
provenance (in the commit message and in `<output>.provenance.json` beside it) says how every
answer was made: the config's hash, the model and its parameters, the prompt's hash, the input
commit, the row counts and the cost. The hub's key is read from `oxen.api_key_env` (default:
`model.api_key_env`) and never written anywhere.

With `output.commit`, the output is a file of a local Oxen repository (through Oxen's Python
package, the optional extra, in oxenlocal.py) and is committed the same way, on
`output.branch` or the current branch; the working folder stays on its current branch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .config import Config
from .errors import OutputError
from .oxen import OxenHub
from .oxenaddress import OxenAddress
from .oxenhttp import RETRIES
from .oxenlocal import (
    LocalRepo,
    check_user,
    find_root,
    root_of,
    staged_elsewhere,
    staged_refusal,
    write_file,
)
from .redact import redact_url
from .summary import Summary, usd

log = logging.getLogger(__name__)


CHECK_TIMEOUT_S = 20.0  # each request of the output's check before sending
CHECK_RETRIES = 1


def hub(config: Config, timeout_s: float = 120, retries: int = RETRIES) -> OxenHub:
    """A client for the config's hub, with its key when the variable is set."""
    variable = config.oxen.api_key_env or config.model.api_key_env
    key = os.environ.get(variable) or None
    return OxenHub(
        config.oxen.host,
        config.oxen.scheme,
        key,
        key_env=variable,
        timeout_s=timeout_s,
        retries=retries,
    )


def fetch_input(config: Config) -> tuple[Config, str]:
    """The config reading the input's file at the commit its revision names now; that commit."""
    assert config.input.repo is not None
    address = OxenAddress.parse(config.input.repo)
    with hub(config) as client:
        commit = client.resolve(address)
        path = client.fetch(address, commit, config.input.path.parent)
    log.info("input %s is commit %s", address, commit)
    local = config.input.model_copy(update={"path": path})
    return config.model_copy(update={"input": local}), commit


def provenance(
    config: Config, summary: Summary, input_commit: str | None, address: str | None = None
) -> dict[str, Any]:
    """How the output's answers were made, for the commit and the file beside the output;
    `address` names the input (default: its oxen:// address, else its path)."""
    prompt = json.dumps(
        {"system": config.prompt.system, "template": config.prompt.template}, sort_keys=True
    )
    from .ending import config_hash

    return {
        "config_hash": config_hash(config),
        "model": config.model.name,
        "base_url": redact_url(config.model.base_url),
        "params": dict(config.model.params),
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "input": {
            "address": address or config.input.repo or str(config.input.path),
            "commit": input_commit,
        },
        "rows": {
            "total": summary.rows,
            "answered": summary.answered,
            "from_store": summary.from_store,
            "failed": summary.failed,
            "invalid": summary.invalid,
            "skipped": summary.skipped,
            "pending": summary.pending,
        },
        "tokens": {"prompt": summary.prompt_tokens, "completion": summary.completion_tokens},
        "cost_usd": summary.cost_usd,
    }


def check_output_repo(config: Config) -> None:
    """Before anything is sent, for an oxen:// output: its repository is there (and the key
    can see it) and it names a branch, not a commit. A few short reads, each bounded."""
    assert config.output.repo is not None
    address = OxenAddress.parse(config.output.repo)
    try:
        with hub(config, CHECK_TIMEOUT_S, CHECK_RETRIES) as client:
            client.check_branch(address)
    except OutputError as exc:
        raise OutputError(f"output.path: {exc}") from None


def commit_output(
    config: Config, summary: Summary, output: Path, input_commit: str | None
) -> str | None:
    """Commit the complete output (and its provenance) to the branch; the commit id, or None
    when the branch already holds the same bytes."""
    assert config.output.repo is not None
    address = OxenAddress.parse(config.output.repo)
    facts = provenance(config, summary, input_commit)
    with hub(config) as client:
        client.ensure_branch(address)
        if client.file_at(address) == output.read_bytes():
            log.info("%s already holds this output: no commit", address)
            return None
        record = write_provenance(output, facts)
        files = {address.name: output, f"{address.name}.provenance.json": record}
        commit: str = client.commit(address, files, commit_message(config, facts))
    log.info("committed %s to %s as %s", output.name, address, commit)
    return commit


InputStamp = tuple[int, int]  # a local input's size and modification time (ns)


def check_local(config: Config, output: Path) -> InputStamp | None:
    """Before anything is sent, for output.commit: the output's folder is in a local Oxen
    repository, oxen has a user to commit as, and nothing of the user's own is staged there
    (the output's commit would take it along); the input's stamp, to tell after the run
    whether it changed meanwhile. The repository is not opened in this process yet: oxen
    would keep it locked from every other process for the rest of the run."""
    root = root_of(output)
    check_user()
    others = staged_elsewhere(root, [output, provenance_path(output)])
    if others:
        raise staged_refusal(root, others)
    return _stamp(config.input.path)


def input_commit_local(config: Config, before: InputStamp | None) -> str | None:
    """The commit the local input was read at: the head of its repository's current branch,
    when that holds the input file as it is and the file did not change during the run."""
    path = config.input.path
    root = find_root(path)
    if root is None or before is None or _stamp(path) != before:
        return None
    repo = LocalRepo(root)
    branch = repo.branch
    if branch is None or not repo.committed(path):
        log.info("the input %s differs from its repository's last commit", path)
        return None
    return repo.head(branch)


def _stamp(path: Path) -> InputStamp | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_size, found.st_mtime_ns


def commit_local(
    config: Config, summary: Summary, output: Path, input_commit: str | None
) -> str | None:
    """Commit the complete output (and its provenance) in the local Oxen repository holding
    it, on output.branch or the current branch; the commit id, or None when that branch
    already holds the same bytes."""
    repo = LocalRepo.holding(output)
    record = provenance_path(output)
    data = output.read_bytes()
    inside = config.input.path.resolve().is_relative_to(repo.root)
    address = repo.relative(config.input.path) if inside else None
    with repo.on_branch(config.output.branch, [output, record]) as branch:
        if not output.is_file() or output.read_bytes() != data:
            write_file(output, data)  # on another branch: its copy, if any, is replaced
        if not repo.stage(output):
            log.info("branch %s of %s already holds this output: no commit", branch, repo.root)
            return None
        facts = provenance(config, summary, input_commit, address)
        repo.stage(write_provenance(output, facts))
        commit = repo.commit(commit_message(config, facts))
    log.info("committed %s to branch %s of %s as %s", output.name, branch, repo.root, commit)
    return commit


def provenance_path(output: Path) -> Path:
    """`<output>.provenance.json`, beside the output."""
    return output.with_name(output.name + ".provenance.json")


def write_provenance(output: Path, facts: dict[str, Any]) -> Path:
    """Write the provenance beside the output, whole or not at all; its path."""
    record = provenance_path(output)
    write_file(record, (json.dumps(facts, indent=2) + "\n").encode())
    return record


def commit_message(config: Config, facts: dict[str, Any]) -> str:
    """output.commit_message (or a default) on the first line, then the provenance."""
    first = config.output.commit_message or f"pipeline: answers of {config.model.name}"
    return f"{first}\n\n{_describe(facts)}"


def _describe(facts: dict[str, Any]) -> str:
    rows, source = facts["rows"], facts["input"]
    cost = facts["cost_usd"]
    return "\n".join(
        [
            f"model: {facts['model']} at {facts['base_url']}, params {json.dumps(facts['params'])}",
            f"prompt sha256: {facts['prompt_sha256']}; config hash: {facts['config_hash']}",
            f"input: {source['address']}"
            + (f" at commit {source['commit']}" if source["commit"] else " (not read at a commit)"),
            f"rows: {rows['total']} ({rows['answered']} answered, {rows['from_store']} from "
            f"the store, {rows['failed']} failed, {rows['invalid']} invalid, "
            f"{rows['pending']} pending)",
            f"tokens: {facts['tokens']['prompt']} prompt, {facts['tokens']['completion']} "
            f"completion; cost: {'unknown' if cost is None else usd(cost)}",
        ]
    )
