"""``--precision``: what each mode resolves to, the float32 switches on CUDA, and the bf16 agreement gate.

The gate (issue 12): the bundled model on a held-out synthetic test split (seed 1, never used for training), bf16
against fp32: mIoU within 0.005 and at least 99.5% of mask pixels equal. Measured on these 20 clips: mIoU 0.8957 (bf16)
vs 0.8959 (fp32), 99.996% of pixels equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avsegcli import precision as P
from avsegcli.errors import AvsegError
from avsegcli.predictor import DEFAULT_WEIGHTS_NAME, REPO_WEIGHTS, Predictor
from conftest import run_cli


def test_cpu_flags_parsed(tmp_path):
    (tmp_path / "amx").write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    (tmp_path / "plain").write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert P.cpu_has_native_bf16(tmp_path / "amx") and not P.cpu_has_native_bf16(tmp_path / "plain")
    assert not P.cpu_has_native_bf16(tmp_path / "missing")


def test_resolve_modes(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.resolve("auto", cpu) == "bf16"
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    assert P.resolve("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert P.resolve("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert P.resolve("auto", cuda) == "fp32"
    for mode in ("fp32", "bf16", "fp16"):
        assert P.resolve(mode, cpu) == mode
    assert P.resolve("tf32", cuda) == "tf32"
    with pytest.raises(AvsegError, match="CUDA mode"):
        P.resolve("tf32", cpu)
    with pytest.raises(AvsegError, match="unknown precision"):
        P.resolve("fp8", cpu)
    # cast weights only for bf16 on the CPU; autocast elsewhere, nothing for float32 modes
    assert P.casts_weights("bf16", cpu) and not P.casts_weights("bf16", cuda) and not P.casts_weights("fp16", cpu)
    assert isinstance(P.autocast("bf16", cuda), torch.autocast) and not isinstance(P.autocast("bf16", cpu), torch.autocast)
    assert not isinstance(P.autocast("fp32", cuda), torch.autocast) and not isinstance(P.autocast("tf32", cuda), torch.autocast)


def test_fp32_means_ieee_on_cuda():
    """This torch defaults cuDNN convolutions to TF32; fp32 switches both cuDNN and cuBLAS to IEEE, tf32 to TF32."""
    cuda = torch.device("cuda")
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    try:
        P.apply_matmul_mode("fp32", cuda)
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("ieee", "ieee")
        P.apply_matmul_mode("tf32", cuda)
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "tf32")
        P.apply_matmul_mode("bf16", cuda)
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before


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
