"""Shared test setup: make helpers in tests/ (e.g. `fake_server`) importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from hypothesis import settings

# The same examples on every run, and no deadline: CI machines are shared and slow at times.
settings.register_profile("project", derandomize=True, deadline=None)
settings.load_profile("project")
