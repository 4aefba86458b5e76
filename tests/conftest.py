"""Shared test fixtures: where the authors' reference numbers live, CLI calls, the tiny checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (``-n 2`` in pyproject.toml) each worker is one of two busy processes on the 2-core machine: one
# intra-op thread per worker and per subprocess it starts (``run_cli`` inherits the environment). Two OpenMP teams
# spinning on two cores starve each other: a 64 px s4-pvt2 forward took 9.3 s with 2 threads beside another busy
# process and 0.5 s with 1. Set before torch is imported (libgomp reads it at load); ``-n 0`` keeps torch's default.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The ``tiny`` preset with seed-0 random weights, saved once per session (``avseg run`` tests use it)."""
    import torch

    import avsegcli
    from avsegcli.weights import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(avsegcli.build_model("tiny"), path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the tiny model is
    all small ops, and on a shared CPU two spinning OpenMP threads make a step ten times slower. Restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (the shared/ folder beside the checkout)")
    return REFERENCE


def run_cli(*args: str, timeout: float = 600, cwd: str | Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``avseg ARGS`` as a user would (a separate process), capturing output."""
    return subprocess.run([sys.executable, "-m", "avsegcli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def legacy_flags() -> dict[str, object]:
    """torch's legacy TF32 switches and the float32 matmul precision, as a caller reads them (raises
    RuntimeError when the process mixed the legacy and new APIs): what no avseg command may change."""
    import torch

    return {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
