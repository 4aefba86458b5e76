"""What a run folder holds besides the checkpoints, and how a run continues exactly.

``RUN_DIR/state.pt`` (``torch.save``; read back with ``weights_only=True``, so only tensors and plain Python
values): ``step``, ``epoch`` and ``batch`` (the next batch of that epoch), ``optimizer`` and ``scaler`` state dicts,
``scheduler`` (None: the released recipe has a constant learning rate), ``rng`` (one entry per process: Python,
NumPy, torch CPU and CUDA generator states), ``data_order`` (seed, clips, global batch size: the per-epoch
permutation is a function of these), ``best`` (the best validation so far), ``elapsed`` seconds, ``world_size``.
It names the same step as ``last.safetensors``: the checkpoint is written in full first (under a side
name), then ``state.pt`` (temporary name, rename), then the checkpoint is renamed into place.

``RUN_DIR/log.jsonl``: one JSON object per line: ``{"type": "train", "step", "epoch", "batch", "lr",
"loss_main", ..., "total", "seconds", "step_seconds"}`` for logged steps and ``{"type": "val", "step", "epoch",
"miou", "fscore", "best", "seconds"}`` after validations.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avsegcli.errors import AvsegError

STATE_FILE = "state.pt"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"
LAST = "last.safetensors"
BEST = "best.safetensors"


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and every CUDA device's) generator states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng` (CUDA states only when there are as many devices as were saved)."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def save_state(run_dir: Path, state: dict[str, Any]) -> Path:
    path = run_dir / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file() or not (run_dir / LAST).is_file():
        raise AvsegError(f"cannot resume: {STATE_FILE} or {LAST} missing (the run saved no state yet)", path=run_dir)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise AvsegError(f"unreadable training state ({str(exc).splitlines()[0][:200]})", path=path) from None


def write_run_config(run_dir: Path, train: dict[str, Any], model: dict[str, Any]) -> None:
    path = run_dir / CONFIG_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"train": train, "model": model}, indent=2, sort_keys=True))
    os.replace(tmp, path)


def check_fresh_run_dir(run_dir: Path) -> None:
    """A new run must not overwrite another one."""
    if (run_dir / CONFIG_FILE).exists() or (run_dir / STATE_FILE).exists():
        raise AvsegError("already holds a training run; continue it with --resume or pick another --out",
                         path=run_dir)


class JsonlLog:
    """Appends records to ``RUN_DIR/log.jsonl`` (only the writing process has one)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOG_FILE

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the state a resume starts from)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except ValueError:
                continue
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(run_dir: str | Path, kind: str | None = "train") -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/log.jsonl`` (of one ``type``, or all with ``kind=None``)."""
    path = Path(run_dir) / LOG_FILE
    records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    return [r for r in records if kind is None or r.get("type") == kind]
