"""Shared pytest configuration: fixture modules loaded as plugins."""

import sys
from pathlib import Path

# `pytest` (not only `python -m pytest`) must find the `tests.fixtures` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

pytest_plugins = ["tests.fixtures.real_data", "tests.fixtures.services"]
