"""The README's quick start on a fresh checkout: the bundled default model and the bundled sample.

``avseg run samples/demo.mp4 --out out/ --render`` with no ``--weights`` must segment the sample's sounding
object (IoU with ``samples/demo_masks`` >= 0.7 over the whole clip) and draw the overlay; ``avseg eval`` with
no ``--weights`` must score a freshly generated held-out synthetic split well above chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avsegcli.masks.io import read_masks_dir
from avsegcli.media import benchmark_indices, probe
from avsegcli.inference.predictor import DEFAULT_WEIGHTS_NAME, REPO_WEIGHTS
from avsegcli.weights import read_checkpoint
from conftest import REPO, run_cli

SAMPLE = REPO / "samples" / "demo.mp4"
SAMPLE_GT = REPO / "samples" / "demo_masks"
BUNDLED = REPO_WEIGHTS / DEFAULT_WEIGHTS_NAME


def test_bundled_files_are_there_and_small():
    assert BUNDLED.is_file(), f"the bundled default model is missing: {BUNDLED}"
    assert BUNDLED.stat().st_size <= 25 * 2**20
    assert SAMPLE.is_file() and SAMPLE.stat().st_size <= 3 * 2**20
    assert sorted(p.name for p in SAMPLE_GT.glob("*.png")) == [f"demo_{i}.png" for i in range(1, 6)]
    _, report = read_checkpoint(BUNDLED)
    config = report.config
    assert config["name"] == "synth" and config["task"] == "s4" and config["head"]["num_classes"] == 1


def test_quick_start_run_and_render(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", SAMPLE.relative_to(REPO), "--out", out, "--render", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    masks = read_masks_dir(out / "demo")
    info = probe(SAMPLE)
    # one mask per second, at the benchmark's frame of each second (the frame the ground truth was drawn at)
    assert list(masks.frame_indices) == list(benchmark_indices(info.num_frames, info.fps))
    gt = np.stack([np.asarray(Image.open(SAMPLE_GT / f"demo_{i}.png").convert("L")) > 127 for i in range(1, 6)])
    pred = masks.masks.astype(bool)
    assert pred.shape == gt.shape
    inter, union = np.logical_and(pred, gt).sum(), np.logical_or(pred, gt).sum()
    iou = inter / union
    print(f"quick start: IoU with the sample's ground truth {iou:.3f} ({inter} / {union} pixels over 5 frames)")
    assert iou >= 0.7
    assert (out / "demo" / "overlay.mp4").stat().st_size > 10_000
    meta = json.loads((out / "demo" / "meta.json").read_text())
    assert Path(meta["model"]["weights"]).name == DEFAULT_WEIGHTS_NAME


def test_eval_default_model_on_fresh_held_out_split(tmp_path):
    """A split from a seed used nowhere else (not training, not the README figures, not the sample)."""
    data = tmp_path / "synth"
    proc = run_cli("synth", "--task", "s4", "--out", data, "--splits", "test", "--split-videos", "test=40",
                   "--seed", "11", "--no-mp4", "--quiet")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("eval", "--task", "s4", "--data", data, "--json", "-", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert Path(res["model"]["weights"]).name == DEFAULT_WEIGHTS_NAME
    official = res["overall"]["official"]
    print(f"default model on 40 fresh held-out clips: mIoU {official['miou']:.3f}, F {official['fscore']:.3f}")
    assert official["miou"] >= 0.65
