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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .config import Config
from .oxen import OxenAddress, OxenHub
from .summary import Summary

log = logging.getLogger(__name__)


def hub(config: Config) -> OxenHub:
    """A client for the config's hub, with its key when the variable is set."""
    variable = config.oxen.api_key_env or config.model.api_key_env
    key = os.environ.get(variable) or None
    return OxenHub(config.oxen.host, config.oxen.scheme, key, key_env=variable)


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


def provenance(config: Config, summary: Summary, input_commit: str | None) -> dict[str, Any]:
    """How the output's answers were made, for the commit and the file beside the output."""
    prompt = json.dumps(
        {"system": config.prompt.system, "template": config.prompt.template}, sort_keys=True
    )
    from .runner import config_hash

    return {
        "config_hash": config_hash(config),
        "model": config.model.name,
        "base_url": config.model.base_url,
        "params": dict(config.model.params),
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "input": {"address": config.input.repo, "commit": input_commit},
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
        record = output.with_name(output.name + ".provenance.json")
        record.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
        first = config.output.commit_message or f"pipeline: answers of {config.model.name}"
        message = f"{first}\n\n{_describe(facts)}"
        files = {address.name: output, f"{address.name}.provenance.json": record}
        commit: str = client.commit(address, files, message)
    log.info("committed %s to %s as %s", output.name, address, commit)
    return commit


def _describe(facts: dict[str, Any]) -> str:
    rows, source = facts["rows"], facts["input"]
    cost = facts["cost_usd"]
    return "\n".join(
        [
            f"model: {facts['model']} at {facts['base_url']}, params {json.dumps(facts['params'])}",
            f"prompt sha256: {facts['prompt_sha256']}; config hash: {facts['config_hash']}",
            f"input: {source['address']} at commit {source['commit']}",
            f"rows: {rows['total']} ({rows['answered']} answered, {rows['from_store']} from "
            f"the store, {rows['failed']} failed, {rows['invalid']} invalid, "
            f"{rows['pending']} pending)",
            f"tokens: {facts['tokens']['prompt']} prompt, {facts['tokens']['completion']} "
            f"completion; cost: {'unknown' if cost is None else f'${cost:.4f}'}",
        ]
    )
