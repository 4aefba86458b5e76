"""Validation during training: when it is due, and the model's official-protocol scores on the validation split.

Only process 0 validates (:mod:`avsegcli.train.engine`); the scores are the benchmark's per-batch mIoU and F-score
(:mod:`avsegcli.eval.metrics`), ``val_batch`` clips a batch as the released recipe.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch.utils.data import Dataset

from avsegcli.eval.metrics import BinaryMetrics, SemanticMetrics
from avsegcli.modeling import AVSegFormer
from avsegcli.tasks import Task
from avsegcli.train.data import make_loader, sequential_batches, to_device

#: ``--precision`` -> the autocast dtype of training and validation (None: no autocast; tf32 is a float32 switch)
AMP_DTYPES = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision(device: torch.device, amp_dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` in ``amp_dtype`` on ``device``'s type, or a disabled one (float32) when None."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def validation_due(epoch: int, every: int, start: int) -> bool:
    """Whether to validate after (0-based) ``epoch``: from epoch ``start``, every ``every`` epochs (0 = never)."""
    return every > 0 and epoch >= start and (epoch - start) % every == 0


@torch.no_grad()
def evaluate(model: AVSegFormer, dataset: Dataset, task: Task, device: torch.device, amp_dtype: torch.dtype | None,
             batch_clips: int, num_workers: int) -> dict[str, float]:
    """Official-protocol ``{"miou", "fscore"}`` of ``model`` on ``dataset`` (clips in order, ``batch_clips`` a
    batch): logits ``[B*T, K, H, W]`` (``K = 1``: binary, the first channel scored) against the masks of the
    annotated frames. The model is in eval mode meanwhile, in training mode after."""
    metric: BinaryMetrics | SemanticMetrics = SemanticMetrics(model.num_classes, "official") if task.semantic \
        else BinaryMetrics("official")
    loader = make_loader(dataset, sequential_batches(len(dataset), batch_clips), num_workers=num_workers, seed=0)
    model.eval()
    try:
        for batch in loader:
            b = to_device(batch, device)
            with mixed_precision(device, amp_dtype):
                logits = model(b["frames"], b["log_mel"], frame_valid=b["frame_valid"])["pred_masks"]
            logits = logits.float().cpu()
            metric.update(logits if task.semantic else logits[:, 0], batch["masks"], valid=batch["mask_valid"])
    finally:
        model.train()
    res = metric.compute()
    return {"miou": float(res["miou"]), "fscore": float(res["fscore"])}
