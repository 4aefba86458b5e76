"""Masks as COCO run-length encoding in one JSON per video (``avseg run --format rle``: ``DIR/<stem>/masks.json``).

The file is shaped like YouTube-VIS / COCO results, one record per sampled frame, so that tools reading those
(pycocotools, supervision, SAM's ``--convert-to-rle`` consumers) can decode it without avseg::

    {
      "format": "avseg-rle", "version": 1,
      "video": "clip.mp4", "width": 640, "height": 360, "fps": 25.0, "sample_fps": 1.0,
      "model": {"weights": ..., "sha256": ..., "preset": ..., "task": ..., "num_classes": ...},
      "categories": [{"id": 1, "name": "sounding"}],              # AVSS: the 70 classes (id = class id)
      "frames": [
        {"frame_index": 23, "timestamp": 0.92, "chunk": 0,
         "segments": [{"category_id": 1, "category": "sounding", "area": 1234,
                       "segmentation": {"size": [360, 640], "counts": "PQ`0..."}}]},
        {"frame_index": 48, "timestamp": 1.92, "chunk": 1, "segments": []},    # nothing sounds
        ...
      ]
    }

``counts`` is COCO's compressed RLE as a string, made and read by pycocotools (``mask.encode``/``mask.decode``
on a Fortran-ordered uint8 array); ``size`` is ``[H, W]`` at the source video's size. One segment per class
present (binary masks: category 1 "sounding"; AVSS: the class ids and names of :mod:`avsegcli.palette`),
frames in source-frame order.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from avsegcli.errors import AvsegError
from avsegcli.palette import AVSS_CLASS_NAMES

RLE_FILE = "masks.json"
RLE_FORMAT = "avseg-rle"
#: the one category of binary (S4/MS3) masks
SOUNDING = {"id": 1, "name": "sounding"}


def categories(semantic: bool, class_names: Sequence[str] = AVSS_CLASS_NAMES) -> list[dict[str, Any]]:
    """COCO ``categories``: ``[{"id": 1, "name": "sounding"}]`` for binary masks, else every non-background class."""
    if not semantic:
        return [dict(SOUNDING)]
    return [{"id": i, "name": n} for i, n in enumerate(class_names) if i > 0]


def _name(class_id: int, semantic: bool, class_names: Sequence[str]) -> str:
    if not semantic:
        return SOUNDING["name"]
    return class_names[class_id] if 0 <= class_id < len(class_names) else f"class {class_id}"


def encode_segments(mask: np.ndarray, semantic: bool, class_names: Sequence[str] = AVSS_CLASS_NAMES) -> list[dict[str, Any]]:
    """``mask [H, W]`` uint8 (0/1, or class ids) -> one segment per class present (empty list when none)."""
    from pycocotools import mask as cocomask  # lazy: a C extension, needed only for --format rle

    mask = np.asarray(mask)
    ids = [int(c) for c in np.unique(mask) if c != 0]
    if not ids:
        return []
    if not semantic:
        ids = [1]
    layers = np.stack([(mask != 0) if not semantic else (mask == c) for c in ids], axis=-1)
    rles = cocomask.encode(np.asfortranarray(layers.astype(np.uint8)))
    areas = cocomask.area(rles)
    return [{"category_id": c, "category": _name(c, semantic, class_names), "area": int(a),
             "segmentation": {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}}
            for c, r, a in zip(ids, rles, areas)]


def decode_segments(segments: list[dict[str, Any]], size: tuple[int, int], semantic: bool) -> np.ndarray:
    """Inverse of :func:`encode_segments`: ``[H, W]`` uint8 (0/1 or class ids; a later segment wins overlaps)."""
    from pycocotools import mask as cocomask  # lazy: a C extension, needed only for --format rle

    out = np.zeros(size, dtype=np.uint8)
    for seg in segments:
        rle = seg["segmentation"]
        if [int(s) for s in rle["size"]] != list(size):
            raise ValueError(f"segment of size {rle['size']} in a {list(size)} video")
        counts = rle["counts"]
        with warnings.catch_warnings():  # pycocotools 2.0.x on numpy 2: a DeprecationWarning inside its decode
            warnings.simplefilter("ignore", DeprecationWarning)
            m = cocomask.decode({"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
        out[m.astype(bool)] = int(seg["category_id"]) if semantic else 1
    return out


def rle_document(meta: dict[str, Any], frames: list[dict[str, Any]], semantic: bool,
                 class_names: Sequence[str] = AVSS_CLASS_NAMES) -> dict[str, Any]:
    """The ``masks.json`` dict from a video's ``meta`` (as ``meta.json``) and its frame records with ``segments``."""
    source = meta.get("source")
    return {
        "format": RLE_FORMAT, "version": 1,
        "video": Path(source).name if isinstance(source, str) else None, "source": source,
        "width": meta.get("width"), "height": meta.get("height"), "fps": meta.get("fps"),
        "sample_fps": meta.get("sample_fps"), "model": meta.get("model"), "semantic": semantic,
        "categories": categories(semantic, class_names), "frames": frames,
    }


def write_rle(path: str | Path, doc: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(doc, separators=(",", ":")))


def read_rle(path: str | Path, semantic: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """``masks.json`` -> ``(masks [N, H, W] uint8, frame_indices [N] int64, timestamps [N] float64, frame records)``.

    Raises AvsegError (path = the file) with a one-line reason when the file is not such a document.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        sem = bool(doc.get("semantic")) if semantic is None else semantic
        h, w = int(doc["height"]), int(doc["width"])
        frames = doc["frames"]
        masks = np.zeros((len(frames), h, w), dtype=np.uint8)
        for i, f in enumerate(frames):
            masks[i] = decode_segments(f.get("segments") or [], (h, w), sem)
        idx = np.array([int(f["frame_index"]) for f in frames], dtype=np.int64)
        ts = np.array([float(f["timestamp"]) for f in frames], dtype=np.float64)
    except FileNotFoundError:
        raise AvsegError(f"{RLE_FILE} is missing", path=path.parent) from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise AvsegError(f"unreadable {RLE_FILE} ({type(exc).__name__}: {exc})", path=path) from None
    return masks, idx, ts, frames
