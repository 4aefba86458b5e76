"""What ``--precision`` means on each device, and what ``auto`` picks.

Modes (``meta.json`` records the mode that ran, ``precision``, next to the one asked for):

* ``fp32``: IEEE float32 everywhere. On CUDA this switches cuDNN convolutions and matmuls to ``ieee`` (this torch
  defaults cuDNN convolutions to TF32, which is not float32).
* ``tf32``: CUDA only: float32 storage, TF32 tensor-core convolutions and matmuls.
* ``bf16``: on the CPU the weights are cast once (:meth:`AVSegFormer.cast_for_inference`: norms, VGGish, the
  logits' convolution and the deformable sampling stay float32); on CUDA autocast. Logits are float32 either way.
* ``fp16``: autocast (CUDA; the CPU allows it but has no fast float16 kernels). Logits are float32.
* ``auto`` (the default): ``bf16`` where it is native and measured faster with the same masks (CPUs with
  AVX512-BF16 or AMX: ``benchmarks/bench_forward.py``, 2.6x (s4-r50) and 2.4x (avss-pvt2) the reference fp32; CUDA devices with
  bfloat16 tensor cores, compute capability 8.0+), else ``fp32``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from avsegcli.errors import AvsegError

MODES = ("auto", "fp32", "tf32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16 in its flags; Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(f in flags for f in _CPU_BF16_FLAGS)


def resolve(precision: str, device: torch.device) -> str:
    """The concrete mode (``fp32``, ``tf32``, ``bf16``, ``fp16``) for ``precision`` on ``device``; AvsegError for
    an unknown name or a mode the device does not have."""
    if precision not in MODES:
        raise AvsegError(f"unknown precision {precision!r} ({', '.join(MODES)})")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "fp32"
    if precision == "tf32" and device.type != "cuda":
        raise AvsegError(f"--precision tf32 is a CUDA mode (device is {device}); use fp32 or bf16")
    return precision


def apply_matmul_mode(mode: str, device: torch.device) -> None:
    """Set cuDNN's and cuBLAS's float32 arithmetic for ``mode`` (``ieee`` unless ``tf32``). Process-wide, as
    torch's own switches are; a no-op off CUDA."""
    if device.type != "cuda":
        return
    value = "tf32" if mode == "tf32" else "ieee"
    torch.backends.cuda.matmul.fp32_precision = value
    torch.backends.cudnn.conv.fp32_precision = value


def casts_weights(mode: str, device: torch.device) -> bool:
    """Whether ``mode`` runs with weights cast once (CPU bf16) rather than under autocast."""
    return mode == "bf16" and device.type == "cpu"


def autocast(mode: str, device: torch.device):
    """The autocast context of ``mode`` on ``device``: a no-op for float32 modes and for cast weights."""
    if mode in ("fp32", "tf32") or casts_weights(mode, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[mode])
