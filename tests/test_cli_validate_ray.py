"""`pipeline validate` of a config with run.engine ray: Ray must be installed, and an explicit
cluster address must accept connections; no Ray is started or joined."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from e2e import ROOT, run_cli, write_config
from fake_server import FakeServer
from test_cli_validate import closed_port, write_table

ENV = {"TEST_KEY": "ray-test-key-0123456789"}


def test_validate_without_ray_installed_says_what_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    write_table(tmp_path)
    with FakeServer() as server:
        config = write_config(tmp_path, server.base_url, run={"engine": "ray"})
        env = {**ENV, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"}
        checked = run_cli("validate", str(config), env=env)
        local = run_cli("validate", str(config), "--set", "run.engine=local", env=env)
    assert checked.code == 2, checked.stderr
    assert checked.stdout == ""
    lines = checked.stderr.strip().splitlines()
    assert len(lines) == 1 and "run.engine: ray needs Ray" in lines[0], checked.stderr
    assert "pip install 'pipeline[ray]'" in lines[0]
    assert local.code == 0, local.stderr  # the local engine needs no Ray


def test_validate_checks_the_cluster_address_without_joining_it(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="needs the `ray` extra")
    write_table(tmp_path)
    closed = f"127.0.0.1:{closed_port()}"
    with FakeServer() as server, socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen(4)
        listening = f"127.0.0.1:{head.getsockname()[1]}"
        config = write_config(tmp_path, server.base_url, run={"engine": "ray"})
        refused = run_cli("validate", str(config), "--set", f"run.ray.address={closed}", env=ENV)
        from_env = run_cli("validate", str(config), env={**ENV, "RAY_ADDRESS": closed})
        good = run_cli("validate", str(config), "--set", f"run.ray.address={listening}", env=ENV)
        local = run_cli("validate", str(config), env=ENV)
        assert server.count == 0
    assert refused.code == 2, refused.stderr
    assert refused.stdout == ""
    assert f"error: run.ray.address: cannot reach the Ray cluster at {closed}" in refused.stderr
    assert from_env.code == 2, from_env.stderr
    assert f"error: RAY_ADDRESS: cannot reach the Ray cluster at {closed}" in from_env.stderr
    assert good.code == 0, good.stderr
    assert f"ray: {listening} accepts connections" in good.stdout
    assert local.code == 0, local.stderr
    assert "ray: a run starts a local Ray with 4 workers" in local.stdout
