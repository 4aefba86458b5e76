"""Faults of ``avseg run`` fixed with the structure step (issue 22): a FIFO named on the command line hung the
whole run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import run_cli
from media_gen import make_video


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("good") / "good.mp4", seconds=2, fps=5)


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_a_fifo_argument_fails_alone_in_seconds(tmp_path, good, tiny_ckpt):
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = run_cli("run", fifo, good, "--weights", tiny_ckpt, "--out", out, "--device", "cpu", "--quiet", timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "fifo.mp4" in lines[0] and "FIFO" in lines[0], proc.stderr
    assert (out / "good" / "meta.json").is_file() and not (out / "fifo").exists()
    assert took < 60, took
