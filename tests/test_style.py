"""The suite enforces the linter: `ruff check t2s tests` (configured in pyproject.toml) must be clean."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_is_clean():
    try:
        import ruff  # noqa: F401 (only whether it is installed)
    except ImportError:
        pytest.fail("ruff is not installed: pip install ruff (the suite runs `python -m ruff check t2s tests`)")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "t2s", "tests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ruff check t2s tests is not clean:\n{proc.stdout}{proc.stderr}"
