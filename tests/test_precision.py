"""``--precision``: what each mode resolves to, the float32 switches on CUDA, and the bf16 agreement gate.

The gate (issue 12): the bundled model on a held-out synthetic test split (seed 1, never used for training), bf16
against fp32: mIoU within 0.005 and at least 99.5% of mask pixels equal. Measured on these 20 clips: mIoU 0.8959 (bf16)
vs 0.8959 (fp32), 99.995% of pixels equal (0.8957 and 99.996% before the embedding-bag sampling, dd13fb1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avsegcli.inference import precision as P
from avsegcli.errors import AvsegError
from avsegcli.inference.predictor import DEFAULT_WEIGHTS_NAME, REPO_WEIGHTS, Predictor
from conftest import run_cli


def test_cpu_flags_parsed(tmp_path):
    (tmp_path / "amx").write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    (tmp_path / "plain").write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert P.cpu_has_native_bf16(tmp_path / "amx") and not P.cpu_has_native_bf16(tmp_path / "plain")
    assert not P.cpu_has_native_bf16(tmp_path / "missing")


def test_resolve_modes(monkeypatch):
    cpu, cuda0, cuda1 = torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.resolve("auto", cpu) == "bf16"
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    assert P.resolve("auto", cpu) == "fp32"
    # auto asks the chosen GPU, not the current one: a Volta as GPU 0 beside an Ampere as GPU 1
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or ((8, 0) if d.index == 1 else (7, 0)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert P.resolve("auto", cuda1) == "bf16" and P.resolve("auto", cuda0) == "fp32"
    assert asked == [cuda1, cuda0]
    for mode in ("fp32", "bf16", "fp16"):
        assert P.resolve(mode, cpu) == mode
    assert P.resolve("tf32", cuda0) == "tf32"
    with pytest.raises(AvsegError, match="CUDA mode"):
        P.resolve("tf32", cpu)
    with pytest.raises(AvsegError, match="unknown precision"):
        P.resolve("fp8", cpu)
    # reduced modes cast the weights once (the same on every device); float32 modes do not
    assert (P.reduced_dtype("bf16"), P.reduced_dtype("fp16")) == (torch.bfloat16, torch.float16)
    assert P.reduced_dtype("fp32") is None and P.reduced_dtype("tf32") is None


def test_predictor_records_modes(monkeypatch):
    weights = REPO_WEIGHTS / DEFAULT_WEIGHTS_NAME
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    auto = Predictor(weights, device="cpu")
    info = auto.model_info()
    assert (info["precision"], info["precision_requested"], info["impl"], info["compiled"]) == ("bf16", "auto", "fast", False)
    assert auto.model.working_dtype == torch.bfloat16
    ref = Predictor(weights, device="cpu", precision="fp32", impl="reference")
    assert ref.model.working_dtype == torch.float32 and ref.model.impl == "reference"
    with pytest.raises(AvsegError):
        Predictor(weights, device="cpu", impl="turbo")


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}


def test_bf16_agreement_gate_on_bundled_model(tmp_path):
    data = tmp_path / "synth"
    proc = run_cli("synth", "--task", "s4", "--out", data, "--splits", "test", "--split-videos", "test=20",
                   "--seed", "1", "--no-mp4", "--quiet")
    assert proc.returncode == 0, proc.stderr
    scores, masks = {}, {}
    for mode in ("fp32", "bf16"):
        out = tmp_path / f"pred_{mode}"
        proc = run_cli("eval", "--task", "s4", "--data", data, "--device", "cpu", "--precision", mode,
                       "--protocol", "official", "--save-pred", out, "--json", "-")
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)
        assert res["model"]["precision"] == mode
        scores[mode] = res["overall"]["official"]["miou"]
        masks[mode] = _masks(out)
    assert masks["fp32"].keys() == masks["bf16"].keys() and len(masks["fp32"]) >= 20
    equal = sum(int((masks["fp32"][k] == masks["bf16"][k]).sum()) for k in masks["fp32"])
    total = sum(m.size for m in masks["fp32"].values())
    print(f"bf16 vs fp32 on 20 held-out clips: mIoU {scores['bf16']:.4f} vs {scores['fp32']:.4f}, "
          f"{100 * equal / total:.3f}% pixels equal")
    assert abs(scores["bf16"] - scores["fp32"]) <= 0.005
    assert equal / total >= 0.995
