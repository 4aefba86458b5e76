"""Distributed training under ``torchrun``: process group setup, device choice and small collectives.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; with ``WORLD_SIZE > 1`` the process group is started
with NCCL on CUDA and gloo on the CPU. Without ``torchrun`` (or with one process) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from avsegcli.errors import AvsegError

TIMEOUT = timedelta(minutes=60)  # rank 0 validates alone while the others wait


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    started_here: bool = False  # this module started the process group (and ends it)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str, local_rank: int, world: int = 1) -> torch.device:
    """``auto``: ``cuda:<local rank>`` when CUDA is available, else the CPU; or ``cpu``/``cuda``/``cuda:N``.

    Under ``torchrun`` (``world > 1``) each rank's GPU is ``cuda:<LOCAL_RANK>``: ``auto`` and ``cuda`` pick it, and an
    explicit ``cuda:N`` is a usage error (it would put every rank on the same GPU and NCCL would fail at start)."""
    try:
        device = torch.device("cpu" if pref == "auto" else pref)
    except RuntimeError:
        raise AvsegError(f"--device must be auto, cpu, cuda or cuda:N, got {pref!r}") from None
    if device.type == "cuda" and device.index is not None and world > 1:
        raise AvsegError(f"--device {pref} under torchrun ({world} processes): every rank would use the same GPU; "
                         "use --device cuda (or auto): each rank takes cuda:$LOCAL_RANK (restrict GPUs with "
                         "CUDA_VISIBLE_DEVICES)")
    if pref == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = torch.device("cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AvsegError("--device cuda: CUDA is not available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise AvsegError(f"--device {device} asked for (LOCAL_RANK={local_rank}), but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise AvsegError(f"--device must be auto, cpu, cuda or cuda:N, got {pref!r}")
    return device


def setup(device_pref: str) -> DistInfo:
    """Read the ``torchrun`` environment, pick the device, start the process group when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank, world)
    info = DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=TIMEOUT, **kwargs)
        info.started_here = True
    return info


def cleanup(info: DistInfo) -> None:
    if info.started_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over processes (a copy; the input is left alone)."""
    if not info.enabled:
        return x.clone()
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj`` (on every process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
