"""``avseg run --ray`` on one local Ray instance (2 CPUs) shared by the module: same outputs and failures as the
local run, a killed actor's video redone elsewhere, a killed driver's run resumed, the install hint without Ray."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import avsegcli
from avsegcli.errors import AvsegError
from avsegcli.masks.io import read_masks_dir
from avsegcli.run.local import run_videos
from avsegcli.run.plan import collect_inputs
from media_gen import make_video

# meta.json fields that legitimately differ between two runs of the same video: the wall-clock time it took.
TIMING_FIELDS = {"seconds"}


@pytest.fixture(scope="module")
def env():
    """The environment of the drivers started here: this instance is private to the test, so no token auth."""
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ray_address(env):
    ray = pytest.importorskip("ray")
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ctx.address_info["gcs_address"]
    ray.shutdown()
    if old is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = old


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "a.mp4", seconds=3, fps=25, size=(96, 64), tone_hz=440)
    make_video(root / "b.mkv", seconds=2, fps=30, size=(80, 60), tone_hz=880)
    make_video(root / "sub" / "a.mp4", seconds=2, fps=24, size=(64, 96), tone_hz=300)  # same stem: folder a-2
    make_video(root / "silent.mp4", seconds=2, fps=25, size=(64, 48), audio=False)
    data = (root / "a.mp4").read_bytes()
    (root / "corrupt.mp4").write_bytes(data[: len(data) // 3])
    (root / "empty.mp4").write_bytes(b"")
    return root


def _avseg(*args) -> list[str]:
    return [sys.executable, "-m", "avsegcli", *map(str, args)]


def _meta(folder: Path) -> dict:
    meta = json.loads((folder / "meta.json").read_text())
    return {k: v for k, v in meta.items() if k not in TIMING_FIELDS}


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".partial") or p.name.startswith(".avseg-ray-"))


def test_without_ray_says_how_to_install(videos, tiny_ckpt, tmp_path, env):
    code = ("import sys; sys.modules['ray'] = None; from avsegcli.cli import main; "
            f"sys.argv = ['avseg', 'run', {str(videos / 'a.mp4')!r}, '--out', {str(tmp_path / 'o')!r}, '--ray', 'local']; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --ray needs Ray") and "pip install" in lines[0]
    assert not (tmp_path / "o").exists()


def test_same_outputs_and_failures_as_local_run(ray_address, videos, tiny_ckpt, tmp_path, env):
    paths = collect_inputs([str(videos)])
    local = tmp_path / "local"
    results = run_videos(avsegcli.Predictor(tiny_ckpt, device="cpu", batch_size=8), paths, local, workers=0)
    assert {r.status for r in results} == {"done", "failed"}

    out = tmp_path / "ray"
    proc = subprocess.run(_avseg("run", videos, "--out", out, "--weights", tiny_ckpt, "--ray", ray_address, "--ray-actors", "2", "--json"),
                            capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {r.path}: {r.reason}" for r in results if r.status == "failed"]
    assert len(errors) == 2  # corrupt.mp4 and empty.mp4, once each

    summary = json.loads(proc.stdout)
    keys = ("path", "stem", "status", "reason", "frames", "has_audio", "warnings")
    assert [{k: v[k] for k in keys} for v in summary["videos"]] == [{k: getattr(r, k) for k in keys} for r in results]
    assert summary["counts"] == {"done": 4, "skipped": 0, "failed": 2}
    assert summary["model"]["preset"] == "tiny" and summary["model"]["device"] == "cpu"
    nodes = summary["ray"]["nodes"]
    # the pool asked for 2; an actor counts once it started (the first may finish all six before the second is up)
    assert summary["ray"]["actors"] == 2 and len(nodes) == 1 and 1 <= nodes[0]["actors"] <= 2
    assert (nodes[0]["done"], nodes[0]["failed"], nodes[0]["frames"]) == (4, 2, summary["frames"]) and summary["frames"] == 9
    assert summary["ray"]["lost"] == []

    for r in results:
        if r.status != "done":
            assert not (out / r.stem).exists()
            continue
        mine, theirs = read_masks_dir(out / r.stem), read_masks_dir(local / r.stem)
        assert np.array_equal(mine.masks, theirs.masks) and np.array_equal(mine.frame_indices, theirs.frame_indices)
        assert sorted(p.name for p in (out / r.stem).iterdir()) == sorted(p.name for p in (local / r.stem).iterdir())
        assert _meta(out / r.stem) == _meta(local / r.stem), r.stem
    assert _leftovers(out) == []


class _KillOnce:
    """Progress hook: kills the actor of the first video seen in flight (started, its .partial folder begun, not finished)."""

    def __init__(self, ray, out: Path) -> None:
        self.ray, self.out, self.killed = ray, out, None

    def update(self, snap) -> None:
        for stem, rec in snap["in_flight"].items():
            if self.killed is None and rec["done"] < rec["total"]:
                self.ray.kill(self.ray.get_actor(rec["actor"]))
                self.killed = (stem, rec["actor"], (self.out / f".{stem}.partial").is_dir())


def test_killed_actor_video_redone_elsewhere(ray_address, videos, tiny_ckpt, tmp_path):
    import ray

    from avsegcli.run.options import RunOptions
    from avsegcli.run.ray import RayOptions, run_on_ray

    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(2):
        os.link(videos / "a.mp4", clips / f"clip{i}.mp4")
    paths = collect_inputs([str(clips)])
    hook = _KillOnce(ray, tmp_path / "out")
    opts = RunOptions(out=tmp_path / "out", weights=tiny_ckpt, device="cpu", batch_size=1, fps=8.0,
                      cluster=RayOptions(address=ray_address, actors=1, retries=2, progress_every=0.05))
    run = run_on_ray(paths, opts, progress=hook)
    assert hook.killed is not None, "no video was seen in flight"
    stem, actor, half_done = hook.killed
    assert half_done  # killed while its video was being built
    assert [(r.stem, r.status, r.frames) for r in run.results] == [(f"clip{i}", "done", 24) for i in range(2)]
    assert [(x["stem"], x["actor"]) for x in run.info["lost"]] == [(stem, actor)]
    assert _leftovers(tmp_path / "out") == []

    direct = avsegcli.Predictor(tiny_ckpt, device="cpu").predict_video(clips / f"{stem}.mp4", fps=8.0)
    for r in run.results:
        saved = read_masks_dir(tmp_path / "out" / r.stem)
        assert np.array_equal(saved.masks, direct.masks) and np.array_equal(saved.frame_indices, direct.frame_indices)
        assert saved.meta["num_frames"] == len(saved.meta["frames"]) == 24


def test_rerun_after_driver_killed_skips_finished(ray_address, videos, tiny_ckpt, tmp_path, env):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(6):
        os.link(videos / "a.mp4", many / f"clip{i}.mp4")
    out = tmp_path / "out"
    args = ["run", many, "--out", out, "--weights", tiny_ckpt, "--ray", ray_address, "--ray-actors", "1", "--batch-size", "1", "--fps", "4"]
    proc = subprocess.Popen(_avseg(*args, "--quiet"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 180
    while time.time() < deadline and not list(out.glob("*/meta.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Ray ends the dead driver's actor; wait until nothing more gets published.
    seen, stable_since = None, time.time()
    while time.time() - stable_since < 2.0 and time.time() < deadline:
        now = sorted(p.parent.name for p in out.glob("*/meta.json"))
        if now != seen:
            seen, stable_since = now, time.time()
        time.sleep(0.1)
    done_before = set(seen)
    assert 1 <= len(done_before) < 6
    for folder in out.iterdir():  # every published folder is whole
        if folder.is_dir() and not folder.name.startswith("."):
            assert len(read_masks_dir(folder).masks) == 12

    proc2 = subprocess.run(_avseg(*args, "--json"), capture_output=True, text=True, env=env, timeout=300)
    assert proc2.returncode == 0, proc2.stderr
    summary = json.loads(proc2.stdout)
    status = {v["stem"]: v["status"] for v in summary["videos"]}
    assert {s for s, st in status.items() if st == "skipped"} == done_before
    assert {s for s, st in status.items() if st == "done"} == {f"clip{i}" for i in range(6)} - done_before
    assert _leftovers(out) == []
    assert sum(n["skipped"] for n in summary["ray"]["nodes"]) == len(done_before)


def test_out_not_shared_is_refused(tmp_path):
    """The driver's half of the shared-folder check: a marker an actor wrote elsewhere is an error naming the node."""
    from avsegcli.run.ray_driver import Driver

    info = {"actor": "avseg-x-0", "node_id": "n1", "ip": "10.1.2.3"}
    fake = SimpleNamespace(out=tmp_path)
    with pytest.raises(AvsegError, match="not visible from Ray node 10.1.2.3.*shared folder"):
        Driver._check_marker(fake, info)
    (tmp_path / ".avseg-ray-avseg-x-0.json").write_text(json.dumps({"node_id": "n2", "ip": "10.1.2.3"}))
    with pytest.raises(AvsegError):  # a marker from another node (same path, different disk) is no proof either
        Driver._check_marker(fake, info)
    (tmp_path / ".avseg-ray-avseg-x-0.json").write_text(json.dumps({"node_id": "n1", "ip": "10.1.2.3"}))
    Driver._check_marker(fake, info)
    assert not list(tmp_path.iterdir())  # read and removed


def test_an_exported_backend_runs_on_ray_as_locally(ray_address, videos, tiny_ckpt, tmp_path, env):
    """--backend onnxruntime with --ray: each actor opens the exported file; the masks and meta.json are the local
    run's (the same code around the forward)."""
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    from avsegcli.export.exporter import export_model

    onnx_file = export_model(tiny_ckpt, "onnx", tmp_path / "tiny.onnx").path
    paths = [videos / "a.mp4", videos / "b.mkv"]
    local = tmp_path / "local"
    run_videos(avsegcli.Predictor(onnx_file, backend="onnxruntime", batch_size=8), paths, local, workers=0)
    out = tmp_path / "ray"
    proc = subprocess.run(_avseg("run", *paths, "--out", out, "--weights", onnx_file, "--backend", "onnxruntime",
                                 "--ray", ray_address, "--ray-actors", "1", "--json"), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["model"]["backend"] == "onnxruntime" and summary["counts"]["done"] == 2
    for stem in ("a", "b"):
        assert np.array_equal(read_masks_dir(out / stem).masks, read_masks_dir(local / stem).masks)
        assert _meta(out / stem) == _meta(local / stem)
