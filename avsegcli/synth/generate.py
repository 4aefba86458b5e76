"""``generate``: a whole synthetic dataset (train/val/test) for one task, optionally on several processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from avsegcli.errors import AvsegError
from avsegcli.synth.categories import CATEGORIES, Category, check_categories
from avsegcli.synth.writer import (
    AVSS_SUBSETS, CSV_PATHS, FORMAT_VERSION, SPLITS, TASKS, make_clip, split_seed, write_manifest, write_tables,
)
from avsegcli.tasks import Task, task_of

Progress = Callable[[int, int, str], None]


def _resolve_counts(videos_per_split: int | Mapping[str, int], splits: Sequence[str]) -> dict[str, int]:
    if isinstance(videos_per_split, Mapping):
        unknown = set(videos_per_split) - set(splits)
        if unknown:
            raise AvsegError(f"clip counts given for split(s) not generated: {', '.join(sorted(unknown))}")
        counts = {s: int(videos_per_split.get(s, 0)) for s in splits}
    else:
        counts = {s: int(videos_per_split) for s in splits}
    if any(n < 0 for n in counts.values()) or not any(counts.values()):
        raise AvsegError(f"clip counts must be >= 0 and not all 0, got {counts}")
    return counts


def _resolve_seeds(seed: int, splits: Sequence[str], split_seeds: Mapping[str, int] | None) -> dict[str, int]:
    given = dict(split_seeds or {})
    unknown = set(given) - set(SPLITS)
    if unknown:
        raise AvsegError(f"seeds given for unknown split(s): {', '.join(sorted(unknown))}")
    if seed < 0 or any(int(v) < 0 for v in given.values()):
        raise AvsegError("seeds must be >= 0")
    seeds = {s: int(given[s]) if s in given else split_seed(seed, s) for s in SPLITS}
    if len(set(seeds.values())) != len(seeds):
        raise AvsegError(f"train, val and test need different seeds, got {seeds}")
    return {s: seeds[s] for s in splits}


def _check_args(task: str | Task, splits: Sequence[str], image_size: int, fps: int, mp4: bool) -> Task:
    """The :class:`Task` of ``task`` (a name or a Task) once the arguments are checked; AvsegError otherwise."""
    if not isinstance(task, Task) and task not in TASKS:
        raise AvsegError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits or len(set(splits)) != len(splits):
        raise AvsegError(f"splits must be distinct names among {', '.join(SPLITS)}, got {list(splits)}")
    if image_size < 32 or (mp4 and image_size % 2):
        raise AvsegError(f"image size must be >= 32 (and even for mp4), got {image_size}")
    if not 1 <= fps <= 120:
        raise AvsegError(f"fps must be between 1 and 120, got {fps}")
    return task_of(task)


def generate(task: str | Task, out: str | Path, videos_per_split: int | Mapping[str, int] = 10, seed: int = 0,
             splits: Sequence[str] = SPLITS, mp4: bool = True, image_size: int = 224, fps: int = 16,
             split_seeds: Mapping[str, int] | None = None, subsets: Sequence[str] = AVSS_SUBSETS,
             categories: tuple[Category, ...] = CATEGORIES, workers: int = 1, overwrite: bool = False,
             crf: int = 16, progress: Progress | None = None) -> dict[str, Any]:
    """Write a synthetic ``task`` dataset ('s4', 'ms3' or 'avss', or its :class:`~avsegcli.tasks.Task`) under ``out``;
    returns a summary dict (``task``: the name).

    ``videos_per_split``: clips per split (an int, or ``{"train": 160, "val": 20, "test": 20}``); for AVSS that
    many clips *per subset* (``subsets``, default v1s, v1m, v2) in each split. ``split_seeds`` overrides the
    per-split seeds derived from ``seed`` (see :mod:`avsegcli.synth.writer`). ``workers > 1`` renders clips in
    that many processes (the files do not depend on it). ``progress(done, total, name)`` is called per clip.
    Refuses to write over an earlier synthetic dataset of the same task unless ``overwrite`` (files are then
    rewritten in place and the csv lists only the new clips; stale files of clips no longer listed stay), and
    always refuses a folder whose metadata csv it did not write (a real AVSBench root).

    Summary keys: ``task``, ``seed``, ``split_seeds``, ``videos``, ``categories`` (descriptions), ``splits``
    (per split: clips, seconds, sounding_seconds, silent_seconds), ``category_seconds`` (seconds each category
    sounds), ``files`` (the manifest and csv paths), ``elapsed_s``, ``clips_per_s``.
    """
    t0 = time.perf_counter()
    splits = tuple(splits)
    task = _check_args(task, splits, int(image_size), int(fps), mp4)
    check_categories(tuple(categories))
    counts = _resolve_counts(videos_per_split, splits)
    seeds = _resolve_seeds(int(seed), splits, split_seeds)
    subs = tuple(subsets) if task.semantic else ("",)  # the semantic task (AVSS) is the one with subsets
    if task.semantic and (not subs or any(s not in AVSS_SUBSETS for s in subs)):
        raise AvsegError(f"AVSS subsets must be among {', '.join(AVSS_SUBSETS)}, got {list(subsets)}")
    root = Path(out)
    manifest_path = root / f"synth_{task}.json"
    if manifest_path.exists() and not overwrite:
        raise AvsegError("a synthetic dataset of this task is already there (overwrite=True, --overwrite, rewrites it)", path=manifest_path)
    csv_old = root / CSV_PATHS[task.name]
    if csv_old.exists() and not manifest_path.exists():
        raise AvsegError("this folder holds a dataset that avseg synth did not write; choose another", path=csv_old)
    root.mkdir(parents=True, exist_ok=True)

    jobs = [(split, sub, k) for split in splits for sub in subs for k in range(counts[split])]
    kw = dict(mp4=mp4, image_size=int(image_size), fps=int(fps), categories=tuple(categories), crf=int(crf))
    results: list[dict[str, Any]] = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(make_clip, root, task, sp, k, seeds[sp], sub, **kw) for sp, sub, k in jobs]
            for i, fut in enumerate(futures):
                results.append(fut.result())
                if progress:
                    progress(i + 1, len(jobs), results[-1]["info"]["name"])
    else:
        for i, (sp, sub, k) in enumerate(jobs):
            results.append(make_clip(root, task, sp, k, seeds[sp], sub, **kw))
            if progress:
                progress(i + 1, len(jobs), results[-1]["info"]["name"])

    csv_path = write_tables(root, task, [r["row"] for r in results])
    infos = [r["info"] for r in results]
    per_split: dict[str, dict[str, int]] = {}
    for sp in splits:
        mine = [c for c in infos if c["split"] == sp]
        secs = sum(c["seconds"] for c in mine)
        sounding = sum(c["sounding_seconds"] for c in mine)
        per_split[sp] = {"clips": len(mine), "seconds": secs, "sounding_seconds": sounding,
                         "silent_seconds": secs - sounding}
    cat_seconds = {c.name: 0 for c in categories}
    for c in infos:
        for names in c["sounding"]:
            for n in names:
                cat_seconds[n] += 1
    summary: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "task": str(task), "seed": int(seed), "split_seeds": seeds,
        "videos": counts, "subsets": list(subs) if task.semantic else [], "image_size": int(image_size),
        "fps": int(fps), "mp4": bool(mp4), "categories": [c.describe() for c in categories],
        "splits": per_split, "category_seconds": cat_seconds,
    }
    write_manifest(root, task, {**summary, "clips": infos})
    elapsed = time.perf_counter() - t0
    summary.update(files={"manifest": str(manifest_path), "csv": str(csv_path)}, elapsed_s=round(elapsed, 3),
                   clips_per_s=round(len(jobs) / elapsed, 3) if elapsed > 0 else None)
    return summary
