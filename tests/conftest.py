"""Shared test setup: make helpers in tests/ (e.g. `fake_server`) importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
