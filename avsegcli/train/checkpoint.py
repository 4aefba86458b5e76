"""The run's checkpoints: ``last.safetensors`` and ``state.pt`` saved as one pair, checked as one pair on resume,
and ``best.safetensors`` (file layout: :mod:`avsegcli.train.state`).

Each checkpoint carries the step, epoch and task it was saved at in its metadata (``avseg_train_*``, strings), so
a resume can tell whether the checkpoint and ``state.pt`` name the same step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from safetensors import safe_open

from avsegcli.errors import AvsegError
from avsegcli.modeling import AVSegFormer
from avsegcli.tasks import Task
from avsegcli.train.state import LAST, load_state, save_state
from avsegcli.weights import save_checkpoint


def data_order(seed: int, clips: int, batch_size: int) -> dict[str, int]:
    """What fixes the per-epoch batches (:mod:`avsegcli.train.data`); saved in ``state.pt``, equal on resume."""
    return {"seed": seed, "clips": clips, "batch_size": batch_size}


def checkpoint_meta(step: int, epoch: int, task: Task, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ``avseg_train_step`` / ``_epoch`` / ``_task`` metadata of a checkpoint (and ``extra``)."""
    return {"avseg_train_step": str(step), "avseg_train_epoch": str(epoch), "avseg_train_task": task.name,
            **(extra or {})}


def checkpoint_step(path: Path) -> int:
    """The ``avseg_train_step`` metadata of a checkpoint written by the engine (-1 when absent)."""
    with safe_open(str(path), framework="pt") as f:
        return int((f.metadata() or {}).get("avseg_train_step", -1))


def save_last(run_dir: Path, model: AVSegFormer, meta: dict[str, str], state: Callable[[], dict[str, Any]]) -> None:
    """``last.safetensors`` (``meta`` in its metadata) and ``state.pt`` (``state()``, called once the checkpoint is
    written, so that its elapsed time counts the writing). The checkpoint is written in full under a side name and
    renamed only after ``state.pt`` is complete, so a kill at any point leaves the two naming the same step (except
    between the two renames, which :func:`load_resume_state` reports)."""
    pending = save_checkpoint(model, run_dir / (LAST + ".pending"), meta)
    save_state(run_dir, state())
    os.replace(pending, run_dir / LAST)


def load_resume_state(run_dir: Path, order: dict[str, int]) -> dict[str, Any]:
    """``state.pt`` of a run to resume, after checking that the data order (:func:`data_order`) is unchanged and
    that ``last.safetensors`` names the same step; :class:`AvsegError` otherwise."""
    st = load_state(run_dir)
    if st.get("data_order") != order:
        raise AvsegError(f"the data order changed since the run was saved ({st.get('data_order')} vs {order}): "
                         "same train split and batch size needed to resume", path=run_dir)
    if checkpoint_step(run_dir / LAST) != int(st["step"]):
        raise AvsegError(f"{LAST} (step {checkpoint_step(run_dir / LAST)}) and state.pt (step {st['step']}) "
                         "disagree: the run stopped while saving; cannot resume exactly", path=run_dir)
    return st
