"""Batch prediction for ``avseg eval``: clips through a ``Predictor`` as one frame batch, and the masks it saves.

    from avsegcli.eval.forward import predict_batch, save_masks
    pred = predict_batch(predictor, items, semantic=False)      # [B*T,S,S] float32 sigmoid probabilities
    save_masks(items, pred, Path("pred"), semantic=False)        # benchmark layout, 0/255 PNGs

Used by the positive scoring (:mod:`avsegcli.eval.evaluate`) and by the negative-audio one
(:mod:`avsegcli.eval.negative`), which runs the same clips again with their audio replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from avsegcli.data import save_binary_prediction, save_semantic_prediction
from avsegcli.errors import AvsegError

Items = list[dict[str, Any]]  # dataset items of one metric batch (clips), in split order


@torch.inference_mode()
def predict_batch(predictor: Any, items: Items, semantic: bool, forward_batch: int | None = None) -> torch.Tensor:
    """Run the model on clips concatenated to frames ``[B*T,3,S,S]`` (one log-mel patch per frame, so VGGish
    runs once per patch; AVSS passes ``frame_valid`` so padded frames give zero logits), ``forward_batch`` frames
    per forward (default all of them).

    Returns ``[B*T,S,S]`` on the CPU: float32 ``sigmoid(logit)`` for binary models, int64
    ``argmax(softmax(logits))`` class ids for semantic ones (exactly what the metrics compute from logits; both
    computed on the model's device, so only the ``[B*T,S,S]`` result crosses to the host).
    """
    dev = predictor.device
    # per item to the device (pinned tensors from the loader copy asynchronously), concatenated there
    frames = torch.cat([it["frames"].to(dev, non_blocking=True) for it in items])
    log_mel = torch.cat([it["log_mel"].to(dev, non_blocking=True) for it in items])
    valid = torch.cat([it["frame_valid"].to(dev, non_blocking=True) for it in items]) if semantic else None
    step = frames.shape[0] if not forward_batch else max(1, int(forward_batch))
    out = []
    for i in range(0, frames.shape[0], step):
        logits = predictor.forward(frames[i:i + step], log_mel[i:i + step],
                                   frame_valid=None if valid is None else valid[i:i + step])  # its precision, compiled or not
        out.append(torch.argmax(torch.softmax(logits, dim=1), dim=1) if semantic else torch.sigmoid(logits[:, 0]))
    return (out[0] if len(out) == 1 else torch.cat(out)).cpu()


def _frames(items: Items) -> int:
    return sum(int(it["frames"].shape[0]) for it in items)


def predictions(loader: Iterable[Items], predictor: Any, semantic: bool,
                forward_batch: int | None = None) -> Iterator[tuple[Items, torch.Tensor]]:
    """``(items, pred)`` per metric batch of ``loader``, in its order; ``pred`` ``[B*T,S,S]`` as
    :func:`predict_batch` gives it, or (no ``predictor``) the items' saved masks ``pred`` (int64 ids for AVSS, float
    0/1 else). With a model and a ``forward_batch`` larger than a metric batch, metric batches are gathered until
    they hold ``forward_batch`` frames, run together, and split again. A user error a loader worker returned
    (an :class:`AvsegError` item) is raised here."""
    held: list[Items] = []

    def run() -> list[tuple[Items, torch.Tensor]]:
        pred = predict_batch(predictor, [it for items in held for it in items], semantic, forward_batch)
        out, start = [], 0
        for items in held:
            n = _frames(items)
            out.append((items, pred[start:start + n]))
            start += n
        held.clear()
        return out

    for items in loader:
        for it in items:
            if isinstance(it, AvsegError):
                raise it
        if predictor is None:
            pred = torch.cat([it["pred"] for it in items])
            yield items, (pred.long() if semantic else pred.float())
            continue
        held.append(items)
        if sum(_frames(b) for b in held) >= (forward_batch or 0):
            yield from run()
    if held:
        yield from run()


def save_masks(items: Items, pred: torch.Tensor, save_dir: Path, semantic: bool) -> None:
    """Write ``pred`` ``[B*T,S,S]`` of ``items`` in the benchmark layout: binary ``sigmoid > 0.5`` as 0/255 PNGs
    (``[category/]name/name_<i>.png``), AVSS ids as palette PNGs (``name/name_<i>.png``, all 10 frames as the
    official script)."""
    start = 0
    for it in items:
        t = it["masks"].shape[0]
        p = pred[start:start + t]
        start += t
        if semantic:
            save_semantic_prediction(p, save_dir, it["name"])
        else:
            save_binary_prediction(p > 0.5, save_dir, it["name"], category=it["category"] or None)
