"""avseg: find and segment the objects that make sound in a video (AVSegFormer).

    import avsegcli
    model = avsegcli.load_model("AVSegFormer_res50_s4.pth", device="cpu")   # official .pth or ours; eval mode
    out = model(frames, log_mel)      # frames [N,3,H,W] normalised RGB, log_mel [N,1,96,64]
    out["pred_masks"]                 # [N, num_classes, H, W] logits
    avsegcli.build_model("tiny")      # random weights, any preset name
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "build_model", "load_model", "PRESETS", "Predictor"]

if TYPE_CHECKING:
    from avsegcli.build import PRESETS, build_model
    from avsegcli.inference.predictor import Predictor
    from avsegcli.weights import load_model


def __getattr__(name: str) -> Any:  # lazy: `avseg --help` must not import torch
    if name in ("build_model", "PRESETS"):
        from avsegcli import build

        return getattr(build, name)
    if name == "load_model":
        from avsegcli.weights import load_model

        return load_model
    if name == "Predictor":
        from avsegcli.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'avsegcli' has no attribute {name!r}")
