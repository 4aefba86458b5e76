"""Distributed training under ``torchrun``: process group setup, device choice and small collectives.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; with ``WORLD_SIZE > 1`` the process group is started
with NCCL on CUDA and gloo on the CPU. Without ``torchrun`` (or with one process) everything here is a no-op.

``AVSEG_DDP_BACKEND`` (``nccl`` or ``gloo``) overrides the backend. NCCL takes one GPU per rank; with
``AVSEG_DDP_BACKEND=gloo`` on CUDA, ranks beyond the GPU count share them (``cuda:<LOCAL_RANK mod GPUs>``, with a
warning on stderr): slow, for testing a multi-process run on a one-GPU machine, not for real training.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from avsegcli.errors import AvsegError

TIMEOUT = timedelta(minutes=60)  # rank 0 validates alone while the others wait
BACKEND_ENV = "AVSEG_DDP_BACKEND"
BACKENDS = ("nccl", "gloo")


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


def requested_backend() -> str | None:
    """The process-group backend asked for with ``AVSEG_DDP_BACKEND`` (None: the default for the device)."""
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise AvsegError(f"{BACKEND_ENV}={value!r}: expected {' or '.join(BACKENDS)}")
    return value


def pick_device(pref: str, local_rank: int, world: int = 1, share_gpus: bool = False) -> torch.device:
    """``auto``: ``cuda:<local rank>`` when CUDA is available, else the CPU; or ``cpu``/``cuda``/``cuda:N``.

    Under ``torchrun`` (``world > 1``) each rank's GPU is ``cuda:<LOCAL_RANK>``: ``auto`` and ``cuda`` pick it, and an
    explicit ``cuda:N`` is a usage error (it would put every rank on the same GPU and NCCL would fail at start).
    ``share_gpus`` (the gloo backend on CUDA): ranks beyond the GPU count wrap around, ``cuda:<LOCAL_RANK mod GPUs>``."""
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
            count = torch.cuda.device_count()
            index = local_rank % count if (share_gpus and world > 1 and count > 0) else local_rank
            device = torch.device(f"cuda:{index}")
        if device.index >= torch.cuda.device_count():
            raise AvsegError(f"--device {device} asked for (LOCAL_RANK={local_rank}), but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)"
                             + (f" (to test several processes on fewer GPUs: {BACKEND_ENV}=gloo)" if world > 1 else ""))
    elif device.type != "cpu":
        raise AvsegError(f"--device must be auto, cpu, cuda or cuda:N, got {pref!r}")
    return device


def setup(device_pref: str) -> DistInfo:
    """Read the ``torchrun`` environment, pick the device, start the process group when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    asked = requested_backend() if world > 1 else None
    device = pick_device(device_pref, local_rank, world, share_gpus=asked == "gloo")
    info = DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)
    if world > 1 and not dist.is_initialized():
        backend = asked or ("nccl" if device.type == "cuda" else "gloo")
        if backend == "nccl" and device.type != "cuda":
            raise AvsegError(f"{BACKEND_ENV}=nccl needs CUDA devices (device is {device}); use gloo on the CPU")
        if device.type == "cuda":
            torch.cuda.set_device(device)
            if device.index != local_rank:
                print(f"warning: rank {rank} (LOCAL_RANK={local_rank}) shares {device} with another rank "
                      f"({BACKEND_ENV}=gloo): a test setup, slower than one GPU per rank with NCCL",
                      file=sys.stderr, flush=True)
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
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
