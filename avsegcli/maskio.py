"""Mask folders as ``avseg run`` writes them and ``avseg render``/``avseg eval --pred`` read them.

Layout of one video's folder ``DIR/<stem>/``::

    000023.png ...   one mask per sampled frame, named by source frame index (--format png)
                     binary: 8-bit grey 0/255; semantic: palette PNG, pixel value = class id (AVSS colours)
    masks.npz        instead of PNGs (--format npz): masks [N,H,W] uint8 (0/1 or class ids),
                     frame_indices [N] int64, timestamps [N] float64, and probs with --save-probs
    masks.json       instead (--format rle): COCO compressed RLE per frame and class, YouTube-VIS-like
                     (see avsegcli.maskrle); --format all writes the PNGs, masks.npz and masks.json
    meta.json        written last: source, size, fps, model, per-frame records (see VideoMaskWriter.finish)

A folder is built under ``DIR/.<stem>.partial`` and renamed to ``DIR/<stem>`` once complete, so a folder with a
``meta.json`` always has all its masks; an interrupted run leaves only a ``.partial`` folder behind.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from avsegcli.errors import AvsegError
from avsegcli.palette import voc_palette

META = "meta.json"
NPZ = "masks.npz"
#: mask formats of ``avseg run --format``: all = png + npz + rle
FORMATS = ("png", "npz", "rle", "all")


def mask_filename(frame_index: int) -> str:
    return f"{int(frame_index):06d}.png"


def mask_stats(mask: np.ndarray) -> tuple[list[int], float]:
    """(sorted non-zero class ids present, fraction of non-zero pixels) of a ``[H, W]`` uint8 mask, from one
    ``np.bincount`` (linear, no sort as ``np.unique`` does)."""
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).reshape(-1), minlength=1)
    total = int(counts.sum())
    return [int(c) for c in np.flatnonzero(counts[1:]) + 1], (float(total - counts[0]) / total if total else 0.0)


def save_mask_png(path: str | Path, mask: np.ndarray, semantic: bool) -> None:
    """``mask``: ``[H, W]`` uint8, 0/1 (binary, saved 0/255) or class ids (semantic, saved as a palette PNG)."""
    if semantic:
        img = Image.fromarray(mask.astype(np.uint8), mode="P")
        img.putpalette(voc_palette(256).reshape(-1).tolist())
    else:
        img = Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L")
    img.save(path)


def load_mask_png(path: str | Path, semantic: bool) -> np.ndarray:
    """Inverse of :func:`save_mask_png`: ``[H, W]`` uint8 (0/1 or class ids)."""
    with Image.open(path) as img:
        if semantic:
            if img.mode != "P":
                raise AvsegError("is not a palette (class-id) PNG", path=path)
            return np.asarray(img, dtype=np.uint8).copy()
        return (np.asarray(img.convert("L")) > 127).astype(np.uint8)


class VideoMaskWriter:
    """Collects one video's masks in a ``.partial`` folder and publishes it with :meth:`finish`."""

    def __init__(self, out_root: str | Path, stem: str, *, fmt: str = "png", semantic: bool = False, save_probs: bool = False) -> None:
        if fmt not in FORMATS:
            raise AvsegError(f"unknown mask format {fmt!r} ({', '.join(FORMATS)})")
        self.final = Path(out_root) / stem
        self.partial = Path(out_root) / f".{stem}.partial"
        self.fmt, self.semantic, self.save_probs = fmt, semantic, save_probs
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        self.records: list[dict[str, Any]] = []
        self._masks: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self._segments: list[list[dict[str, Any]]] = []  # --format rle/all: COCO RLE segments per frame
        self._lock = threading.Lock()

    def add(self, *, frame_index: int, timestamp: float, chunk: int, mask: np.ndarray, probs: np.ndarray | None = None) -> None:
        """``mask``: ``[H, W]`` uint8 at the source size; ``probs``: optional float array for --save-probs.
        Thread-safe: ``avseg run`` calls it from a pool of post-processing threads (encoding runs in parallel, the
        lists are appended together under a lock so they stay aligned)."""
        classes, area = mask_stats(mask)
        rec: dict[str, Any] = {"frame_index": int(frame_index), "timestamp": round(float(timestamp), 6), "chunk": int(chunk),
                               "sounding_area": round(area, 6), "classes": classes}
        if self.fmt in ("png", "all"):
            rec["file"] = mask_filename(frame_index)
            save_mask_png(self.partial / rec["file"], mask, self.semantic)
        segments = None
        if self.fmt in ("rle", "all"):
            from avsegcli.maskrle import encode_segments

            segments = encode_segments(mask, self.semantic)
        with self._lock:
            if self.fmt in ("npz", "all"):
                self._masks.append(mask.astype(np.uint8))
                if self.save_probs and probs is not None:
                    self._probs.append(probs.astype(np.float16))
            if segments is not None:
                self._segments.append(segments)
            self.records.append(rec)

    def finish(self, meta: dict[str, Any]) -> Path:
        """Write the npz (if any) and ``meta.json`` last, then rename the folder into place."""
        order = np.argsort([r["frame_index"] for r in self.records], kind="stable")
        self.records = [self.records[i] for i in order]
        if self.fmt in ("npz", "all"):
            arrays = {
                "masks": np.stack(self._masks)[order] if self._masks else np.zeros((0, 0, 0), np.uint8),
                "frame_indices": np.array([r["frame_index"] for r in self.records], dtype=np.int64),
                "timestamps": np.array([r["timestamp"] for r in self.records], dtype=np.float64),
            }
            if self._probs:
                arrays["probs"] = np.stack(self._probs)[order]
            np.savez_compressed(self.partial / NPZ, **arrays)
        if self.fmt in ("rle", "all"):
            from avsegcli.maskrle import RLE_FILE, rle_document, write_rle

            frames = [{k: r[k] for k in ("frame_index", "timestamp", "chunk")} | {"segments": self._segments[i]}
                      for r, i in zip(self.records, order)]
            write_rle(self.partial / RLE_FILE, rle_document(meta, frames, self.semantic))
        full = {**meta, "format": self.fmt, "semantic": self.semantic, "num_frames": len(self.records), "frames": self.records}
        tmp = self.partial / (META + ".tmp")
        tmp.write_text(json.dumps(full, indent=1))
        os.replace(tmp, self.partial / META)
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.partial, self.final)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / META).is_file()


@dataclass
class MaskSet:
    """One video's saved masks: ``masks [N, H, W]`` uint8, ``frame_indices [N]``, ``timestamps [N]``, and meta."""

    masks: np.ndarray
    frame_indices: np.ndarray
    timestamps: np.ndarray
    semantic: bool
    meta: dict[str, Any]


def read_masks_dir(folder: str | Path) -> MaskSet:
    """Read a folder written by :class:`VideoMaskWriter` (png, npz, rle; all is read from its PNGs). Raises AvsegError with a one-line reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AvsegError("no such mask folder", path=folder)
    meta_path = folder / META
    if not meta_path.is_file():
        raise AvsegError("has no meta.json (not an avseg run output, or an unfinished one)", path=folder)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AvsegError(f"unreadable meta.json ({exc})", path=meta_path) from None
    semantic = bool(meta.get("semantic"))
    frames = meta.get("frames", [])
    if meta.get("format") == "rle":
        from avsegcli.maskrle import RLE_FILE, read_rle

        masks, idx, ts, _ = read_rle(folder / RLE_FILE, semantic)
        return MaskSet(masks if len(idx) else np.zeros((0, 0, 0), np.uint8), idx, ts, semantic, meta)
    if meta.get("format") == "npz":
        try:
            with np.load(folder / NPZ) as data:
                return MaskSet(data["masks"], data["frame_indices"], data["timestamps"], semantic, meta)
        except (OSError, KeyError, ValueError) as exc:
            raise AvsegError(f"unreadable {NPZ} ({exc})", path=folder) from None
    missing = [f["file"] for f in frames if not (folder / f["file"]).is_file()]
    if missing:
        raise AvsegError(f"{len(missing)} mask file(s) listed in meta.json are missing, e.g. {', '.join(missing[:3])}", path=folder)
    masks = np.stack([load_mask_png(folder / f["file"], semantic) for f in frames]) if frames else np.zeros((0, 0, 0), np.uint8)
    return MaskSet(masks, np.array([f["frame_index"] for f in frames], dtype=np.int64),
                   np.array([f["timestamp"] for f in frames], dtype=np.float64), semantic, meta)
