"""What ``--precision`` means, the same on every device, and what ``auto`` picks.

One road for every device: a reduced mode stores the weights once in its dtype
(:meth:`~avsegcli.modeling.AVSegFormer.cast_for_inference`) with the same float32 islands everywhere (VGGish,
the audio projection, the norms, the deformable sampling locations and sampling, the logits' convolutions).
Inference never runs under autocast, on the CPU or on CUDA: the arithmetic a CUDA run executes is the code the
CPU tests execute; only the device, the streams and the kernels' backends differ. (Autocast was measured and
rejected: on the CPU it re-casts every weight on every call, 0.157 frames/s against 0.727 for weights cast once,
s4-r50 at 512 px; see ``docs``/README "Speed on the CPU".)

Modes (``meta.json`` records the mode that ran, ``precision``, next to the one asked for):

* ``fp32``: IEEE float32 everywhere (cuDNN convolutions and matmuls without TF32; this torch defaults cuDNN
  convolutions to TF32, which is not float32).
* ``tf32``: CUDA only: float32 storage, TF32 tensor-core convolutions and matmuls.
* ``bf16`` / ``fp16``: weights cast once, float32 islands as above. Logits are float32.
* ``auto`` (the default): ``bf16`` where it is native and measured faster with the same masks (CPUs with
  AVX512-BF16 or AMX: ``benchmarks/bench_forward.py``, 2.6x (s4-r50) and 2.4x (avss-pvt2) the reference fp32;
  CUDA devices with bfloat16 tensor cores, compute capability 8.0+, asked of the chosen device), else ``fp32``.

:func:`scope` is the one place the process-wide float32 switches are set: it saves every related torch flag,
sets the mode's, and restores them on the way out, so nothing leaks into the rest of the process (inference, eval
and training all run inside it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether ``device`` (not the current device) has bfloat16 tensor cores (compute capability 8.0+)."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve(precision: str, device: torch.device) -> str:
    """The concrete mode (``fp32``, ``tf32``, ``bf16``, ``fp16``) for ``precision`` on ``device``; AvsegError for
    an unknown name or a mode the device does not have."""
    if precision not in MODES:
        raise AvsegError(f"unknown precision {precision!r} ({', '.join(MODES)})")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if cuda_has_native_bf16(device) else "fp32"
        if device.type == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "fp32"
    if precision == "tf32" and device.type != "cuda":
        raise AvsegError(f"--precision tf32 is a CUDA mode (device is {device}); use fp32 or bf16")
    return precision


def reduced_dtype(mode: str) -> torch.dtype | None:
    """The dtype the weights are cast to once for ``mode`` (None for the float32 modes)."""
    dtype = DTYPES[mode]
    return None if dtype == torch.float32 else dtype


# Every node of torch's float32-precision tree, parents first (the order they are written back in).
_PRECISION_NODES = ("", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul", "mkldnn.conv",
                    "mkldnn.rnn")


def _node(path: str):
    obj = torch.backends
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


_LEGACY = {  # torch keeps these beside the per-node strings: both are saved and both are written back
    "cudnn.allow_tf32": (lambda: torch.backends.cudnn.allow_tf32, lambda v: setattr(torch.backends.cudnn, "allow_tf32", v)),
    "float32_matmul_precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
}


def flag_state() -> dict[str, object]:
    """The raw state of every float32-precision switch and cuDNN's autotuner (readable in any combination)."""
    state: dict[str, object] = {f"{p or 'backends'}.fp32_precision": _node(p).fp32_precision for p in _PRECISION_NODES}
    state["cudnn.benchmark"] = torch.backends.cudnn.benchmark
    return state


def _save() -> tuple[dict[str, object], dict[str, object]]:
    legacy = {}
    for name, (get, _) in _LEGACY.items():
        try:
            legacy[name] = get()
        except RuntimeError:  # the process mixed the legacy and new APIs before us: only the strings are restored
            pass
    return flag_state(), legacy


def _restore(state: dict[str, object], legacy: dict[str, object]) -> None:
    for name, value in legacy.items():  # the legacy values first (they rewrite the strings)...
        _LEGACY[name][1](value)
    for p in _PRECISION_NODES:  # ...then every string exactly as it was
        _node(p).fp32_precision = state[f"{p or 'backends'}.fp32_precision"]
    torch.backends.cudnn.benchmark = bool(state["cudnn.benchmark"])


@contextlib.contextmanager
def scope(mode: str, *, benchmark: bool = False) -> Iterator[None]:
    """Run the body with ``mode``'s float32 arithmetic, then put every switch back as it was.

    ``tf32`` allows TF32 in cuDNN convolutions and float32 matmuls; every other mode is IEEE float32 there (the
    reduced modes' float32 islands are float32 for real). Set through torch's one-switch API
    (``cudnn.allow_tf32``, ``set_float32_matmul_precision``), which keeps the legacy flags and inductor's reading
    of the matmul precision consistent inside the scope. ``benchmark``: cuDNN's autotuner for the body (repeating
    shapes). Process-wide, as torch's switches are; the same code on every device (the CUDA switches are plain
    settings on a machine without CUDA)."""
    if mode not in DTYPES:
        raise AvsegError(f"unknown precision mode {mode!r} ({', '.join(DTYPES)})")
    saved = _save()
    tf32 = mode == "tf32"
    try:
        torch.backends.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.benchmark = benchmark
        yield
    finally:
        _restore(*saved)
