"""Shared test setup: make helpers in tests/ (e.g. `fake_server`) importable; a fake server
and an httpx client for it, for tests that talk to the fake directly."""

import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from hypothesis import settings

# The same examples on every run, and no deadline: CI machines are shared and slow at times.
settings.register_profile("project", derandomize=True, deadline=None)
settings.load_profile("project")


import httpx  # noqa: E402
import pytest  # noqa: E402
from fake_server import FakeServer  # noqa: E402


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A default fake server (a test module may define its own `server`)."""
    with FakeServer() as fake:
        yield fake


@pytest.fixture
def client(server: FakeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=5) as http:
        yield http
