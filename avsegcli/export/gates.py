"""The accuracy gates of a backend against torch float32, as ``avseg export --check`` and
``benchmarks/bench_forward.py`` print them.

* ``max_rel`` / ``median_rel``: ``|logits - reference|`` over the reference logits' standard deviation, the
  largest and the median over every value;
* ``mask_equal``: the share of pixels whose mask is the same (binary: ``logit > 0``; semantic: the argmax class).
"""

from __future__ import annotations

import torch
from torch import Tensor

from avsegcli.export.runners import Runner
from avsegcli.weights import load_model


def compare(logits: Tensor, reference: Tensor) -> dict[str, float]:
    """Gates of ``logits`` against ``reference`` (both ``[B, K, S, S]``)."""
    logits, reference = logits.float(), reference.float()
    scale = float(reference.std()) or 1.0
    err = (logits - reference).abs().flatten() / scale
    if reference.shape[1] > 1:
        equal = logits.argmax(1) == reference.argmax(1)
    else:
        equal = (logits > 0) == (reference > 0)
    return {"max_rel": float(err.max()), "median_rel": float(err.median()), "mask_equal": float(equal.float().mean())}


def random_inputs(image_size: int, batch: int = 2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Normalised-looking frames ``[B, 3, S, S]`` and log-mel patches ``[B, 1, 96, 64]`` from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, image_size, image_size, generator=g), torch.randn(batch, 1, 96, 64, generator=g) * 2 - 4


@torch.inference_mode()
def check_runner(runner: Runner, weights, batch: int = 2) -> dict[str, float]:
    """Run ``runner`` and the checkpoint ``weights`` in torch float32 (reference impl) on the same random inputs;
    the gates."""
    model = load_model(weights, device="cpu", impl="reference")
    frames, log_mel = random_inputs(runner.meta.image_size, batch)
    return compare(runner(frames, log_mel), model(frames, log_mel)["pred_masks"])
