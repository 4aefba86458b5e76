"""The three AVSBench tasks as one record each: what every room used to work out again from the task's name.

    from avsegcli.tasks import task_of
    task = task_of("avss")      # Task(name="avss", semantic=True, num_classes=71, frames_per_clip=10, ...)
    if task.semantic: ...

Past the command line the task travels as a :class:`Task`, never as a bare string; ``str(task)`` is its name
(what files and JSON record). Literal numbers, one plain table (:data:`TASKS`).
"""

from __future__ import annotations

from dataclasses import dataclass

from avsegcli.errors import AvsegError


@dataclass(frozen=True)
class Task:
    """One benchmark task.

    ``semantic``: per-pixel class ids (AVSS, 71 classes with background) rather than one binary mask;
    ``frames_per_clip``: frames (seconds) of one benchmark clip; ``image_size``: the released models' input side;
    ``batch_clips``: clips per official metric batch (the released evaluation's batch)."""

    name: str
    semantic: bool
    num_classes: int
    frames_per_clip: int
    image_size: int
    batch_clips: int

    def __str__(self) -> str:
        return self.name


S4 = Task(name="s4", semantic=False, num_classes=1, frames_per_clip=5, image_size=512, batch_clips=2)
MS3 = Task(name="ms3", semantic=False, num_classes=1, frames_per_clip=5, image_size=512, batch_clips=2)
AVSS = Task(name="avss", semantic=True, num_classes=71, frames_per_clip=10, image_size=224, batch_clips=4)

TASKS: dict[str, Task] = {t.name: t for t in (S4, MS3, AVSS)}
TASK_NAMES = tuple(TASKS)


def task_of(task: str | Task) -> Task:
    """The :class:`Task` of a name (or a Task, returned as is); :class:`AvsegError` naming the choices otherwise."""
    if isinstance(task, Task):
        return task
    try:
        return TASKS[str(task)]
    except KeyError:
        raise AvsegError(f"unknown task {task!r}; expected one of {', '.join(TASK_NAMES)}") from None
