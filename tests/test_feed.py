"""The feed of ``avseg run`` / ``avseg eval`` on the CPU: semantic masks over all classes, uint8 frame transport equal
to the float path, the post-processing thread pool and padded batches, worker defaults, the torchrun device rule, and
the eval forward batch independent of the metric batch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import avsegcli
from avsegcli import media
from avsegcli.build import build_model, preset
from avsegcli.data import write_fake_avsbench
from avsegcli.errors import AvsegError
from avsegcli.eval.evaluate import evaluate
from avsegcli.inference.feed import default_workers, device_frames, logits_to_masks, semantic_masks, stage
from avsegcli.masks.io import mask_stats, read_masks_dir
from avsegcli.media.preprocess import normalize, preprocess_frames, resize_frames
from avsegcli.run.local import run_videos
from avsegcli.train import dist
from avsegcli.weights import save_checkpoint
from conftest import REPO
from media_gen import make_video


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model modules: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("feed")
    torch.manual_seed(0)
    binary = save_checkpoint(build_model("tiny"), root / "binary.safetensors")
    semantic = save_checkpoint(build_model(preset("tiny", task="avss", head={"num_classes": 71})), root / "sem.safetensors")
    return {"binary": binary, "semantic": semantic}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedvid")
    a, b = root / "a.mp4", root / "b.mp4"
    make_video(a, seconds=5, fps=10, size=(96, 64), tone_hz=440)
    make_video(b, seconds=3, fps=10, size=(80, 60), tone_hz=880)
    return [a, b]


# ------------------------------------------------------------------------------------------ masks from logits

def test_semantic_counter_example_of_the_issue():
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0], [9.0, 9.0]]).view(1, 3, 1, 2)
    masks, _ = logits_to_masks(logits, (1, 8), semantic=True)
    assert masks.dtype == np.uint8
    assert masks[0, 0].tolist() == [0, 0, 2, 2, 2, 2, 1, 1]  # class 2 never wins at 1x2 but wins in the middle


@pytest.mark.parametrize("shape,size,budget", [
    ((3, 71, 16, 16), (37, 53), 1 << 28),   # all classes at once
    ((2, 71, 16, 16), (40, 30), 2 * 40 * 30 * 4 * 7),  # chunks of 7 classes (the last one short)
    ((2, 5, 8, 8), (4, 4), 1),               # one class at a time, downsampling
    ((1, 71, 24, 24), (120, 160), 1 << 20),
])
def test_semantic_masks_equal_the_all_class_argmax(shape, size, budget):
    g = torch.Generator().manual_seed(sum(shape) + size[0])
    logits = torch.randn(shape, generator=g) * 3
    ref = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(semantic_masks(logits, size, budget), ref)
    masks, probs = logits_to_masks(logits, size, semantic=True, with_probs=True, budget_bytes=budget)
    assert np.array_equal(masks, ref.to(torch.uint8).numpy())
    assert np.array_equal(probs, logits.softmax(1).numpy())


def test_semantic_ties_go_to_the_lowest_class_across_chunks():
    logits = torch.zeros(1, 6, 2, 2)
    logits[0, 4] = 1.0
    logits[0, 5] = 1.0  # same value as class 4, in a later chunk
    assert semantic_masks(logits, (3, 3), budget_bytes=3 * 3 * 4 * 2).unique().tolist() == [4]


def test_binary_masks_are_the_thresholded_bilinear_logits():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 1, 16, 16, generator=g)
    up = F.interpolate(logits, size=(45, 71), mode="bilinear", align_corners=False)[:, 0]
    masks, probs = logits_to_masks(logits, (45, 71), semantic=False, with_probs=True)
    assert masks.dtype == np.uint8 and masks.shape == (4, 45, 71)
    assert np.array_equal(masks, (up > 0).to(torch.uint8).numpy())
    assert np.array_equal(probs, up.sigmoid().numpy())


def test_mask_stats_by_bincount():
    m = np.array([[0, 3, 3, 70], [5, 0, 0, 0]], np.uint8)
    assert mask_stats(m) == ([3, 5, 70], 0.5)
    assert mask_stats(np.zeros((3, 4), np.uint8)) == ([], 0.0)
    assert mask_stats(np.ones((2, 2), np.uint8)) == ([1], 1.0)


# ------------------------------------------------------------------------------------------ uint8 transport

@pytest.mark.parametrize("size,via", [(512, 224), (224, None), (64, None), (96, None)])
def test_uint8_transport_normalised_later_equals_the_float_path(size, via):
    raw = np.random.default_rng(size).integers(0, 256, (2, 72, 100, 3), dtype=np.uint8)
    small = resize_frames(raw, size, via)
    assert small.dtype == torch.uint8 and small.shape == (2, size, size, 3)
    assert torch.equal(device_frames(small, torch.device("cpu")), preprocess_frames(raw, size, via))  # bit for bit


def test_uint8_batches_and_logits_equal_the_float_path(ckpts, videos):
    pred = avsegcli.Predictor(ckpts["binary"], device="cpu", batch_size=4)
    kw = dict(fps=1, batch_size=4, image_size=pred.image_size, via=pred.via)
    for fb, ub in zip(media.iter_batches(videos[0], **kw), media.iter_batches(videos[0], normalized=False, **kw)):
        assert ub.frames.dtype == torch.uint8 and ub.frames.shape[1:] == (pred.image_size, pred.image_size, 3)
        assert torch.equal(normalize(ub.frames), fb.frames)
        a = pred.logits(fb.frames, fb.chunk_log_mel, fb.chunk_rows)
        b = pred.logits(stage(list(ub.frames.numpy()), pred.device), ub.chunk_log_mel, ub.chunk_rows)
        assert torch.equal(a, b)


def test_stage_pads_with_the_last_row_and_pins_only_for_cuda():
    arrays = [np.full((2, 3), i, np.uint8) for i in range(3)]
    t = stage(arrays, torch.device("cpu"), pad_to=5)
    assert t.shape == (5, 2, 3) and t.dtype == torch.uint8 and not t.is_pinned()
    assert [int(t[i, 0, 0]) for i in range(5)] == [0, 1, 2, 2, 2]
    assert stage(arrays, torch.device("cpu")).shape == (3, 2, 3)


# ------------------------------------------------------------------------------------------ the run

@pytest.mark.parametrize("kind", ["binary", "semantic"])
def test_run_with_thread_pool_and_padding_equals_predict_video(kind, ckpts, videos, tmp_path):
    """Two videos of different sizes share batches of 3 (the post-processing groups them by size), 3 writer threads,
    padded batches; masks and meta stats equal Predictor.predict_video's (a batch-at-a-time float-path reference)."""
    pred = avsegcli.Predictor(ckpts[kind], device="cpu", batch_size=3)
    res = run_videos(pred, videos, tmp_path / "o", fmt="all", workers=0, pad_to_batch=True, post_threads=3)
    assert [r.status for r in res] == ["done", "done"]
    for v in videos:
        ref = pred.predict_video(v)
        got = read_masks_dir(tmp_path / "o" / v.stem)
        assert got.masks.dtype == np.uint8 and np.array_equal(got.masks, ref.masks)
        assert list(got.frame_indices) == list(ref.frame_indices)
        with np.load(tmp_path / "o" / v.stem / "masks.npz") as z:
            assert np.array_equal(z["masks"], ref.masks)
        meta = json.loads((tmp_path / "o" / v.stem / "meta.json").read_text())
        for rec, m in zip(meta["frames"], ref.masks):
            assert rec["classes"] == sorted(int(c) for c in np.unique(m) if c)
            assert rec["sounding_area"] == round(float((m > 0).mean()), 6)


def test_default_workers_from_the_cores():
    assert default_workers("cpu", cores=2) == 1  # the model keeps its threads
    assert default_workers("cpu", cores=16) == 4
    assert default_workers("cuda", cores=16) == 15
    assert default_workers("cuda", cores=16, jobs=3) == 3
    assert default_workers("cuda", cores=1) == 1


# ------------------------------------------------------------------------------------------ torchrun device rule

def test_torchrun_device_rule(monkeypatch):
    with pytest.raises(AvsegError, match="LOCAL_RANK"):
        dist.pick_device("cuda:0", 1, world=2)  # a usage error whether or not CUDA exists
    assert dist.pick_device("cpu", 1, world=2) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dist.pick_device("cuda", 1, world=2) == torch.device("cuda:1")
    assert dist.pick_device("auto", 1, world=2) == torch.device("cuda:1")
    assert dist.pick_device("cuda:1", 0, world=1) == torch.device("cuda:1")  # one process: the user's choice
    with pytest.raises(AvsegError, match="2 CUDA device"):
        dist.pick_device("cuda", 3, world=4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(AvsegError, match="every rank would use the same GPU"):
        dist.setup("cuda:0")  # refused before any process group is started


def test_train_cli_explicit_index_under_torchrun_exits_2(tmp_path):
    data = write_fake_avsbench(tmp_path / "d", "s4", videos_per_split=1, seed=0, image_hw=(32, 32))
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "avsegcli", "train", "--task", "s4", "--data", str(data), "--out",
                           str(tmp_path / "run"), "--preset", "tiny", "--device", "cuda:0"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "LOCAL_RANK" in proc.stderr


# ------------------------------------------------------------------------------------------ eval forward batch

@pytest.mark.parametrize("task", ["s4", "avss"])
def test_eval_forward_batch_does_not_change_the_numbers(task, ckpts, tmp_path):
    data = write_fake_avsbench(tmp_path / "d", task, videos_per_split=2 if task == "s4" else 1, seed=5, image_hw=(32, 32))
    torch.manual_seed(1)
    # 64 px: the tiny model cannot run a lone frame at 32 px (GroupNorm over a 1x1 map), and forward chunks may be 1
    cfg = preset("tiny", image_size=64, **({"task": "avss", "head": {"num_classes": 71}} if task == "avss" else {}))
    # fp32: batch-size independence is a float32 promise (bf16 GEMM kernels differ with the row count)
    pred = avsegcli.Predictor(save_checkpoint(build_model(cfg), tmp_path / "m.safetensors"), device="cpu", precision="fp32")
    base = evaluate(task, data, "test", predictor=pred, batch_clips=1, workers=0)
    for fb in (3, 25):
        res = evaluate(task, data, "test", predictor=pred, batch_clips=1, workers=0, forward_batch=fb)
        assert res["counts"] == base["counts"]
        for p in base["overall"]:  # on the CPU the model is batch-size independent: every number is exact
            assert res["overall"][p] == base["overall"][p], (fb, p)
    with pytest.raises(AvsegError, match="forward batch"):
        evaluate(task, data, "test", predictor=pred, forward_batch=0, workers=0)
