"""Mask folders as ``avseg run`` writes them and ``avseg render``/``avseg eval --pred`` read them.

Layout of one video's folder ``DIR/<stem>/``::

    000023.png ...   one mask per sampled frame, named by source frame index (--format png)
                     binary: 8-bit grey 0/255; semantic: palette PNG, pixel value = class id (AVSS colours)
    masks.npz        instead of PNGs (--format npz): masks [N,H,W] uint8 (0/1 or class ids),
                     frame_indices [N] int64, timestamps [N] float64, and probs with --save-probs
    masks.json       instead (--format rle): COCO compressed RLE per frame and class, YouTube-VIS-like
                     (see avsegcli.masks.rle); --format all writes the PNGs, masks.npz and masks.json
    meta.json        written last: source, size, fps, model, per-frame records (see VideoMaskWriter.finish)

A folder is built under ``DIR/.<stem>.partial`` and renamed to ``DIR/<stem>`` once complete, so a folder with a
``meta.json`` always has all its masks; an interrupted run leaves only a ``.partial`` folder behind.

Host memory does not grow with the video's length in any format: PNGs are written as frames arrive, and what
``masks.npz`` / ``masks.json`` need is spilled as it arrives to files in the ``.partial`` folder (each mask and
probability map zlib-compressed, each frame's RLE record as its JSON text) and streamed from them, one frame at a
time in frame order, into the final files by :meth:`VideoMaskWriter.finish`; the spill files are removed before the
folder is published. Only the small per-frame records of ``meta.json`` stay in memory.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from numpy.lib import format as npformat
from PIL import Image

from avsegcli.errors import AvsegError
from avsegcli.masks.results import VideoMasks
from avsegcli.masks.rle import RLE_FILE, encode_segments, read_rle, rle_document, write_rle
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


#: spill files of a ``.partial`` folder (removed before it is published; hidden names, never a mask file's)
_SPILL_MASKS, _SPILL_PROBS, _SPILL_RLE = ".masks.spill", ".probs.spill", ".rle.spill"
#: zlib level of spilled masks and probs: masks are mostly runs (a 1080p one with two objects spills in 13 KiB); level 1 is fast
_SPILL_LEVEL = 1


class _Spill:
    """Blobs appended to one file in arrival order (the caller serialises :meth:`append`), read back by slot."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: io.BufferedRandom | None = None
        self._spans: list[tuple[int, int]] = []  # (offset, length) per slot
        self._end = 0

    def __len__(self) -> int:
        return len(self._spans)

    def append(self, blob: bytes) -> int:
        if self._f is None:
            self._f = open(self.path, "w+b")
        self._f.seek(self._end)
        self._f.write(blob)
        self._spans.append((self._end, len(blob)))
        self._end += len(blob)
        return len(self._spans) - 1

    def read(self, slot: int) -> bytes:
        assert self._f is not None
        off, n = self._spans[slot]
        self._f.seek(off)
        blob = self._f.read(n)
        if len(blob) != n:
            raise OSError(f"spill file {self.path} is truncated")
        return blob

    def close(self, remove: bool = False) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if remove:
            self.path.unlink(missing_ok=True)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The ``.npy`` header ``np.save`` writes for a C-ordered array of this shape and dtype (version 1.0, else 2.0)."""
    d = npformat.header_data_from_array_1_0(np.empty(0, dtype))
    d["shape"] = tuple(int(x) for x in shape)
    buf = io.BytesIO()
    try:
        npformat.write_array_header_1_0(buf, d)
    except ValueError:  # header over 64 KiB: only for absurd ranks, as np.save does
        buf = io.BytesIO()
        npformat.write_array_header_2_0(buf, d)
    return buf.getvalue()


def _write_npy(zf: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: np.dtype, rows: Iterable[bytes]) -> None:
    """One ``name.npy`` member of an ``np.savez_compressed``-style archive, its data given row by row (C order)."""
    with zf.open(name + ".npy", "w", force_zip64=True) as f:
        f.write(_npy_header(shape, dtype))
        for row in rows:
            f.write(row)


class VideoMaskWriter:
    """Collects one video's masks in a ``.partial`` folder and publishes it with :meth:`finish`.

    Memory is bounded whatever the video's length: masks, probs (``save_probs``) and RLE records are spilled to
    files in the ``.partial`` folder as they arrive and streamed into ``masks.npz`` / ``masks.json`` by
    :meth:`finish` (see the module docstring)."""

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
        # per record (same order as self.records, appended together under the lock): its slot in each spill file
        self._masks = _Spill(self.partial / _SPILL_MASKS)
        self._probs = _Spill(self.partial / _SPILL_PROBS)
        self._rle = _Spill(self.partial / _SPILL_RLE)  # --format rle/all: each frame's masks.json record, as JSON text
        self._mask_shape: tuple[int, ...] | None = None
        self._probs_shape: tuple[int, ...] | None = None
        self._probs_slots: list[int | None] = []
        self._lock = threading.Lock()

    def _check_shape(self, attr: str, what: str, shape: tuple[int, ...]) -> None:
        known = getattr(self, attr)
        if known is None:
            setattr(self, attr, shape)
        elif known != shape:
            raise AvsegError(f"{what} of shape {list(shape)} after {list(known)}: all frames of one video must share one {what} shape",
                             path=self.partial)

    def add(self, *, frame_index: int, timestamp: float, chunk: int, mask: np.ndarray, probs: np.ndarray | None = None) -> None:
        """``mask``: ``[H, W]`` uint8 at the source size; ``probs``: optional float array for --save-probs.
        Thread-safe: ``avseg run`` calls it from a pool of post-processing threads (encoding and compression run in
        parallel; the spill files and the records are appended together under a lock so they stay aligned)."""
        classes, area = mask_stats(mask)
        rec: dict[str, Any] = {"frame_index": int(frame_index), "timestamp": round(float(timestamp), 6), "chunk": int(chunk),
                               "sounding_area": round(area, 6), "classes": classes}
        if self.fmt in ("png", "all"):
            rec["file"] = mask_filename(frame_index)
            save_mask_png(self.partial / rec["file"], mask, self.semantic)
        mask_blob = probs_blob = rle_blob = None
        if self.fmt in ("npz", "all"):
            m = np.ascontiguousarray(mask, dtype=np.uint8)
            mask_blob = (m.shape, zlib.compress(m, _SPILL_LEVEL))
            if self.save_probs and probs is not None:
                p = np.ascontiguousarray(probs, dtype=np.float16)
                probs_blob = (p.shape, zlib.compress(p, _SPILL_LEVEL))
        if self.fmt in ("rle", "all"):
            frame = {k: rec[k] for k in ("frame_index", "timestamp", "chunk")} | {"segments": encode_segments(mask, self.semantic)}
            rle_blob = json.dumps(frame, separators=(",", ":")).encode("ascii")  # as write_rle would put it in the list
        with self._lock:
            if mask_blob is not None:
                self._check_shape("_mask_shape", "mask", mask_blob[0])
            if probs_blob is not None:
                self._check_shape("_probs_shape", "probs", probs_blob[0])
            if mask_blob is not None:
                self._masks.append(mask_blob[1])
                self._probs_slots.append(None if probs_blob is None else self._probs.append(probs_blob[1]))
            if rle_blob is not None:
                self._rle.append(rle_blob)
            self.records.append(rec)

    def _write_npz(self, path: Path, order: np.ndarray) -> None:
        """``masks.npz`` as ``np.savez_compressed(masks=..., frame_indices=..., timestamps=...[, probs=...])`` writes it,
        the masks and probs streamed from the spill files one frame at a time in ``order``."""
        n = len(order)
        probs_slots = [self._probs_slots[i] for i in order]
        with_probs = any(s is not None for s in probs_slots)
        if with_probs and any(s is None for s in probs_slots):
            missing = sum(s is None for s in probs_slots)
            raise AvsegError(f"--save-probs: {missing} of {n} frames came without probs", path=self.partial)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            if n:
                assert self._mask_shape is not None
                _write_npy(zf, "masks", (n, *self._mask_shape), np.dtype(np.uint8),
                           (zlib.decompress(self._masks.read(int(i))) for i in order))
            else:
                _write_npy(zf, "masks", (0, 0, 0), np.dtype(np.uint8), ())
            for name, values, dtype in (("frame_indices", [r["frame_index"] for r in self.records], np.int64),
                                        ("timestamps", [r["timestamp"] for r in self.records], np.float64)):
                arr = np.array(values, dtype=dtype)
                _write_npy(zf, name, arr.shape, arr.dtype, (arr.tobytes(),))
            if with_probs:
                assert self._probs_shape is not None
                _write_npy(zf, "probs", (n, *self._probs_shape), np.dtype(np.float16),
                           (zlib.decompress(self._probs.read(s)) for s in probs_slots))

    def _write_rle(self, path: Path, meta: dict[str, Any], order: np.ndarray) -> None:
        """``masks.json`` byte for byte as ``write_rle(path, rle_document(meta, frames, semantic))``, the frame records
        streamed from the spill file in ``order``."""
        head = json.dumps(rle_document(meta, [], self.semantic), separators=(",", ":"))
        tail = "[]}"
        if not head.endswith('"frames":' + tail):  # frames not the document's last key any more: build it whole
            frames = [json.loads(self._rle.read(int(i))) for i in order]
            write_rle(path, rle_document(meta, frames, self.semantic))
            return
        with open(path, "wb") as f:
            f.write(head[: -len(tail)].encode("ascii") + b"[")
            for k, i in enumerate(order):
                if k:
                    f.write(b",")
                f.write(self._rle.read(int(i)))
            f.write(b"]}")

    def finish(self, meta: dict[str, Any]) -> Path:
        """Write the npz and/or RLE file (if any) and ``meta.json`` last, then rename the folder into place."""
        order = np.argsort([r["frame_index"] for r in self.records], kind="stable")
        self.records = [self.records[i] for i in order]
        if self.fmt in ("npz", "all"):
            self._write_npz(self.partial / NPZ, order)
        if self.fmt in ("rle", "all"):
            self._write_rle(self.partial / RLE_FILE, meta, order)
        self._close_spills(remove=True)
        full = {**meta, "format": self.fmt, "semantic": self.semantic, "num_frames": len(self.records), "frames": self.records}
        tmp = self.partial / (META + ".tmp")
        tmp.write_text(json.dumps(full, indent=1))
        os.replace(tmp, self.partial / META)
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.partial, self.final)
        return self.final

    def _close_spills(self, remove: bool) -> None:
        for spill in (self._masks, self._probs, self._rle):
            spill.close(remove=remove)

    def abort(self) -> None:
        try:
            self._close_spills(remove=False)
        except OSError:
            pass
        shutil.rmtree(self.partial, ignore_errors=True)


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / META).is_file()


#: the old name of a saved video's masks: the same type as a prediction in memory (:mod:`avsegcli.masks.results`)
MaskSet = VideoMasks


def read_masks_dir(folder: str | Path) -> VideoMasks:
    """Read a folder written by :class:`VideoMaskWriter` (png, npz, rle; all is read from its PNGs): a
    :class:`~avsegcli.masks.results.VideoMasks` with ``meta`` (``meta.json``), ``chunk_indices`` and ``has_audio``
    from it, no ``probs`` (``np.load(folder / "masks.npz")["probs"]`` has them). Raises AvsegError with a one-line
    reason."""
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
    has_audio = meta.get("has_audio")
    if meta.get("format") == "rle":
        masks, idx, ts, _ = read_rle(folder / RLE_FILE, semantic)
        return VideoMasks(masks if len(idx) else np.zeros((0, 0, 0), np.uint8), idx, ts, semantic, meta, has_audio=has_audio)
    if meta.get("format") == "npz":
        try:
            with np.load(folder / NPZ) as data:
                return VideoMasks(data["masks"], data["frame_indices"], data["timestamps"], semantic, meta,
                                  has_audio=has_audio)
        except (OSError, KeyError, ValueError) as exc:
            raise AvsegError(f"unreadable {NPZ} ({exc})", path=folder) from None
    missing = [f["file"] for f in frames if not (folder / f["file"]).is_file()]
    if missing:
        raise AvsegError(f"{len(missing)} mask file(s) listed in meta.json are missing, e.g. {', '.join(missing[:3])}", path=folder)
    masks = np.stack([load_mask_png(folder / f["file"], semantic) for f in frames]) if frames else np.zeros((0, 0, 0), np.uint8)
    return VideoMasks(masks, np.array([f["frame_index"] for f in frames], dtype=np.int64),
                      np.array([f["timestamp"] for f in frames], dtype=np.float64), semantic, meta, has_audio=has_audio)
