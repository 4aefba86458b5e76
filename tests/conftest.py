"""Shared test fixtures: where the authors' reference numbers live, and in-process CLI calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (the shared/ folder beside the checkout)")
    return REFERENCE


def run_cli(*args: str, timeout: float = 600, cwd: str | Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``avseg ARGS`` as a user would (a separate process), capturing output."""
    return subprocess.run([sys.executable, "-m", "avsegcli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)
