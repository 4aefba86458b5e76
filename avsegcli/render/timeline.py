"""Which saved mask every source frame shows, checks that masks and video belong together, audio levels.

Masks are read lazily: a PNG folder keeps only its file list in memory and each mask is decoded when first
shown (a held mask is decoded once), so rendering an hour of 1080p at 1 mask/s does not hold 3600 masks.
An rle folder (``masks.json``) keeps only the run-length segments and decodes a mask when it is shown; an npz
folder is read whole by :func:`avsegcli.masks.io.read_masks_dir` (``np.load`` cannot slice a compressed array).

Hold rules, for a source frame shown at ``t`` seconds:

``second`` (default)
    the mask of the second the frame belongs to: a mask whose ``chunk`` (``meta.json`` per-frame record;
    ``floor(timestamp)`` when absent) equals ``floor(t)``; of several such masks the nearest in time. A
    second without a mask falls back to ``nearest``.
``nearest``
    the mask whose timestamp is nearest to ``t`` (the earlier one on a tie).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from avsegcli.errors import AvsegError
from avsegcli.masks.io import META, load_mask_png, read_masks_dir
from avsegcli.masks.results import chunks_of
from avsegcli.masks.rle import RLE_FILE, decode_segments
from avsegcli.media.audio import iter_seconds as stream_seconds
from avsegcli.media.logmel import SAMPLE_RATE

HOLD_MODES = ("second", "nearest")
_EPS = 1e-6


@dataclass
class MaskTrack:
    """One video's saved masks, in frame order, loaded on demand.

    ``frame_indices``/``timestamps``/``chunks`` are ``[M]``; ``size`` is ``(H, W)``; ``get(row)`` returns
    mask ``row`` as ``[H, W]`` uint8 (0/1 or class ids).
    """

    folder: Path
    frame_indices: np.ndarray
    timestamps: np.ndarray
    chunks: np.ndarray
    semantic: bool
    meta: dict[str, Any]
    size: tuple[int, int]
    _files: list[Path] | None = None
    _masks: np.ndarray | None = field(default=None, repr=False)
    _segments: list[list[dict[str, Any]]] | None = field(default=None, repr=False)  # rle: decoded on demand

    def __len__(self) -> int:
        return int(self.frame_indices.shape[0])

    def get(self, row: int) -> np.ndarray:
        if self._masks is not None:
            return self._masks[row]
        if self._segments is not None:
            return decode_segments(self._segments[row], self.size, self.semantic)
        mask = load_mask_png(self._files[row], self.semantic)
        if mask.shape != self.size:
            raise AvsegError(f"mask is {mask.shape[1]}x{mask.shape[0]}, the others {self.size[1]}x{self.size[0]}",
                             path=self._files[row])
        return mask


def open_masks(folder: str | Path) -> MaskTrack:
    """Open a mask folder written by ``avseg run`` (see :mod:`avsegcli.masks.io`) without decoding PNG masks."""
    folder = Path(folder)
    meta_path = folder / META
    if not (folder.is_dir() and meta_path.is_file()):
        read_masks_dir(folder)  # raises the reader's own one-line reason
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AvsegError(f"unreadable meta.json ({exc})", path=meta_path) from None
    if meta.get("format") == "rle":  # masks.json: keep the segments, decode a mask when it is shown
        try:
            doc = json.loads((folder / RLE_FILE).read_text())
            frames = doc["frames"]
            size = (int(doc["height"]), int(doc["width"]))
            indices = np.array([int(f["frame_index"]) for f in frames], dtype=np.int64)
            times = np.array([float(f["timestamp"]) for f in frames], dtype=np.float64)
            segments = [f.get("segments") or [] for f in frames]
        except FileNotFoundError:
            raise AvsegError(f"{RLE_FILE} is missing", path=folder) from None
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise AvsegError(f"unreadable {RLE_FILE} ({type(exc).__name__}: {exc})", path=folder / RLE_FILE) from None
        return MaskTrack(folder, indices, times, chunks_of(meta, times), bool(meta.get("semantic")), meta, size,
                         _segments=segments)
    if meta.get("format") == "npz":  # read whole (np.load cannot slice a compressed array)
        ms = read_masks_dir(folder)
        size = tuple(int(s) for s in ms.masks.shape[1:]) if ms.masks.ndim == 3 else (0, 0)
        return MaskTrack(folder, ms.frame_indices.astype(np.int64), ms.timestamps.astype(np.float64),
                         ms.chunk_indices, ms.semantic, ms.meta, size, _masks=ms.masks)
    frames = meta.get("frames") or []
    try:
        files = [folder / f["file"] for f in frames]
        indices = np.array([int(f["frame_index"]) for f in frames], dtype=np.int64)
        times = np.array([float(f["timestamp"]) for f in frames], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise AvsegError(f"meta.json has a malformed frame record ({exc!r})", path=meta_path) from None
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise AvsegError(f"{len(missing)} mask file(s) listed in meta.json are missing, e.g. {', '.join(missing[:3])}",
                         path=folder)
    sizes: dict[tuple[int, int], Path] = {}
    for p in files:
        try:
            with Image.open(p) as img:
                sizes.setdefault((img.height, img.width), p)
        except OSError as exc:
            raise AvsegError(f"unreadable mask PNG ({exc})", path=p) from None
    if len(sizes) > 1:
        desc = ", ".join(f"{w}x{h} ({p.name})" for (h, w), p in list(sizes.items())[:3])
        raise AvsegError(f"masks of different sizes in one folder: {desc}", path=folder)
    size = next(iter(sizes)) if sizes else (0, 0)
    return MaskTrack(folder, indices, times, chunks_of(meta, times), bool(meta.get("semantic")), meta, size, _files=files)


def _meta_size(value: Any) -> tuple[int, int] | None:
    """``meta["size"]`` as ``(H, W)``: a ``{"height", "width"}`` dict, or a pair (checked in both orders)."""
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def check_match(track: MaskTrack, video: str | Path, num_frames: int, size: tuple[int, int],
                frame_times: np.ndarray) -> None:
    """Raise :class:`AvsegError` (path = the mask folder, one-line reason) unless the masks fit the video.

    Checks: at least one mask; mask size == frame size; ``meta.json``'s ``size`` (and ``width``/``height``)
    equal the frame size; its ``source`` has the video's file name; frame indices within the video; and each
    mask's timestamp within half a frame of its frame's time in the video.
    """
    folder, (h, w) = track.folder, size
    vname = Path(video).name
    if len(track) == 0:
        raise AvsegError("has no masks (meta.json lists no frames)", path=folder)
    if track.size != (h, w):
        raise AvsegError(f"masks are {track.size[1]}x{track.size[0]} but {vname} is {w}x{h}: "
                         "these masks were not made from this video", path=folder)
    meta = track.meta
    msize = _meta_size(meta.get("size"))
    if msize is None and "width" in meta and "height" in meta:
        msize = (int(meta["height"]), int(meta["width"]))
    if msize is not None and msize not in ((h, w), (w, h)):
        raise AvsegError(f"meta.json says the source is {msize[1]}x{msize[0]} but {vname} is {w}x{h}", path=folder)
    source = meta.get("source")
    if isinstance(source, str) and source and Path(source).name != vname:
        raise AvsegError(f"meta.json says these masks are of {Path(source).name!r}, not {vname!r}", path=folder)
    bad = track.frame_indices[(track.frame_indices < 0) | (track.frame_indices >= num_frames)]
    if bad.size:
        raise AvsegError(f"mask for frame {int(bad[0])} but {vname} has {num_frames} frames (0..{num_frames - 1})",
                         path=folder)
    fps = (num_frames - 1) / max(frame_times[-1] - frame_times[0], _EPS) if num_frames > 1 else 1.0
    off = np.flatnonzero(np.abs(frame_times[track.frame_indices] - track.timestamps) > 0.5 / fps + 1e-3)
    if off.size:
        first = int(off[0])
        fi = int(track.frame_indices[first])
        raise AvsegError(f"frame {fi} is at {frame_times[fi]:.3f} s in {vname} but at {track.timestamps[first]:.3f} s "
                         "in meta.json: these masks were made from another version of the video", path=folder)


def _nearest(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Position in sorted ``times`` of the value nearest each target (the earlier one on a tie)."""
    right = np.clip(np.searchsorted(times, targets, side="left"), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    take_left = np.abs(targets - times[left]) <= np.abs(times[right] - targets)
    return np.where(take_left, left, right)


def frame_to_mask(frame_times: np.ndarray, mask_times: np.ndarray, mask_chunks: np.ndarray,
                  hold: str = "second") -> np.ndarray:
    """``[N]`` int64: the mask row each of ``N`` source frames shows (see the module docstring for ``hold``)."""
    if hold not in HOLD_MODES:
        raise AvsegError(f"unknown hold mode {hold!r} (second or nearest)")
    frame_times = np.asarray(frame_times, dtype=np.float64)
    order = np.argsort(np.asarray(mask_times, dtype=np.float64), kind="stable")
    times, chunks = np.asarray(mask_times, dtype=np.float64)[order], np.asarray(mask_chunks, dtype=np.int64)[order]
    rows = _nearest(times, frame_times)
    if hold == "second":
        frame_chunks = np.maximum(np.floor(frame_times + _EPS), 0).astype(np.int64)
        for c in np.intersect1d(np.unique(frame_chunks), chunks):
            sel = frame_chunks == c
            cand = np.flatnonzero(chunks == c)
            rows[sel] = cand[_nearest(times[cand], frame_times[sel])]
    return order[rows].astype(np.int64)


def audio_rms(path: str | Path, starts: np.ndarray, ends: np.ndarray, *, channels: int | None = None,
              iter_seconds: Callable | None = None) -> np.ndarray:
    """RMS of the 16 kHz mono audio in each window ``[starts[i], ends[i])`` seconds: ``[N]`` float64.

    Audio is decoded by ffmpeg and streamed one second at a time; only running sums at the window bounds
    are kept. Windows past the end of the audio count only the samples that exist (0 when none).
    """
    iter_seconds = iter_seconds or stream_seconds
    s = np.maximum(np.round(np.asarray(starts, dtype=np.float64) * SAMPLE_RATE), 0).astype(np.int64)
    e = np.maximum(np.round(np.asarray(ends, dtype=np.float64) * SAMPLE_RATE), s).astype(np.int64)
    bounds = np.concatenate([s, e])
    order = np.argsort(bounds, kind="stable")
    sums = np.zeros(bounds.shape[0], dtype=np.float64)
    k, total, offset = 0, 0.0, 0
    for block in iter_seconds(path, channels=channels, dtype=np.float64):
        prefix = total + np.concatenate([[0.0], np.cumsum(np.square(block, dtype=np.float64))])
        end = offset + block.shape[0]
        while k < order.shape[0] and bounds[order[k]] <= end:
            sums[order[k]] = prefix[bounds[order[k]] - offset]
            k += 1
        total, offset = float(prefix[-1]), end
    sums[order[k:]] = total
    n = np.minimum(e, offset) - np.minimum(s, offset)
    energy = np.maximum(sums[len(s):] - sums[: len(s)], 0.0)
    return np.where(n > 0, np.sqrt(energy / np.maximum(n, 1)), 0.0)
