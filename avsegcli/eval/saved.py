"""Saved predictions for ``avseg eval --pred DIR``: find them, check they are all there, read them per clip.

Two layouts are read (detected per folder: any ``DIR/<clip>/meta.json`` means the second):

* ``benchmark``: as the released test scripts (and ``--save-pred``) write them. S4:
  ``DIR/<category>/<name>/<name>_<i>.png`` (``DIR/<name>/...`` is accepted too), MS3 ``DIR/<name>/<name>_<i>.png``,
  binary 0/255; AVSS ``DIR/<uid>/<uid>_<i>.png`` VOC colours (RGB or palette). ``i`` from 0; AVSS needs the
  clip's real frames (5 for v1s/v1m, 10 for v2) and reads padded frames 5..9 as background when absent.
* ``avseg-run``: ``avseg run`` output folders ``DIR/<name>/`` (``meta.json`` + PNGs or ``masks.npz``); the first
  masks in frame order are the clip's frames.

Masks whose size differs from the scoring size are resized with nearest (PIL), as the benchmark readers do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from avsegcli.data import (
    ClipInfo, binary_prediction_paths, load_binary_prediction, load_semantic_prediction, semantic_prediction_paths,
)
from avsegcli.data.avsbench import load_binary_mask
from avsegcli.data.avss import AVSS_T, FRAME_FLAGS, FRAMES_PER_SUBSET, GT_FLAGS
from avsegcli.errors import AvsegError
from avsegcli.masks.io import META, MaskSet, read_masks_dir
from avsegcli.tasks import Task, task_of

SHOW = 3


def load_targets(ds: Any, index: int) -> dict[str, Any]:
    """Ground truth of clip ``index`` without decoding frames or audio: the dataset item's ``masks`` ``[T,S,S]``
    (float 0/1 for S4/MS3, int64 ids for AVSS), ``mask_valid`` / ``frame_valid`` / ``gt_valid`` ``[T]`` bool,
    ``name``, ``category``, ``subset``. Same files and resizing as ``ds[index]``."""
    c: ClipInfo = ds.clip_info(index)
    s = ds.image_size
    semantic = task_of(ds.task).semantic
    if semantic:
        t = AVSS_T
        masks = torch.zeros(t, s, s, dtype=torch.int64)
        frame_valid = torch.tensor(FRAME_FLAGS[c.subset], dtype=torch.bool)
        gt_valid = torch.tensor(GT_FLAGS[c.subset], dtype=torch.bool)
    else:
        t = ds.frames_per_clip
        masks = torch.zeros(t, s, s)
        frame_valid = torch.ones(t, dtype=torch.bool)
    mask_valid = torch.zeros(t, dtype=torch.bool)
    for i, p in enumerate(c.mask_paths):
        if p is not None:
            masks[i] = ds.load_label(p) if semantic else load_binary_mask(p, s, ds.mask_mode)
            mask_valid[i] = True
    if not semantic:
        gt_valid = mask_valid.clone()
    return {"masks": masks, "mask_valid": mask_valid, "frame_valid": frame_valid, "gt_valid": gt_valid,
            "name": c.name, "category": c.category, "subset": c.subset, "index": index}


def _resize_nearest(masks: np.ndarray, size: int) -> np.ndarray:
    """``[N,H,W]`` uint8 -> ``[N,size,size]`` with PIL nearest (a no-op at the right size)."""
    if masks.shape[1:] == (size, size):
        return masks
    return np.stack([np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST)) for m in masks])


class PredictionSource:
    """The saved masks of ``clips`` under ``pred_dir``; raises one AvsegError listing what is missing."""

    def __init__(self, task: str | Task, pred_dir: str | Path, clips: Sequence[ClipInfo]) -> None:
        self.task = task_of(task)
        self.semantic = self.task.semantic
        self.dir = Path(pred_dir)
        if not self.dir.is_dir():
            raise AvsegError("no such predictions folder", path=self.dir)
        self.layout = "avseg-run" if any((self.dir / c.name / META).is_file() for c in clips) else "benchmark"
        self._where: dict[str, Any] = {}
        self._cache: dict[str, MaskSet] = {}
        missing: list[Path] = []
        missing_clips = 0
        for c in clips:
            lost = self._locate(c)
            missing += lost
            missing_clips += bool(lost)
        if missing:
            first = ", ".join(str(p) for p in missing[:SHOW])
            more = f" (and {len(missing) - SHOW} more)" if len(missing) > SHOW else ""
            what = "folder(s) with meta.json" if self.layout == "avseg-run" else "mask file(s)"
            raise AvsegError(f"predictions missing for {missing_clips} of {len(clips)} clip(s) ({self.layout} layout): "
                             f"{len(missing)} {what} not found: {first}{more}", path=self.dir)
        self.clips = list(clips)

    def _needed(self, c: ClipInfo) -> int:
        return FRAMES_PER_SUBSET[c.subset] if self.semantic else len(c.frame_paths)

    def _locate(self, c: ClipInfo) -> list[Path]:
        """Remember where clip ``c``'s masks are; return the paths that are missing (empty when found)."""
        if self.layout == "avseg-run":
            meta = self.dir / c.name / META
            self._where[c.name] = meta.parent
            return [] if meta.is_file() else [meta]
        n = self._needed(c)
        if self.semantic:
            paths = semantic_prediction_paths(self.dir, c.name, n)
            self._where[c.name] = None
            return [p for p in paths if not p.is_file()]
        options = [c.category, None] if c.category else [None]
        lost: list[Path] = []
        for k, cat in enumerate(options):
            paths = binary_prediction_paths(self.dir, c.name, n, cat)
            absent = [p for p in paths if not p.is_file()]
            if not absent:
                self._where[c.name] = cat
                return []
            if k == 0:
                lost = absent
        return lost

    def _run_masks(self, c: ClipInfo) -> np.ndarray:
        if c.name not in self._cache:
            ms = read_masks_dir(self._where[c.name])
            self._cache = {c.name: ms}  # keep one: square_size() peeks, load() reads it again right after
        ms = self._cache[c.name]
        folder = self._where[c.name]
        if ms.semantic != self.semantic:
            kinds = ("class-id (semantic)", "binary")
            have, need = (kinds[0], kinds[1]) if ms.semantic else (kinds[1], kinds[0])
            raise AvsegError(f"holds {have} masks but task {self.task} needs {need} masks", path=folder)
        n = self._needed(c)
        if ms.masks.shape[0] < n:
            raise AvsegError(f"has {ms.masks.shape[0]} mask(s) but clip {c.name} has {n} frames", path=folder)
        order = np.argsort(ms.frame_indices, kind="stable")
        return ms.masks[order][:n]

    def square_size(self) -> int | None:
        """Side of the first clip's first mask when it is square (the size the masks were saved at), else None."""
        if not self.clips:
            return None
        c = self.clips[0]
        if self.layout == "avseg-run":
            h, w = self._run_masks(c).shape[1:]
        else:
            n = self._needed(c)
            paths = (semantic_prediction_paths(self.dir, c.name, n) if self.semantic
                     else binary_prediction_paths(self.dir, c.name, n, self._where[c.name]))
            try:
                with Image.open(paths[0]) as im:
                    w, h = im.size
            except (OSError, SyntaxError) as err:
                raise AvsegError(f"cannot read predicted mask: {err}", path=paths[0]) from None
        return int(h) if h == w else None

    def load(self, c: ClipInfo, size: int) -> torch.Tensor:
        """Clip ``c``'s masks at ``size``: ``[5,S,S]`` uint8 0/1 (S4/MS3) or ``[10,S,S]`` int64 ids (AVSS,
        frames past the clip's real ones background unless saved)."""
        if self.layout == "avseg-run":
            arr = _resize_nearest(self._run_masks(c), size)
            if not self.semantic:
                return torch.from_numpy((arr != 0).astype(np.uint8))
            out = torch.zeros(AVSS_T, size, size, dtype=torch.int64)
            out[:arr.shape[0]] = torch.from_numpy(arr.astype(np.int64))
            return out
        if not self.semantic:
            return load_binary_prediction(self.dir, c.name, self._needed(c), self._where[c.name], size=size)
        n = self._needed(c)
        full = all(p.is_file() for p in semantic_prediction_paths(self.dir, c.name, AVSS_T))
        ids = load_semantic_prediction(self.dir, c.name, AVSS_T if full else n, size=size)
        if ids.shape[0] < AVSS_T:
            ids = torch.cat([ids, torch.zeros(AVSS_T - ids.shape[0], size, size, dtype=ids.dtype)])
        return ids
