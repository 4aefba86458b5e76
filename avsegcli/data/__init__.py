"""AVSBench readers (S4, MS3, AVSS), saved-prediction I/O and a writer of tiny fake datasets.

    from avsegcli.data import make_dataset
    ds = make_dataset("s4", "/data/AVSBench", split="test")      # torch Dataset of clip dicts (or a Task for "s4")
    ds.task                                                       # its avsegcli.tasks.Task; str(ds.task) == "s4"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avsegcli.data.avsbench import (
    IMAGENET_MEAN, IMAGENET_STD, SPLITS, AVSBenchObject, ClipInfo, MS3Dataset, S4Dataset,
    binary_prediction_paths, load_binary_prediction, load_log_mel_pickle, save_binary_prediction,
)
from avsegcli.data.avss import (
    AVSS_SUBSETS, AVSSDataset, load_semantic_prediction, save_semantic_prediction, semantic_prediction_paths,
)
from avsegcli.data.fake import write_fake_avsbench
from avsegcli.tasks import TASK_NAMES, Task, task_of

#: the task names (each reader's ``task`` is the :class:`~avsegcli.tasks.Task` of that name)
TASKS = TASK_NAMES
_READERS: dict[Task, type[AVSBenchObject] | type[AVSSDataset]] = {cls.task: cls for cls in (S4Dataset, MS3Dataset, AVSSDataset)}

__all__ = [
    "AVSS_SUBSETS", "AVSBenchObject", "AVSSDataset", "ClipInfo", "IMAGENET_MEAN", "IMAGENET_STD", "MS3Dataset",
    "S4Dataset", "SPLITS", "TASKS", "binary_prediction_paths", "load_binary_prediction", "load_log_mel_pickle",
    "load_semantic_prediction", "make_dataset", "save_binary_prediction", "save_semantic_prediction",
    "semantic_prediction_paths", "write_fake_avsbench",
]


def make_dataset(task: str | Task, root: str | Path, split: str = "test", **kw: Any) -> AVSBenchObject | AVSSDataset:
    """``S4Dataset`` / ``MS3Dataset`` / ``AVSSDataset`` for ``task`` (a name or a :class:`~avsegcli.tasks.Task`);
    ``kw`` go to the constructor. ValueError for an unknown task."""
    if not isinstance(task, Task) and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return _READERS[task_of(task)](root, split=split, **kw)
