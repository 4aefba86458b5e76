"""Moving frames to the model's device and masks back: the transport of ``avseg run`` / ``avseg eval``.

* Frames cross processes as the resized **uint8** RGB picture ``[N, S, S, 3]`` (the exact output of the
  benchmark-faithful resize, see :func:`avsegcli.media.preprocess.resize_frames`) -- a quarter of the bytes of
  normalised float32 -- and are normalised on the device by :func:`avsegcli.media.preprocess.normalize`, the same
  function (same operations, same order) the float path uses on the host.
* On CUDA the host side is staged in pinned memory (:func:`stage`) and copied with ``non_blocking`` on a side
  stream (:func:`to_device`), so the copy overlaps the previous batch's compute. ``pin_memory`` is only used with
  CUDA. Pinned blocks come from torch's caching host allocator, which does not hand a block out again before the
  asynchronous copies that read it have finished.
* :func:`logits_to_masks`: logits ``[B, K, s, s]`` -> masks ``[B, H, W]`` uint8 at the source size, computed on the
  logits' device with one copy to the host: binary ``bilinear(logits) > 0``; semantic the argmax over **all**
  classes of the bilinearly upsampled logits, in class chunks with a running max/argmax when the full tensor would
  not fit ``budget_bytes``.
* :func:`default_workers`: how many decode / loading processes to start from the cores this process may use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from avsegcli.media.preprocess import normalize, normalize_stats

#: bytes of upsampled float32 logits held at once by :func:`logits_to_masks` before it works in class chunks
MASK_BUDGET_BYTES = 1 << 28


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers(device: torch.device | str, jobs: int | None = None, cores: int | None = None) -> int:
    """Decode/loading processes when the user did not say: on CUDA all cores but one (the main process feeds the
    GPU); on the CPU a quarter of them, at least one, because the model's own intra-op threads share the same
    cores (one thread budget: the cores). Never more than ``jobs`` (videos or clips to load) when given."""
    cores = available_cores() if cores is None else max(1, int(cores))
    kind = torch.device(device).type
    n = cores - 1 if kind == "cuda" else cores // 4
    n = max(1, n)
    if jobs is not None:
        n = min(n, max(1, int(jobs)))
    return n


def stage(arrays: Sequence[np.ndarray], device: torch.device, pad_to: int | None = None) -> torch.Tensor:
    """Stack same-shaped host arrays into one tensor ``[max(len, pad_to), ...]`` for ``device``: written straight into
    a pinned buffer when the device is CUDA (no extra copy), a plain one otherwise. Rows past ``len(arrays)`` (when
    ``pad_to`` asks for more) repeat the last array, so a padded batch holds real, finite inputs."""
    n = len(arrays)
    total = max(n, int(pad_to or 0))
    first = np.asarray(arrays[0])
    pin = torch.device(device).type == "cuda"
    buf = torch.empty((total, *first.shape), dtype=torch.from_numpy(first[:0]).dtype, pin_memory=pin)
    view = buf.numpy()
    np.stack(arrays, out=view[:n])
    if total > n:
        view[n:] = view[n - 1]
    return buf


_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``. CUDA: an asynchronous copy (``t`` should be pinned, see :func:`stage`) on a side stream,
    into fresh memory allocated on that stream; the current stream waits for the copy, and the copy never waits
    for the compute still queued on the current stream, so it overlaps it. (The caching allocator hands the side
    stream no block that queued work still reads: blocks freed after use on the current stream are recorded
    there with ``record_stream``.)"""
    device = torch.device(device)
    if device.type != "cuda" or t.device == device:
        return t.to(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    side = _COPY_STREAMS.get(device)
    if side is None:
        side = _COPY_STREAMS[device] = torch.cuda.Stream(device)
    current = torch.cuda.current_stream(device)
    with torch.cuda.stream(side):
        out = t.to(device, non_blocking=True)
    current.wait_stream(side)
    out.record_stream(current)  # allocated on the side stream, used (and freed) on the current one
    return out


def device_guard(device: torch.device | str):
    """``device`` as the current CUDA device for the body (a no-op off CUDA): pinned buffers, streams and events
    made inside belong to it, so a run on ``cuda:N`` opens no context on GPU 0. The current device is per
    thread: every thread that works for a run enters it."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def to_host(t: torch.Tensor) -> np.ndarray:
    """``t`` as a host numpy array. CUDA: copied without a synchronising call (into pinned memory, non-blocking,
    then a wait on an event recorded after the copy, in the calling thread only); elsewhere a view or a copy."""
    if t.device.type != "cuda":
        return t.cpu().numpy()
    with device_guard(t.device):
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(t.device))
    done.synchronize()
    return buf.numpy()


def device_frames(frames: torch.Tensor, device: torch.device,
                  stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Model input ``[B, 3, S, S]`` float32 on ``device`` from either transport: uint8 ``[B, S, S, 3]`` resized RGB
    (normalised on the device with ``stats``, :func:`avsegcli.media.preprocess.normalize_stats` of ``device``)
    or already normalised float32 ``[B, 3, S, S]`` (moved as is)."""
    x = to_device(frames, device)
    if x.dtype == torch.uint8:
        return normalize(x, stats)
    return x


def _chunk(num_classes: int, frames: int, size: tuple[int, int], budget_bytes: int) -> int:
    per_class = max(1, frames * size[0] * size[1] * 4)
    return max(1, min(num_classes, budget_bytes // per_class))


@torch.inference_mode()
def semantic_masks(logits: torch.Tensor, size: tuple[int, int], budget_bytes: int = MASK_BUDGET_BYTES) -> torch.Tensor:
    """``[B, K, s, s]`` logits -> ``[B, H, W]`` int64 class ids (on the logits' device): the argmax over all ``K``
    classes of ``bilinear(logits, (H, W))`` (``align_corners=False``). Classes are upsampled ``c`` at a time
    (``c`` from ``budget_bytes``); ties go to the lowest class id, as ``argmax`` does."""
    h, w = int(size[0]), int(size[1])
    k = logits.shape[1]
    step = _chunk(k, logits.shape[0], (h, w), budget_bytes)
    best_val: torch.Tensor | None = None
    best_idx: torch.Tensor | None = None
    for c0 in range(0, k, step):
        up = F.interpolate(logits[:, c0:c0 + step], size=(h, w), mode="bilinear", align_corners=False)
        val, idx = up.max(dim=1)
        if best_val is None:
            best_val, best_idx = val, idx
            continue
        better = val > best_val  # strict: an equal value keeps the earlier (lower) class
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, idx + c0, best_idx)
    assert best_idx is not None
    return best_idx


@torch.inference_mode()
def logits_to_masks(logits: torch.Tensor, size: tuple[int, int], *, semantic: bool, with_probs: bool = False,
                    budget_bytes: int = MASK_BUDGET_BYTES) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits ``[B, K, s, s]`` -> (masks ``[B, H, W]`` uint8 on the host, probs or None). Binary: ``bilinear > 0`` and
    probs = sigmoid at ``(H, W)``; semantic: class ids (:func:`semantic_masks`) and probs = softmax at model size."""
    h, w = int(size[0]), int(size[1])
    if not semantic:
        up = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        masks = to_host((up > 0).to(torch.uint8))
        return masks, (to_host(up.sigmoid()) if with_probs else None)
    if logits.shape[1] > 256:
        raise ValueError(f"uint8 masks hold at most 256 classes, got {logits.shape[1]}")
    ids = to_host(semantic_masks(logits, (h, w), budget_bytes).to(torch.uint8))
    return ids, (to_host(logits.softmax(1)) if with_probs else None)

