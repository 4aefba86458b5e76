"""One precision road on every device (issue 21), walked on the CPU.

* Every mode (fp32, bf16, fp16) with every impl (fast, reference), for a binary and a semantic model, through
  ``Predictor.logits`` and ``run_videos`` (what ``avseg run`` calls); ``stream``, the ``avseg run`` command (fp16
  included: it used to raise) and ``avseg eval`` (every mode) on top: float32 logits that agree with fp32.
* The design removes autocast from inference: a predictor never enters it, and every kernel with a one-dtype
  rule on CUDA (matmuls, convolutions, norms, grid sampling) sees one dtype, checked op by op on the CPU with a
  dispatch mode -- CUDA's rules, enforced where the tests run.
* The model itself stays autocast-safe (training and users' own code): both impls under CPU autocast.
* Precision switches are scoped: after a predictor, a run, an eval or a training run, the legacy TF32 flags and
  the matmul precision read without error and hold what they held.
* Caches belong to their modules: two models of one preset in turn each give their own reference output.

Tolerances against the fp32 reference impl (float32 logits of the tiny model with random weights, 3 frames;
|difference| relative to the logits' standard deviation, max / median): fast fp32 1e-4 / 1e-5; bf16 20% / 2.5%;
fp16 3% / 0.3%. Measured (binary, semantic; worst impl): fp32 fast 7.8e-6 / 1.0e-6; bf16 10.4% / 1.1%, 8.3% / 0.7%;
fp16 1.5% / 0.14%, 0.95% / 0.09%. (Random tiny weights are the hard case; the bundled model's bf16 gate is in
test_precision.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import avsegcli
from avsegcli.inference import precision as P
from avsegcli.build import build_model, preset
from avsegcli.data import write_fake_avsbench
from avsegcli.eval.evaluate import evaluate
from avsegcli.inference.predictor import Predictor
from avsegcli.weights import save_checkpoint
from conftest import legacy_flags as _legacy, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = {"fp32": (1e-4, 1e-5), "bf16": (0.20, 0.025), "fp16": (0.03, 0.003)}  # max, median of |d| / std
MODES = ("fp32", "bf16", "fp16")
IMPLS = ("fast", "reference")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny_ckpt) -> dict[str, Path]:
    torch.manual_seed(1)
    semantic = tmp_path_factory.mktemp("sem") / "tiny_avss.safetensors"
    save_checkpoint(build_model(preset("tiny", task="avss", head={"num_classes": 71})), semantic)
    return {"binary": tiny_ckpt, "semantic": semantic}


def _inputs(size: int, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    log_mel = torch.randn(2, 1, 96, 64, generator=g)
    return frames, log_mel, np.array([0, 1, 1][:n])


def _rel(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    d = (got.double() - ref.double()).abs() / ref.double().std()
    return float(d.max()), float(d.median())


@pytest.mark.parametrize("kind", ["binary", "semantic"])
def test_every_mode_and_impl_through_predictor_and_stream(kind, ckpts, tmp_path):
    ref = Predictor(ckpts[kind], device="cpu", precision="fp32", impl="reference", batch_size=3)
    frames, log_mel, rows = _inputs(ref.image_size)
    expected = ref.logits(frames, log_mel, rows)
    for mode in MODES:
        for impl in IMPLS:
            pred = Predictor(ckpts[kind], device="cpu", precision=mode, impl=impl, batch_size=3)
            got = pred.logits(frames, log_mel, rows)
            assert got.dtype == torch.float32 and got.shape == expected.shape
            worst, median = _rel(expected, got)
            tol = TOL[mode] if (mode, impl) != ("fp32", "reference") else (0.0, 0.0)
            assert worst <= tol[0] and median <= tol[1], (kind, mode, impl, worst, median)
            assert pred.model_info()["precision"] == mode
            # the float32 islands are float32 on every road
            m = pred.model
            assert m.vggish.features[0].weight.dtype == torch.float32 and m.audio_proj.weight.dtype == torch.float32
            assert m.head.fc[-1].weight.dtype == torch.float32
            assert all(n.weight.dtype == torch.float32 for n in m.modules() if isinstance(n, torch.nn.LayerNorm))
            assert m.working_dtype == P.DTYPES[mode]


def test_stream_and_run_in_every_mode(ckpts, tmp_path):
    """``stream`` and ``avseg run`` on a real file in each reduced mode and impl: masks agree with fp32."""
    from media_gen import make_video

    video = make_video(tmp_path / "v.mp4", seconds=3, fps=5)
    base = [r.mask for r in Predictor(ckpts["binary"], device="cpu", precision="fp32", batch_size=2).stream(video)]
    for mode in ("bf16", "fp16"):
        for impl in IMPLS:
            got = [r.mask for r in Predictor(ckpts["binary"], device="cpu", precision=mode, impl=impl, batch_size=2).stream(video)]
            assert len(got) == len(base)
            equal = np.mean([(a == b).mean() for a, b in zip(base, got)])
            assert equal >= 0.98, (mode, impl, equal)
    out = tmp_path / "out"
    proc = run_cli("run", video, "--weights", ckpts["semantic"], "--out", out, "--precision", "fp16", "--impl",
                   "reference", "--device", "cpu", "--workers", "0", "--quiet")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "v" / "meta.json").read_text())
    assert (meta["model"]["precision"], meta["model"]["impl"], meta["semantic"]) == ("fp16", "reference", True)


def test_run_demo_in_fp16(tmp_path):
    """The issue's reproduction: ``avseg run samples/demo.mp4 --precision fp16`` raised on the first batch."""
    out = tmp_path / "demo"
    proc = run_cli("run", Path(__file__).resolve().parents[1] / "samples" / "demo.mp4", "--out", out, "--precision",
                   "fp16", "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "demo" / "meta.json").read_text())
    assert meta["model"]["precision"] == "fp16" and meta["num_frames"] > 0


@pytest.mark.parametrize("kind,task", [("binary", "s4"), ("semantic", "avss")])
def test_eval_in_every_mode_goes_through_the_predictors_forward(kind, task, ckpts, tmp_path, monkeypatch):
    """eval uses ``Predictor.forward`` (so ``--compile`` and the precision apply) in every mode, for a binary (S4)
    and a semantic (AVSS) model; scores agree with fp32. The reference impl is evaluated in fp32 here: in bf16/fp16
    its contiguous convolutions take torch's slow CPU kernel (about 60x the fast path on this tiny model), and those
    combinations run through ``Predictor`` and ``run_videos`` above with the same forward."""
    root = write_fake_avsbench(tmp_path / "data", task, videos_per_split=2, seed=0, image_hw=(32, 32))
    scores = {}
    for m, impl in [*((m, "fast") for m in MODES), ("fp32", "reference")]:
        pred = Predictor(ckpts[kind], device="cpu", precision=m, impl=impl)
        calls = []
        inner = pred._forward
        monkeypatch.setattr(pred, "_forward", lambda *a, **k: calls.append(1) or inner(*a, **k))
        res = evaluate(task, root, "test", predictor=pred, workers=0)
        assert calls, "eval bypassed the predictor's forward"
        assert (res["model"]["precision"], res["model"]["impl"]) == (m, impl)
        scores[m, impl] = (res["overall"]["official"]["miou"], res["overall"]["official"]["fscore"])
    base = scores["fp32", "reference"]
    for key, (miou, fscore) in scores.items():
        tol = 1e-4 if key[0] == "fp32" else 0.02
        assert abs(miou - base[0]) <= tol and abs(fscore - base[1]) <= tol, (key, scores)


@pytest.mark.parametrize("kind", ["binary", "semantic"])
def test_run_videos_in_every_mode_and_impl(kind, ckpts, tmp_path):
    """``run_videos`` (what ``avseg run`` calls) for every precision x impl: float32 logits make masks that agree
    with fp32 reference; meta.json records what ran."""
    from avsegcli.masks.io import read_masks_dir
    from avsegcli.run.local import run_videos
    from media_gen import make_video

    video = make_video(tmp_path / "v.mp4", seconds=3, fps=5)
    masks = {}
    for mode in MODES:
        for impl in IMPLS:
            out = tmp_path / f"{mode}_{impl}"
            pred = Predictor(ckpts[kind], device="cpu", precision=mode, impl=impl, batch_size=2)
            res = run_videos(pred, [video], out, workers=0, fmt="npz")
            assert [r.status for r in res] == ["done"], res
            meta = json.loads((out / "v" / "meta.json").read_text())
            assert (meta["model"]["precision"], meta["model"]["impl"], meta["semantic"]) == (mode, impl, kind == "semantic")
            masks[mode, impl] = read_masks_dir(out / "v").masks
    base = masks["fp32", "reference"]
    for key, got in masks.items():
        assert got.shape == base.shape
        assert (got == base).mean() >= (0.999 if key[0] == "fp32" else 0.97), (key, (got == base).mean())


class _DtypeRules(TorchDispatchMode):
    """Records every op whose floating inputs mix dtypes where CUDA's kernels take one dtype."""

    ONE_DTYPE = ("mm", "addmm", "bmm", "baddbmm", "matmul", "einsum", "linear", "conv", "_convolution", "layer_norm",
                 "native_layer_norm", "group_norm", "native_group_norm", "batch_norm", "native_batch_norm",
                 "_native_batch_norm", "grid_sampler", "scaled_dot_product", "_scaled_dot_product", "addcmul",
                 "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only")

    def __init__(self):
        super().__init__()
        self.mixed: list[str] = []
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        self.ops.add(name)
        if name in self.ONE_DTYPE or name.startswith(("conv", "grid_sampler", "scaled_dot_product", "_scaled_dot")):
            dtypes = {a.dtype for a in [*args, *(kwargs or {}).values()] if isinstance(a, torch.Tensor) and a.is_floating_point()}
            if len(dtypes) > 1:
                self.mixed.append(f"{name}{sorted(map(str, dtypes))}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
@pytest.mark.parametrize("impl", IMPLS)
def test_inference_never_autocasts_and_every_kernel_sees_one_dtype(mode, impl, ckpts, monkeypatch):
    pred = Predictor(ckpts["semantic"], device="cpu", precision=mode, impl=impl, batch_size=3)
    frames, log_mel, rows = _inputs(pred.image_size)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu"))) for m in pred.model.modules()]

    real = torch.autocast

    def refuse(*a, **k):  # switching autocast off (the logits' convolution does, for users' autocast) is fine
        if k.get("enabled", True) is not False:
            raise AssertionError("inference entered autocast")
        return real(*a, **k)

    monkeypatch.setattr(torch, "autocast", refuse)
    monkeypatch.setattr(torch.amp, "autocast", refuse)
    with _DtypeRules() as rules:
        out = pred.logits(frames, log_mel, rows)
    for h in hooks:
        h.remove()
    assert seen and not any(seen)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    sampler = {"reference": "grid_sampler", "fast": "embedding_bag"}[impl]  # the deformable attention's
    assert {"conv2d", "layer_norm", "group_norm", sampler, "linear"} <= rules.ops
    assert rules.mixed == [], sorted(set(rules.mixed))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", IMPLS)
def test_model_runs_under_cpu_autocast(dtype, impl, ckpts):
    """Autocast is not the inference road, but the model must survive it (training, users' code): the fast
    path's in-place GEMMs used to raise 'mat1 and mat2 must have the same dtype' here."""
    model = avsegcli.load_model(ckpts["binary"], impl=impl)
    ref = avsegcli.load_model(ckpts["binary"], impl="reference")
    frames, log_mel = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 96, 64)
    with torch.inference_mode():
        expected = ref(frames, log_mel)["pred_masks"]
        with torch.autocast("cpu", dtype=dtype):
            got = model(frames, log_mel)["pred_masks"]
    worst, _ = _rel(expected, got.float())
    assert worst <= 0.1, worst


def test_precision_scope_restores_every_flag():
    before, raw = _legacy(), P.flag_state()
    for mode in ("fp32", "tf32", "bf16", "fp16"):
        with P.scope(mode, benchmark=True):
            inside = _legacy()  # readable inside too (inductor reads the matmul precision while compiling)
            assert inside["cudnn.allow_tf32"] == (mode == "tf32") and torch.backends.cudnn.benchmark
            assert inside["float32_matmul_precision"] == ("high" if mode == "tf32" else "highest")
            assert torch.backends.cudnn.conv.fp32_precision != "tf32" or mode == "tf32"
        assert _legacy() == before and P.flag_state() == raw
    # restored even when the body fails, and from a state a user set with the new API
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        custom = P.flag_state()
        with pytest.raises(ZeroDivisionError), P.scope("fp32"):
            1 / 0
        assert P.flag_state() == custom
    finally:
        torch.backends.cuda.matmul.fp32_precision = raw["cuda.matmul.fp32_precision"]
    assert _legacy() == before


def test_no_command_leaves_a_flag_changed(ckpts, tmp_path):
    """After a predictor, a stream, a run, an eval and a training run in one process: the flags as before."""
    from avsegcli.train.engine import train
    from avsegcli.run.local import run_videos
    from avsegcli.train import TrainConfig
    from media_gen import make_video

    before, raw = _legacy(), P.flag_state()
    video = make_video(tmp_path / "v.mp4", seconds=2, fps=5)
    pred = Predictor(ckpts["binary"], device="cpu", precision="fp16")
    list(pred.stream(video))
    run_videos(pred, [video], tmp_path / "out", workers=0)
    root = write_fake_avsbench(tmp_path / "data", "s4", videos_per_split=2, seed=0, image_hw=(32, 32))
    evaluate("s4", root, "test", predictor=pred, workers=0)
    assert _legacy() == before and P.flag_state() == raw
    train(TrainConfig(task="s4", data=str(root), out=str(tmp_path / "run"), preset="tiny", image_size=32, epochs=1,
                      batch_size=2, max_steps=1, val_every=0, num_workers=0, device="cpu"))
    assert _legacy() == before and P.flag_state() == raw


def test_two_models_of_one_preset_in_turn_each_give_their_own_output():
    """The up-convolution's phase kernels, the level normalisers and the positional encodings are cached per
    module: a second model loaded after the first was freed (often at the same addresses) never sees the first's."""
    frames, log_mel = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 96, 64)
    outs = []
    for seed in (1, 2, 1):
        torch.manual_seed(seed)
        model = avsegcli.build_model("tiny").eval()
        ref = avsegcli.build_model("tiny").eval()
        ref.load_state_dict(model.state_dict())
        model.set_impl("fast")
        with torch.inference_mode():
            got = model(frames, log_mel)["pred_masks"]
            expected = ref(frames, log_mel)["pred_masks"]
        assert _rel(expected, got)[0] <= 1e-4, seed
        outs.append(got)
        del model, ref
    assert not torch.allclose(outs[0], outs[1]) and torch.allclose(outs[0], outs[2])


def test_new_weights_in_one_model_drop_its_caches():
    """Weights loaded into a model that already ran (under inference mode: inference tensors have no version
    counter) reach the fast path's kernels: loading, casting and moving clear the module-owned caches."""
    frames, log_mel = torch.randn(1, 3, 64, 64), torch.randn(1, 1, 96, 64)
    torch.manual_seed(3)
    other = avsegcli.build_model("tiny").eval()
    torch.manual_seed(4)
    with torch.inference_mode():
        model = avsegcli.build_model("tiny").eval().set_impl("fast")
        model(frames, log_mel)
        model.load_state_dict(other.state_dict())
        got = model(frames, log_mel)["pred_masks"]
        expected = other(frames, log_mel)["pred_masks"]
    assert _rel(expected, got)[0] <= 1e-4


def test_compiled_predictor_pads_short_batches_in_stream(ckpts, tmp_path, monkeypatch):
    """A compiled model sees one batch shape: the tail of a stream is padded, and the padded rows are dropped."""
    from media_gen import make_video

    video = make_video(tmp_path / "v.mp4", seconds=3, fps=5)  # 3 frames at 1 fps: batch 2 + tail 1
    plain = [r.mask for r in Predictor(ckpts["binary"], device="cpu", precision="fp32", batch_size=2).stream(video)]
    pred = Predictor(ckpts["binary"], device="cpu", precision="fp32", batch_size=2)
    shapes = []
    inner = pred._forward
    monkeypatch.setattr(pred, "_forward", lambda x, **k: shapes.append(x.shape[0]) or inner(x, **k))
    pred.compiled = True  # what compile=True sets; the padding does not depend on the compiler itself
    got = [r.mask for r in pred.stream(video)]
    assert len(got) == len(plain) == 3 and set(shapes) == {2}
    assert all(np.array_equal(a, b) for a, b in zip(plain, got))


def test_device_stats_made_once(ckpts, monkeypatch):
    """Mean and std live on the device from the start: no host-to-device copy of them per batch."""
    import avsegcli.media.preprocess as pre

    pred = Predictor(ckpts["binary"], device="cpu", precision="fp32")
    calls = []
    real = pre.normalize_stats
    monkeypatch.setattr(pre, "normalize_stats", lambda *a: calls.append(1) or real(*a))
    frames, log_mel, rows = _inputs(pred.image_size)
    pred.logits(frames, log_mel, rows)
    pred.logits(frames, log_mel, rows)
    assert calls == []
