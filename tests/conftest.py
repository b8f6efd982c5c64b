"""Shared pytest configuration: fixture modules loaded as plugins."""

import os
import sys
from pathlib import Path

# `pytest` (not only `python -m pytest`) must find the `tests.fixtures` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

pytest_plugins = ["tests.fixtures.real_data", "tests.fixtures.services"]

# Runs the tests submit are remembered in a state directory of the session's own, never the user's
# (~/.local/state/cpt-launch); subprocesses inherit it.
if "CPT_STATE_DIR" not in os.environ:
    import tempfile

    os.environ["CPT_STATE_DIR"] = tempfile.mkdtemp(prefix="cpt-state-")
