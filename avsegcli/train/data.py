"""Reproducible, resumable, shardable batch order, and collation of AVSBench clips into frame batches.

Epoch ``e`` visits the training clips in the order ``torch.randperm(n, generator=Generator().manual_seed(seed + e))``,
cut into global batches of ``batch_size`` clips (a last partial batch is dropped, so every process of a
distributed run has the same number of clips per step). Process ``r`` of ``W`` takes the ``r``-th contiguous
``batch_size / W`` clips of every global batch. Resuming inside an epoch skips the batches already done; nothing
here touches the global random generators (every DataLoader gets its own generator).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

TENSOR_KEYS = ("frames", "log_mel", "masks", "mask_valid", "frame_valid", "gt_valid")


def epoch_order(num_clips: int, seed: int, epoch: int) -> list[int]:
    """The clip order of ``epoch``: a permutation of ``range(num_clips)`` from ``seed + epoch``."""
    gen = torch.Generator().manual_seed(int(seed) + int(epoch))
    return torch.randperm(num_clips, generator=gen).tolist()


def steps_per_epoch(num_clips: int, batch_size: int) -> int:
    return num_clips // batch_size


def epoch_batches(num_clips: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Global batches (lists of clip indices) of ``epoch``; the last partial batch is dropped."""
    order = epoch_order(num_clips, seed, epoch)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps_per_epoch(num_clips, batch_size))]


def rank_share(batch: Sequence[int], rank: int, world: int) -> list[int]:
    """Process ``rank``'s contiguous part of a global batch (``len(batch)`` must be divisible by ``world``)."""
    per = len(batch) // world
    return list(batch[rank * per:(rank + 1) * per])


class ListBatchSampler(Sampler[list[int]]):
    """Yields the given batches in order."""

    def __init__(self, batches: Sequence[Sequence[int]]) -> None:
        self.batches = [list(b) for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Clip dicts -> one frame batch: every tensor of ``TENSOR_KEYS`` stacked to ``[B,T,...]`` and flattened to
    ``[B*T,...]`` (``frames`` ``[B*T,3,S,S]``, ``log_mel`` ``[B*T,1,96,64]``, ``masks`` ``[B*T,S,S]``, flags
    ``[B*T]``); ``names`` (list of B str) and ``clips`` (B)."""
    out: dict[str, Any] = {"names": [it["name"] for it in items], "clips": len(items)}
    if "negative" in items[0]:  # avseg train --negative-audio (avsegcli.train.negatives)
        out["negative_clips"] = sum(bool(it["negative"]) for it in items)
    for key in TENSOR_KEYS:
        if key in items[0]:
            stacked = torch.stack([it[key] for it in items])
            out[key] = stacked.reshape(-1, *stacked.shape[2:])
    return out


def make_loader(dataset: Dataset, batches: Sequence[Sequence[int]], *, num_workers: int, seed: int,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over fixed ``batches`` with its own generator (so it never draws from the global RNG)."""
    return DataLoader(dataset, batch_sampler=ListBatchSampler(batches), collate_fn=collate_clips,
                      num_workers=num_workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=False)


def sequential_batches(num_clips: int, batch_size: int) -> list[list[int]]:
    """Validation batches: clips in dataset order, the last batch may be short (as the released scripts)."""
    return [list(range(i, min(i + batch_size, num_clips))) for i in range(0, num_clips, batch_size)]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
