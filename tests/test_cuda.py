"""GPU checks (``pytest -m cuda``): skipped, with the reason, on machines without CUDA.

Exactness (bit-identical resume, batch-size independence, masks equal across batch sizes) is a CPU promise; on a GPU
cuDNN's algorithm choice and atomic adds in the backward of grid_sample/interpolate change the last bits, so these
tests compare with stated tolerances instead. Errors are relative: ``mean|a - b| / mean|a|`` (mean) and
``max|a - b| / max|a|`` (max) of float32 logits, against the CPU in fp32 as the reference:

    precision   mean      max       binary mask pixels agreeing (where |logit| > 1 % of the largest)
    fp32        1e-4      1e-3      99.9 %
    tf32        5e-3      5e-2      99 %
    fp16        1e-2      1e-1      99 %
    bf16        5e-2      3e-1      97 %
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import avsegcli
from avsegcli.build import build_model
from avsegcli.data import write_fake_avsbench
from avsegcli.engine import train
from avsegcli.feed import device_frames, stage
from avsegcli.maskio import read_masks_dir
from avsegcli.media.preprocess import preprocess_frames, resize_frames
from avsegcli.predictor import PRECISIONS
from avsegcli.runner import run_videos
from avsegcli.train import TrainConfig
from avsegcli.train.state import read_log
from avsegcli.weights import save_checkpoint
from media_gen import make_video

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `pytest -m cuda` on a GPU machine)"),
]

TOL = {"fp32": (1e-4, 1e-3, 0.999), "tf32": (5e-3, 5e-2, 0.99), "fp16": (1e-2, 1e-1, 0.99), "bf16": (5e-2, 3e-1, 0.97)}
MODES = [p for p in ("fp32", "tf32", "bf16", "fp16") if p in PRECISIONS]
SIZE = 32


def rel_errors(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    ref, got = ref.double().cpu(), got.double().cpu()
    d = (ref - got).abs()
    return float(d.mean() / ref.abs().mean().clamp_min(1e-12)), float(d.max() / ref.abs().max().clamp_min(1e-12))


def sign_agreement(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Share of pixels with the same ``logit > 0`` decision, among those not within 1 % of the largest of zero."""
    ref, got = ref.float().cpu(), got.float().cpu()
    keep = ref.abs() > 0.01 * ref.abs().max()
    return float(((ref > 0) == (got > 0))[keep].float().mean())


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("cudavid")
    paths = [root / "a.mp4", root / "b.mp4"]
    make_video(paths[0], seconds=6, fps=10, size=(160, 120), tone_hz=440)
    make_video(paths[1], seconds=4, fps=10, size=(128, 96), tone_hz=880)
    return paths


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("cudackpt")
    torch.manual_seed(0)
    tiny = save_checkpoint(build_model("tiny"), root / "tiny.safetensors")
    torch.manual_seed(0)
    s4 = save_checkpoint(build_model("s4-r50"), root / "s4-r50.safetensors")
    return {"tiny": tiny, "s4-r50": s4}


def _inputs(pred, video):
    from avsegcli import media

    b = next(iter(media.iter_batches(video, fps=1, batch_size=4, image_size=pred.image_size, via=pred.via)))
    return b.frames, b.chunk_log_mel, b.chunk_rows


@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("name,batch", [("tiny", 4), ("s4-r50", 1)])
def test_cuda_logits_match_the_cpu(name, batch, precision, ckpt, video):
    """Same checkpoint, same frames: CUDA logits (``precision``) vs the CPU in fp32; s4-r50 at 512, batch 1."""
    cpu = avsegcli.Predictor(ckpt[name], device="cpu", precision="fp32", batch_size=batch)
    gpu = avsegcli.Predictor(ckpt[name], device="cuda", precision=precision, batch_size=batch)
    frames, log_mel, rows = _inputs(cpu, video[0])
    frames, rows = frames[:batch], rows[:batch]
    ref = cpu.logits(frames, log_mel, rows)
    got = gpu.logits(frames, log_mel, rows)
    assert got.dtype == torch.float32 and got.device.type == "cuda" and got.shape == ref.shape
    assert torch.isfinite(got).all()
    mean_tol, max_tol, agree = TOL[precision]
    mean_err, max_err = rel_errors(ref, got)
    assert mean_err <= mean_tol and max_err <= max_tol, (name, precision, mean_err, max_err)
    assert sign_agreement(ref, got) >= agree


def test_uint8_transport_on_cuda_matches_the_host_normalisation():
    """On CUDA ``x / 255`` by a scalar is computed as ``x * (1/255)``: within a few ulp of the host's float path."""
    raw = np.random.default_rng(0).integers(0, 256, (3, 90, 120, 3), dtype=np.uint8)
    small = resize_frames(raw, 512, 224)
    host = preprocess_frames(raw, 512, 224)
    dev = device_frames(stage(list(small.numpy()), torch.device("cuda")), torch.device("cuda"))
    assert dev.device.type == "cuda" and dev.dtype == torch.float32
    assert float((dev.cpu() - host).abs().max()) <= 1e-6  # |values| < 2.7: 1e-6 is about 4 ulp


def test_pinned_staging_on_cuda():
    t = stage([np.zeros((4, 4, 3), np.uint8)] * 3, torch.device("cuda"), pad_to=8)
    assert t.is_pinned() and t.shape[0] == 8


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_predictor_and_run_videos_on_cuda(precision, ckpt, video, tmp_path):
    """run_videos on CUDA (2 decode workers, pinned staging, side-stream copies, writer threads) gives the masks of
    Predictor.predict_video on CUDA (other batch compositions: agreement, not identity) and agrees with the CPU."""
    gpu = avsegcli.Predictor(ckpt["tiny"], device="cuda", precision=precision, batch_size=8)
    res = run_videos(gpu, video, tmp_path / "out", workers=2)
    assert [r.status for r in res] == ["done", "done"]
    cpu = avsegcli.Predictor(ckpt["tiny"], device="cpu", batch_size=8)
    for v in video:
        got = read_masks_dir(tmp_path / "out" / v.stem)
        direct = gpu.predict_video(v)
        ref = cpu.predict_video(v)
        assert np.array_equal(got.frame_indices, ref.frame_indices)
        assert got.masks.shape == ref.masks.shape
        assert float((got.masks == direct.masks).mean()) >= 0.999
        assert float((got.masks == ref.masks).mean()) >= (0.99 if precision == "fp32" else 0.95)


def test_batch_size_independence_within_gpu_tolerance(ckpt, video):
    pred = avsegcli.Predictor(ckpt["tiny"], device="cuda", batch_size=1)
    frames, log_mel, rows = _inputs(pred, video[0])
    one = torch.cat([pred.logits(frames[i:i + 1], log_mel, rows[i:i + 1]) for i in range(len(rows))])
    many = pred.logits(frames, log_mel, rows)
    mean_err, max_err = rel_errors(one, many)
    assert mean_err <= 1e-4 and max_err <= 1e-3, (mean_err, max_err)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fake_avsbench(tmp_path_factory.mktemp("cudadata"), "s4", videos_per_split=4, seed=4, image_hw=(SIZE, SIZE))


def _cfg(data, out, **kw):
    base = dict(task="s4", data=str(data), out=str(out), preset="tiny", image_size=SIZE, lr=1e-3, batch_size=2,
                log_every=1, num_workers=0, val_every=0, device="cuda")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_train_steps_in_reduced_precision(precision, data_root, tmp_path):
    """bf16 autocast, and fp16 with its GradScaler: finite losses close to the CPU's fp32 first step, weights move."""
    from safetensors.torch import load_file

    train(_cfg(data_root, tmp_path / "cpu", device="cpu", precision="fp32", max_steps=1))
    res = train(_cfg(data_root, tmp_path / precision, precision=precision, max_steps=3))
    assert res.step == 3
    log = read_log(tmp_path / precision)
    assert all(math.isfinite(r["total"]) for r in log)
    first_cpu, first_gpu = read_log(tmp_path / "cpu")[0]["total"], log[0]["total"]  # same weights, same clips
    assert abs(first_gpu - first_cpu) <= (0.05 if precision == "bf16" else 0.01) * abs(first_cpu), (first_cpu, first_gpu)
    last = load_file(str(tmp_path / precision / "last.safetensors"))
    init = _initial_weights(tmp_path / precision)
    assert all(torch.isfinite(t).all() for t in last.values())
    assert any(not torch.equal(last[k], init[k]) for k in last if k.startswith("head."))


def _initial_weights(run_dir) -> dict[str, torch.Tensor]:
    import json

    torch.manual_seed(123)  # the engine's default seed, before it builds the model
    return build_model(json.loads((run_dir / "config.json").read_text())["model"]).state_dict()


def test_resume_within_gpu_tolerance(data_root, tmp_path):
    """3 steps + resume to 6 == 6 straight, up to GPU nondeterminism: each tensor within 1 % of its update."""
    from safetensors.torch import load_file

    kw = dict(optimizer="sgd", lr=0.05, freeze_epochs=1)  # SGD: weights stay a faithful image of the gradients
    straight = train(_cfg(data_root, tmp_path / "a", max_steps=6, **kw))
    train(_cfg(data_root, tmp_path / "b", max_steps=3, **kw))
    resumed = train(TrainConfig(resume=str(tmp_path / "b"), max_steps=6))
    assert straight.step == resumed.step == 6
    a, b = load_file(str(tmp_path / "a" / "last.safetensors")), load_file(str(tmp_path / "b" / "last.safetensors"))
    init = _initial_weights(tmp_path / "a")
    for k in a:
        diff = float((a[k].float() - b[k].float()).abs().max())
        update = float((a[k].float() - init[k].float()).abs().max()) if k in init else 0.0
        assert diff <= 1e-2 * update + 1e-6, (k, diff, update)
    la = {r["step"]: r["total"] for r in read_log(tmp_path / "a")}
    lb = {r["step"]: r["total"] for r in read_log(tmp_path / "b")}
    assert la.keys() == lb.keys()
    assert all(abs(la[s] - lb[s]) <= 1e-3 * abs(la[s]) + 1e-6 for s in la)
