"""Fixtures for the training tests: the shared definitions module on the import path."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# Helper modules, not tests (the doctest collector would import them).
collect_ignore = ["training_defs.py", "training_cli_app.py"]
