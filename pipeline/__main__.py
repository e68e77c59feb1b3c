"""`python -m pipeline` runs the CLI."""

import sys

from .cli import console

sys.exit(console())
