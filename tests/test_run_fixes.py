"""Two faults of ``avseg run`` fixed with the structure step (issue 22): a FIFO named on the command line hung the
whole run, and a failed or interrupted run left lock files in ``--out``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def test_an_all_failed_run_leaves_no_bookkeeping_in_out(tmp_path, tiny_ckpt):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    out = tmp_path / "out"
    proc = run_cli("run", bad, tmp_path / "missing.mp4", "--weights", tiny_ckpt, "--out", out, "--device", "cpu", "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert [p for p in _leftovers(out) if p != "summary.json"] == [], _leftovers(out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_run_leaves_no_lock_files(tmp_path, tiny_ckpt, sig):
    """SIGINT: the run releases and removes its locks. SIGKILL cannot be caught: a lock file may stay, and the next
    run into the same --out (which can take it, as no process holds it) removes it."""
    video = make_video(tmp_path / "long.mp4", seconds=30, fps=5)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "avsegcli", "run", str(video), "--weights", str(tiny_ckpt), "--out", str(out),
           "--device", "cpu", "--quiet", "--fps", "5", "--batch-size", "1", "--workers", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(out.glob(".long.partial/*.png")) and time.monotonic() < deadline:  # busy: a mask written
        time.sleep(0.2)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    left = [p for p in _leftovers(out) if not p.startswith(".long.partial")]  # the resume state of the video
    if sig == signal.SIGINT:
        assert not any("lock" in p for p in left), left
    again = run_cli("run", video, "--weights", tiny_ckpt, "--out", out, "--device", "cpu", "--quiet", "--fps", "1")
    assert again.returncode == 0, again.stderr
    assert not any("lock" in p or "partial" in p for p in _leftovers(out)), _leftovers(out)
