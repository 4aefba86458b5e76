"""``TrainConfig``: every option of ``avseg train``, the released recipe per task, and the rules for ``--resume``.

Every field defaults to ``None`` = "not given"; :func:`resolve` fills in the released recipe (``RECIPES``, read
from the authors' ``config/*/AVSegFormer_*.py`` and ``scripts/*/train.py``) and the generic defaults
(``DEFAULTS``). On resume, the saved resolved config is the base; only ``RESUME_OVERRIDABLE`` fields may be changed,
any other given field must equal the saved value. :func:`prepare` does either; :func:`lr_at` is the schedule.

``TrainConfig.task`` is the task's name (what ``config.json`` records); the engine works with its
:class:`~avsegcli.tasks.Task` (:func:`check_task`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avsegcli.build import PRESETS, preset
from avsegcli.errors import AvsegError
from avsegcli.losses import AUX_CHOICES, LOSS_TYPES
from avsegcli.tasks import Task, task_of
from avsegcli.train.init_weights import init_checkpoint_config
from avsegcli.train.state import check_fresh_run_dir

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")  # fp32 is IEEE on every device; tf32 is asked for by name (CUDA)
OPTIMIZERS = ("adamw", "sgd")

# The released recipe: AdamW lr 2e-5 (torch's default weight decay 0.01), constant lr, seed 123, batch = clips
# (S4/MS3: 2 clips x 5 frames; AVSS: 4 clips x 10 frames), backbone frozen for `freeze_epochs`, validation
# after every epoch (AVSS: from epoch 10, every 2 epochs), log every 50 (AVSS 20) steps.
RECIPES: dict[str, dict[str, Any]] = {
    "s4": {"epochs": 30, "batch_size": 2, "freeze_epochs": 5, "loss": "dice", "val_every": 1, "val_start": 0,
           "val_batch": 2, "log_every": 50},
    "ms3": {"epochs": 60, "batch_size": 2, "freeze_epochs": 10, "loss": "dice", "val_every": 1, "val_start": 0,
            "val_batch": 2, "log_every": 50},
    "avss": {"epochs": 30, "batch_size": 4, "freeze_epochs": 0, "loss": "ce", "val_every": 2, "val_start": 10,
             "val_batch": 4, "log_every": 20},
}
DEFAULTS: dict[str, Any] = {
    "optimizer": "adamw", "lr": 2e-5, "weight_decay": 0.01, "aux": "both", "mix_weight": 0.1, "inter_weight": 1.0, "precision": "fp32",
    "grad_clip": 0.0, "seed": 123, "num_workers": 4, "device": "auto", "train_vggish": False,
    "train_masks": "first", "lr_schedule": "constant", "warmup_steps": 0, "negative_audio": 0.0,
}
LR_SCHEDULES = ("constant", "cosine")
# may differ from the run being resumed (they change how/how long it runs, not what the run is)
RESUME_OVERRIDABLE = ("data", "epochs", "max_steps", "log_every", "num_workers", "device", "precision",
                      "val_every", "val_start", "val_batch")
FLAG_NAMES = {"num_workers": "--workers"}  # fields whose CLI flag is not --<field-with-dashes>


def flag(name: str) -> str:
    """The ``avseg train`` flag of a ``TrainConfig`` field."""
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


@dataclass
class TrainConfig:
    """Options of one training run (``None`` = the recipe's or default value; see the module docstring)."""

    task: str | None = None  # the task's name (a Task is taken too: resolve() keeps its name)
    data: str | None = None
    out: str | None = None
    preset: str | None = None  # preset name or a JSON model config; default "<task>-r50" (or --init's config)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # merged into the model config (library only)
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None  # clips per optimiser step over all processes
    optimizer: str | None = None  # adamw (released) or sgd (momentum 0.9; experiments and exactness checks)
    lr: float | None = None
    lr_schedule: str | None = None  # constant (released) or cosine (to 0 at the end of --epochs)
    warmup_steps: int | None = None  # linear warm-up from 0 over this many steps (0 = none, released)
    weight_decay: float | None = None
    freeze_epochs: int | None = None
    loss: str | None = None
    aux: str | None = None
    mix_weight: float | None = None
    inter_weight: float | None = None
    precision: str | None = None
    grad_clip: float | None = None  # max gradient norm; 0 = off
    seed: int | None = None
    val_every: int | None = None  # epochs; 0 = never
    val_start: int | None = None  # first epoch (0-based) validated
    val_batch: int | None = None  # clips per validation batch (the official per-batch mIoU depends on it)
    max_steps: int | None = None  # stop after this many optimiser steps in all (resumable)
    log_every: int | None = None
    num_workers: int | None = None
    device: str | None = None
    backbone_weights: str | None = None
    vggish_weights: str | None = None
    init: str | None = None
    train_vggish: bool | None = None
    train_masks: str | None = None  # S4 train split: "first" (the benchmark's one annotated frame) or "all" present
    negative_audio: float | None = None  # probability that a clip gets negative audio and an empty target (0 = off)
    resume: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive(name: str, value: Any, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise AvsegError(f"{flag(name)} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_task(task: str | Task | None) -> Task:
    """The :class:`Task` of ``--task``; :class:`AvsegError` when it is missing or unknown."""
    if not task:
        raise AvsegError("--task is required (s4, ms3 or avss)")
    return task_of(task)


def resolve(cfg: TrainConfig) -> TrainConfig:
    """A copy with every ``None`` replaced by the recipe of ``cfg.task`` or the default; checks the values."""
    task = check_task(cfg.task)
    out = dataclasses.replace(cfg, task=task.name, model_overrides=dict(cfg.model_overrides))
    for key, value in {**DEFAULTS, **RECIPES[task.name]}.items():
        if getattr(out, key) is None:
            setattr(out, key, value)
    if out.preset is None and out.init is None:
        out.preset = f"{task}-r50"
    if out.aux not in AUX_CHOICES:
        raise AvsegError(f"--aux must be one of {', '.join(AUX_CHOICES)}, got {out.aux!r}")
    if out.loss not in LOSS_TYPES[task.name]:
        raise AvsegError(f"--loss {out.loss} does not fit task {task}; use {' or '.join(LOSS_TYPES[task.name])}")
    if out.train_masks not in ("first", "all"):
        raise AvsegError(f"--train-masks must be first or all, got {out.train_masks!r}")
    if out.lr_schedule not in LR_SCHEDULES:
        raise AvsegError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {out.lr_schedule!r}")
    if out.optimizer not in OPTIMIZERS:
        raise AvsegError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {out.optimizer!r}")
    if out.precision not in PRECISIONS:
        raise AvsegError(f"--precision must be one of {', '.join(PRECISIONS)}, got {out.precision!r}")
    for name in ("epochs", "batch_size", "lr", "log_every", "val_batch"):
        _positive(name, getattr(out, name))
    for name in ("weight_decay", "warmup_steps", "freeze_epochs", "mix_weight", "inter_weight", "grad_clip", "val_every",
                 "val_start", "num_workers"):
        _positive(name, getattr(out, name), allow_zero=True)
    _positive("max_steps", out.max_steps)
    if not 0.0 <= float(out.negative_audio) <= 1.0:
        raise AvsegError(f"--negative-audio is a probability in [0, 1], got {out.negative_audio}")
    if out.image_size is not None and (out.image_size <= 0 or out.image_size % 32):
        raise AvsegError(f"--image-size must be a positive multiple of 32, got {out.image_size}")
    return out


def merge_for_resume(saved: dict[str, Any], given: TrainConfig, run_dir: Path) -> TrainConfig:
    """The saved resolved config, with the overridable fields the user gave; AvsegError for any other change."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    base = TrainConfig(**{k: v for k, v in saved.items() if k in names})
    for f in dataclasses.fields(TrainConfig):
        value = getattr(given, f.name)
        if f.name in ("resume", "model_overrides") or value is None:
            continue
        if f.name == "out":
            if Path(value).resolve() != run_dir.resolve():
                raise AvsegError(f"--out {value} differs from the run being resumed ({run_dir})")
        elif f.name in RESUME_OVERRIDABLE:
            setattr(base, f.name, value)
        elif value != getattr(base, f.name):
            raise AvsegError(f"{flag(f.name)} {value} differs from the run being resumed ({getattr(base, f.name)}); "
                             f"only {', '.join(flag(n) for n in RESUME_OVERRIDABLE)} may change")
    if given.model_overrides and given.model_overrides != base.model_overrides:
        raise AvsegError("model overrides differ from the run being resumed")
    base.resume = str(run_dir)
    base.out = str(run_dir)
    return resolve(base)


def load_saved_config(run_dir: Path) -> dict[str, Any]:
    """``RUN_DIR/config.json``: ``{"train": resolved TrainConfig fields, "model": model config}``."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise AvsegError("is not a training run folder (no config.json); give the --out folder of a run", path=run_dir)
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved.get("train"), dict) or not isinstance(saved.get("model"), dict):
            raise ValueError("needs 'train' and 'model' sections")
        return saved
    except (OSError, ValueError) as exc:
        raise AvsegError(f"unreadable run config ({exc})", path=path) from None


def _merge(cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = _merge(dict(cfg[key]), value)
        else:
            cfg[key] = value
    return cfg


def base_model_config(preset_name: str) -> dict[str, Any]:
    """A preset by name, or a JSON model config file (the ``avseg_config`` of a checkpoint)."""
    if preset_name in PRESETS:
        return preset(preset_name)
    path = Path(preset_name)
    if path.suffix == ".json" and path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except ValueError as exc:
            raise AvsegError(f"not a JSON model config ({exc})", path=path) from None
        if not isinstance(cfg, dict) or not {"backbone", "vggish", "head"} <= set(cfg):
            raise AvsegError("a model config needs 'backbone', 'vggish' and 'head' sections", path=path)
        return cfg
    raise AvsegError(f"unknown preset {preset_name!r}; presets: {', '.join(PRESETS)} (or a .json model config)")


def model_config(cfg: TrainConfig, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model config of a resolved run: ``base`` (default: the preset) + overrides + image size + task.

    Raises AvsegError when the model's classes do not fit the task (1 for S4/MS3, 71 for AVSS).
    """
    task = check_task(cfg.task)
    mc = _merge(dict(base if base is not None else base_model_config(str(cfg.preset))), cfg.model_overrides)
    if cfg.image_size is not None:
        mc["image_size"] = int(cfg.image_size)
    classes = int(mc["head"]["num_classes"])
    if classes != task.num_classes:
        name = mc.get("name", cfg.preset or cfg.init)
        raise AvsegError(f"model {name} has {classes} output class(es) but task {task} needs {task.num_classes} "
                         f"({'semantic' if task.semantic else 'binary'} masks); use a preset made for it, e.g. {task}-r50")
    if int(mc.get("image_size", 32)) % 32:
        raise AvsegError(f"image size {mc['image_size']} is not a multiple of 32")
    mc["task"] = task.name
    mc["frames_per_clip"] = task.frames_per_clip
    return mc


def prepare(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any], bool]:
    """Resolve the options (the recipe, or the saved run on resume) and the model config; checks the cheap things
    first (task, preset, classes, data folder) so mistakes fail before anything is loaded."""
    if config.resume:
        run_dir = Path(config.resume)
        if not run_dir.is_dir():
            raise AvsegError("no such run folder to resume", path=run_dir)
        saved = load_saved_config(run_dir)
        cfg = merge_for_resume(saved["train"], config, run_dir)
        mcfg = saved["model"]
    else:
        cfg = resolve(config)
        if not cfg.out:
            raise AvsegError("--out RUN_DIR is required (where checkpoints and the log go)")
        check_fresh_run_dir(Path(cfg.out))
        base = init_checkpoint_config(cfg.init) if (cfg.init and cfg.preset is None) else None
        mcfg = model_config(cfg, base)
    if not cfg.data:
        raise AvsegError("--data is required (the AVSBench root folder)")
    if not Path(cfg.data).is_dir():
        raise AvsegError("dataset root not found (expected the AVSBench folder)", path=cfg.data)
    assert mcfg is not None
    return cfg, mcfg, bool(config.resume)


def lr_at(step: int, total: int, lr: float, schedule: str, warmup: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total`` (all epochs): linear warm-up over
    ``warmup`` steps, then ``lr`` (constant) or a half cosine from ``lr`` to 0 at ``total`` (cosine). A function
    of the step alone, so resuming needs no scheduler state, and ``--max-steps`` (a stop) leaves it unchanged."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "cosine" and total > warmup:
        return 0.5 * lr * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))
    return lr

