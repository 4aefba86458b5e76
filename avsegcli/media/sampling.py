"""Which frames to take, and which one-second audio chunk each one belongs to.

Rules (``N`` frames, ``times[i]`` the presentation time of frame ``i`` from
:attr:`MediaInfo.frame_times <avsegcli.media.probe.MediaInfo>`):

``fps == 1`` (the default) on a constant-rate video -- exactly the AVSBench rule. With
``F = round(native fps)`` (at least 1), second ``l`` takes frame ``min(int(l*F + 15/16*F), N - 1)``
for ``l = 0 .. ceil(N/F) - 1``:
one frame per started second that has a frame (second ``l`` "has a frame" when frame ``l*F``
exists). A 25 fps, 5 s video (125 frames) gives ``[23, 48, 73, 98, 123]``; 5.5 s (138 frames)
adds second 5 -> ``int(148.4375) = 148`` clamped to frame 137. This rule counts frames, not
timestamps, as the benchmark did (for 29.97 fps ``F = 30``). On a variable-rate video (some
frame more than half a frame period away from ``i / fps``, see :func:`is_constant_rate`) frame
counts do not measure seconds, so ``fps == 1`` uses the timestamp rule below instead.

``fps = r > 0``, ``r != 1`` (or ``r == 1`` on variable-rate video) -- the same idea by
timestamp: interval ``l`` is ``[l/r, (l+1)/r)``, for ``l = 0 .. floor(r * times[-1])`` (every interval that starts at or
before the last frame), and takes the frame shown at ``(l + 15/16) / r``: the last frame with
``times[i] <= (l + 15/16) / r`` (frame 0 if none). For constant-rate video with integer fps and
``r = 1`` this is the benchmark rule. When ``r`` exceeds the native rate a frame can be taken by
several intervals (repeats are kept so that the output rate is exactly ``r``).

``fps in (None, 0)`` -- every frame, ``0 .. N-1``.

Time window (``start``/``end`` seconds, ``avseg run --start/--end``): the frames above are chosen on the whole
video first, then only those with ``start <= t < end`` are kept, so a window keeps exactly the frames (and
source indices, and chunks) a full run would give for those times.

Chunks: frame ``i`` at time ``t`` uses audio chunk ``floor(t)`` (chunk ``k`` covers
``[k s, k+1 s)`` of the timeline; time 0 is the first video frame and the first audio sample).
"""

from __future__ import annotations

import math

import numpy as np

from avsegcli.errors import AvsegError

#: where in each interval the sampled frame sits (the benchmark's 15/16)
SAMPLE_POSITION = 15.0 / 16.0
#: tolerance for comparing timestamps rounded to 1 us
_TIME_EPS = 1e-6


def _frame_count_and_times(info) -> tuple[int, np.ndarray]:
    times = np.asarray(getattr(info, "frame_times", np.zeros(0)), dtype=np.float64)
    n = int(info.num_frames)
    if times.shape[0] != n:  # an info built by hand: assume constant rate
        fps = float(info.fps) if info.fps else 1.0
        times = np.arange(n, dtype=np.float64) / fps
    return n, times


def is_constant_rate(info) -> bool:
    """True when every frame ``i`` is shown within half a frame period of ``i / fps``."""
    n, times = _frame_count_and_times(info)
    fps = float(info.fps or 0.0)
    if n < 2 or fps <= 0:
        return True
    drift = np.abs(times - times[0] - np.arange(n, dtype=np.float64) / fps)
    return bool(drift.max() <= 0.5 / fps)


def benchmark_indices(num_frames: int, native_fps: float) -> np.ndarray:
    """AVSBench's one-frame-per-second indices: ``[ceil(N/F)]`` int64, ``F = round(native_fps)``."""
    n = int(num_frames)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    f = max(1, int(round(native_fps)))
    seconds = -(-n // f)
    idx = [min(int(l * f + SAMPLE_POSITION * f), n - 1) for l in range(seconds)]
    return np.asarray(idx, dtype=np.int64)


def check_window(start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """Validate a ``[start, end)`` window in seconds: finite, ``>= 0``, ``start < end``; AvsegError otherwise."""
    for name, v in (("--start", start), ("--end", end)):
        if v is not None and (not math.isfinite(v) or v < 0):
            raise AvsegError(f"{name} must be a finite number of seconds >= 0, got {v}")
    if start is not None and end is not None and not start < end:
        raise AvsegError(f"--start ({start}) must be before --end ({end})")
    return start, end


def in_window(timestamps, start: float | None = None, end: float | None = None) -> np.ndarray:
    """``[N]`` bool: ``start <= t < end`` (either bound may be None), to 1 us."""
    t = np.asarray(timestamps, dtype=np.float64)
    keep = np.ones(t.shape, dtype=bool)
    if start is not None:
        keep &= t >= start - _TIME_EPS
    if end is not None:
        keep &= t < end - _TIME_EPS
    return keep


def sample_times(info, fps: float | None = 1, *, start: float | None = None,
                 end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames the sampler takes from a probed video, without decoding anything.

    Returns ``(frame_indices [N] int64, timestamps [N] float64 seconds)``, in time order.
    See the module docstring for the exact rules of ``fps`` (1 = benchmark rule, r > 0 =
    by timestamp, None/0 = every frame). ``start``/``end``: keep only the frames with ``start <= t < end``.
    """
    n, times = _frame_count_and_times(info)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    if fps is None or fps == 0:
        idx = np.arange(n, dtype=np.int64)
    elif fps < 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be > 0, or None/0 for every frame; got {fps}")
    elif fps == 1 and is_constant_rate(info):
        idx = benchmark_indices(n, info.fps)
    else:
        r = float(fps)
        intervals = int(math.floor(r * times[-1] + _TIME_EPS)) + 1
        targets = (np.arange(intervals, dtype=np.float64) + SAMPLE_POSITION) / r
        idx = np.searchsorted(times, targets + _TIME_EPS, side="right") - 1
        idx = np.clip(idx, 0, n - 1).astype(np.int64)
    if start is not None or end is not None:
        idx = idx[in_window(times[idx], start, end)]
    return idx, times[idx]


def chunk_indices(timestamps) -> np.ndarray:
    """Audio chunk of each timestamp: ``floor(t)`` (negative times -> chunk 0): ``[N]`` int64."""
    t = np.asarray(timestamps, dtype=np.float64)
    return np.maximum(np.floor(t + _TIME_EPS), 0).astype(np.int64)


def unique_chunks(chunks) -> tuple[np.ndarray, np.ndarray]:
    """``(chunk_ids [C], rows [N])``: the distinct chunks (sorted) and each frame's row in them."""
    ids, rows = np.unique(np.asarray(chunks, dtype=np.int64), return_inverse=True)
    return ids.astype(np.int64), rows.reshape(-1).astype(np.int64)
