"""Outputs are written to a temporary name and renamed when complete: a process killed while writing a checkpoint,
``state.pt`` or an overlay video leaves the previous file (or no file) under the final name, never a torn one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import avsegcli
from avsegcli.weights import save_checkpoint
from conftest import REPO, run_cli
from media_gen import make_video

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

# Replaces a writer so that it writes half of its real output to the file it was given, then the process is
# SIGKILLed: what a kill in the middle of a write leaves on disk.
TEAR = textwrap.dedent("""
    import os, signal

    def tear(real):
        def write(obj, filename, *args, **kwargs):
            real(obj, filename, *args, **kwargs)
            data = open(filename, "rb").read()
            open(filename, "wb").write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return write
""")


def _killed(script: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", TEAR + textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=ONE_THREAD)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return proc


def test_checkpoint_killed_while_saving_keeps_the_old_one(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(avsegcli.build_model("tiny"), tmp_path / "last.safetensors")
    before = path.read_bytes()
    _killed(f"""
        import torch, safetensors.torch as st
        import avsegcli
        from avsegcli.weights import save_checkpoint
        st.save_file = tear(st.save_file)
        torch.manual_seed(1)
        save_checkpoint(avsegcli.build_model("tiny"), {str(path)!r})
    """)
    assert path.read_bytes() == before  # the old checkpoint, intact and loadable
    assert load_file(str(path)).keys()
    avsegcli.load_model(path)
    # the next save replaces the torn temporary file
    torch.manual_seed(1)
    save_checkpoint(avsegcli.build_model("tiny"), path)
    assert path.read_bytes() != before and [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_state_killed_while_saving_keeps_the_old_one(tmp_path):
    from avsegcli.train.state import load_state, save_state

    (tmp_path / "last.safetensors").write_bytes(b"x")  # load_state wants both files present
    save_state(tmp_path, {"step": 3, "epoch": 1, "weights": torch.arange(10.0)})
    before = (tmp_path / "state.pt").read_bytes()
    _killed(f"""
        import torch
        from pathlib import Path
        from avsegcli.train.state import save_state
        torch.save = tear(torch.save)
        save_state(Path({str(tmp_path)!r}), {{"step": 6, "epoch": 2, "weights": torch.arange(1000.0)}})
    """)
    assert (tmp_path / "state.pt").read_bytes() == before
    st = load_state(tmp_path)
    assert st["step"] == 3 and torch.equal(st["weights"], torch.arange(10.0))


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> tuple[Path, Path]:
    """An 8 s video and a mask folder for it (a square per second, written as avseg run writes them)."""
    import numpy as np

    from avsegcli import media
    from avsegcli.masks.io import VideoMaskWriter

    root = tmp_path_factory.mktemp("render_kill")
    video = make_video(root / "v.mp4", seconds=8, fps=25, size=(320, 240), tone_hz=440)
    idx, ts = media.sample_times(media.probe(video), 1)
    writer = VideoMaskWriter(root / "masks", "v")
    for k, (i, t) in enumerate(zip(idx, ts)):
        mask = np.zeros((240, 320), np.uint8)
        mask[40:200, 20 + 30 * k:80 + 30 * k] = 1
        writer.add(frame_index=int(i), timestamp=float(t), chunk=int(t), mask=mask)
    return video, writer.finish({"source": video.name, "size": [240, 320], "fps": 25})


@pytest.mark.parametrize("kind", ["mp4", "frames"])
def test_render_killed_midway_leaves_no_output(kind, long_video, tmp_path):
    video, masks = long_video
    target = tmp_path / ("overlay.mp4" if kind == "mp4" else "frames")
    args = ["-o", str(tmp_path / "overlay.mp4")] if kind == "mp4" else ["-o", str(tmp_path / "x.mp4"), "--frames", str(target)]
    cmd = [sys.executable, "-m", "avsegcli", "render", str(video), str(masks), *args, "--side-by-side"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = target.with_name(f".{target.stem}.partial{target.suffix}")
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            written = [p for p in (partial, target) if p.exists()]  # wherever the writer puts it
            if any(p.is_file() and p.stat().st_size > 0 or p.is_dir() and len(list(p.iterdir())) > 3 for p in written):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "render finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)  # an orphaned ffmpeg sees the pipe close and exits
    assert partial.exists() and not target.exists()  # half an overlay only under the hidden temporary name

    proc = run_cli("render", video, masks, *args, "--side-by-side", cwd=REPO, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert target.exists() and not partial.exists()
    if kind == "frames":
        assert len(list(target.glob("*.png"))) == 200
    else:
        import decord

        assert len(decord.VideoReader(str(target))) == 200
