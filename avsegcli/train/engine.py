"""The training engine behind ``avseg train``: the released AVSegFormer recipe, resumable bit for bit, on one or
several processes (``torchrun``).

    from avsegcli.train.engine import train
    from avsegcli.train import TrainConfig
    result = train(TrainConfig(task="s4", data="/data/AVSBench", out="runs/s4", preset="s4-r50",
                               backbone_weights="resnet50-19c8e357.pth", vggish_weights="vggish-10086976.pth"))

One optimiser step = one global batch of ``batch_size`` clips (``[B*T,...]`` frames, see
:mod:`avsegcli.train.data`), split evenly over the processes. Losses: :mod:`avsegcli.losses`. Files in the run
folder: ``config.json``, ``last.safetensors``, ``best.safetensors`` (best validation mIoU), ``state.pt``,
``log.jsonl`` (:mod:`avsegcli.train.state`); only process 0 writes them.
"""

from __future__ import annotations

import gc
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from avsegcli.inference import precision as precision_modes
from avsegcli.build import build_model
from avsegcli.errors import AvsegError
from avsegcli.inference.feed import device_guard
from avsegcli.losses import SegmentationLoss
from avsegcli.eval.metrics import BinaryMetrics, SemanticMetrics
from avsegcli.modeling import AVSegFormer
from avsegcli.train import dist
from avsegcli.train.config import TrainConfig, load_saved_config, merge_for_resume, model_config, resolve
from avsegcli.train.data import (epoch_batches, make_loader, rank_share, sequential_batches, steps_per_epoch,
                                 to_device)
from avsegcli.train.init_weights import init_checkpoint_config, initialise, strict_load
from avsegcli.train.state import (BEST, LAST, JsonlLog, capture_rng, check_fresh_run_dir, load_state, restore_rng,
                                  save_state, seed_everything, write_run_config)
from avsegcli.weights import INTERMEDIATE_ONLY, save_checkpoint

AMP_DTYPES = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainProgress(Protocol):
    """What the engine reports to a display (process 0 only)."""

    def start(self, total_steps: int, done_steps: int) -> None: ...
    def step(self, step: int, epoch: int, loss: float) -> None: ...
    def record(self, record: dict[str, Any]) -> None: ...  # every log.jsonl record
    def message(self, text: str) -> None: ...
    def finish(self) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int
    last: Path | None
    best: Path | None
    best_miou: float | None
    seconds: float
    warnings: list[str] = field(default_factory=list)


def train(config: TrainConfig, progress: TrainProgress | None = None) -> TrainResult:
    """Run (or with ``config.resume``, continue) a training run; see :class:`TrainConfig` for the options."""
    cfg, model_cfg, resuming = prepare(config)
    info = dist.setup(cfg.device or "auto")
    try:
        # the float32 switches of the mode (IEEE unless tf32), restored when training ends
        with precision_modes.scope(str(cfg.precision or "fp32")), device_guard(info.device):
            return _Trainer(cfg, model_cfg, resuming, info, progress if info.is_main else None).run()
    finally:
        dist.cleanup(info)


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


def _checkpoint_step(path: Path) -> int:
    """The ``avseg_train_step`` metadata of a checkpoint written by the engine (-1 when absent)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return int((f.metadata() or {}).get("avseg_train_step", -1))


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class _Trainer:
    def __init__(self, cfg: TrainConfig, model_cfg: dict[str, Any], resuming: bool, info: dist.DistInfo,
                 progress: TrainProgress | None) -> None:
        self.cfg, self.model_cfg, self.resuming, self.info, self.progress = cfg, model_cfg, resuming, info, progress
        self.run_dir = Path(str(cfg.out))
        self.device = info.device
        self.task = str(cfg.task)
        self.amp_dtype = AMP_DTYPES[str(cfg.precision)]
        if cfg.precision in ("fp16", "tf32") and self.device.type != "cuda":
            raise AvsegError(f"--precision {cfg.precision} needs a CUDA device (use fp32 or bf16 on the CPU)")
        self.warnings: list[str] = []
        self.best: dict[str, Any] | None = None
        self.step = self.epoch = self.batch = 0
        self.negative_clips = 0  # clips trained with negative audio so far (--negative-audio)
        self.elapsed0 = 0.0

    # ------------------------------------------------------------------------------------------------ setup
    def _datasets(self) -> None:
        from avsegcli.data import make_dataset

        cfg, size = self.cfg, int(self.model_cfg["image_size"])
        extra = {"train_masks": cfg.train_masks} if self.task == "s4" and cfg.train_masks else {}
        self.train_ds = make_dataset(self.task, str(cfg.data), "train", image_size=size, **extra)
        self.num_clips = len(self.train_ds)
        gb = int(cfg.batch_size or 1)
        if gb % self.info.world:
            raise AvsegError(f"--batch-size {gb} is not divisible by the {self.info.world} processes")
        self.steps_per_epoch = steps_per_epoch(self.num_clips, gb)
        if self.steps_per_epoch == 0:
            raise AvsegError(f"the train split has {self.num_clips} clip(s), fewer than --batch-size {gb}")
        self.val_ds = make_dataset(self.task, str(cfg.data), "val", image_size=size) if cfg.val_every else None
        self.negatives = None
        if cfg.negative_audio:
            from avsegcli.train.negatives import NegativeAudioClips, NegativeSampler

            self.negatives = NegativeSampler(self.train_ds, float(cfg.negative_audio), int(cfg.seed or 0))
            if cfg.loss == "dice":
                self.warnings.append("--negative-audio with --loss dice: the released dice loss is exactly 1 on an "
                                     "all-empty target whatever the prediction (no gradient), so negative clips teach "
                                     "nothing; use --loss bce")
            self.train_ds = NegativeAudioClips(self.train_ds, int(cfg.seed or 0))

    def _model(self) -> None:
        cfg = self.cfg
        seed_everything(int(cfg.seed or 0))
        model = build_model(self.model_cfg)
        if self.resuming:
            from safetensors.torch import load_file

            strict_load(model, load_file(str(self.run_dir / LAST)), self.run_dir / LAST, "the run's model")
        else:
            self.warnings += initialise(model, init=cfg.init, backbone_weights=cfg.backbone_weights,
                                        vggish_weights=cfg.vggish_weights)
        self.criterion = SegmentationLoss(self.task, cfg.loss, str(cfg.aux), len(model.head.transformer.decoder.layers),
                                          mix_weight=float(cfg.mix_weight or 0), inter_weight=float(cfg.inter_weight or 0))
        _set_requires_grad(model.vggish, bool(cfg.train_vggish))
        if not self.criterion.needs_intermediate:  # unused without intermediate masks (and DDP wants no idle params)
            for name, p in model.named_parameters():
                if any(re.search(pat, name) for pat in INTERMEDIATE_ONLY):
                    p.requires_grad_(False)
        self.model: AVSegFormer = model.to(self.device).train()
        # everything that will ever train, backbone included (it is frozen per epoch in _set_phase)
        self.params = [p for p in model.parameters() if p.requires_grad]
        lr, wd = float(cfg.lr or 0), float(cfg.weight_decay or 0)
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=0.9, weight_decay=wd) if cfg.optimizer == "sgd" \
            else torch.optim.AdamW(self.params, lr=lr, weight_decay=wd)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.net: nn.Module = model
        self.net_frozen: bool | None = None

    def _restore_or_start(self) -> None:
        cfg, info = self.cfg, self.info
        order = {"seed": int(cfg.seed or 0), "clips": self.num_clips, "batch_size": int(cfg.batch_size or 1)}
        if self.resuming:
            st = load_state(self.run_dir)
            if st.get("data_order") != order:
                raise AvsegError(f"the data order changed since the run was saved ({st.get('data_order')} vs {order}): "
                                 "same train split and batch size needed to resume", path=self.run_dir)
            if _checkpoint_step(self.run_dir / LAST) != int(st["step"]):
                raise AvsegError(f"{LAST} (step {_checkpoint_step(self.run_dir / LAST)}) and state.pt (step {st['step']}) "
                                 "disagree: the run stopped while saving; cannot resume exactly", path=self.run_dir)
            self.optimizer.load_state_dict(st["optimizer"])
            if st.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(st["scaler"])
            self.step, self.epoch, self.batch = int(st["step"]), int(st["epoch"]), int(st["batch"])
            self.best, self.elapsed0 = st.get("best"), float(st.get("elapsed", 0.0))
            self.negative_clips = int(st.get("negative_clips", 0))
            rngs = st.get("rng") or []
            self._rng = rngs[info.rank] if info.rank < len(rngs) else None
            if self._rng is None:
                seed_everything(int(cfg.seed or 0) + 1000 * self.step + info.rank)
        else:
            if info.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                check_fresh_run_dir(self.run_dir)
                write_run_config(self.run_dir, cfg.to_dict(), self.model_cfg)
            seed_everything(int(cfg.seed or 0) + info.rank)  # one stream per process (dropout, drop path)
            self._rng = None
        dist.barrier(info)
        self.log = JsonlLog(self.run_dir) if info.is_main else None
        if self.log is not None and self.resuming:
            self.log.truncate_after(self.step)
        if self._rng is not None:
            restore_rng(self._rng)  # last thing before the loop: nothing after this draws

    # ------------------------------------------------------------------------------------------------ loop
    def run(self) -> TrainResult:
        self._datasets()
        self._model()
        self._restore_or_start()
        cfg, info = self.cfg, self.info
        total = int(cfg.epochs or 0) * self.steps_per_epoch
        if cfg.max_steps:
            total = min(total, int(cfg.max_steps))
        self.schedule_steps = int(cfg.epochs or 0) * self.steps_per_epoch  # --max-steps stops; it does not reshape the lr
        if self.progress:
            for w in self.warnings:
                self.progress.message(f"warning: {w}")
            self.progress.start(total, min(self.step, total))
        self.t0 = self.t_log = time.perf_counter()
        self.step_log = self.step
        while self.epoch < int(cfg.epochs or 0) and self.step < total:
            self._set_phase()
            batches = epoch_batches(self.num_clips, int(cfg.batch_size or 1), int(cfg.seed or 0), self.epoch)
            if self.negatives is not None:
                batches = self.negatives.assign(batches, self.epoch)
            mine = [rank_share(b, info.rank, info.world) for b in batches[self.batch:]]
            loader = make_loader(self.train_ds, mine, num_workers=int(cfg.num_workers or 0),
                                 seed=int(cfg.seed or 0) + self.epoch, pin_memory=self.device.type == "cuda")
            for batch in loader:
                self._train_step(batch)
                if self.step >= total:
                    break
            del loader
            if self.batch >= self.steps_per_epoch:
                done_epoch = self.epoch
                self.epoch, self.batch = self.epoch + 1, 0
                if self._validation_due(done_epoch):
                    self._validate(done_epoch)
            self._save()
        if self.progress:
            self.progress.finish()
        best_path = self.run_dir / BEST
        return TrainResult(run_dir=self.run_dir, step=self.step, epoch=self.epoch, last=self.run_dir / LAST,
                           best=best_path if best_path.exists() else None,
                           best_miou=None if self.best is None else float(self.best["miou"]),
                           seconds=self._elapsed(), warnings=self.warnings)

    def _set_phase(self) -> None:
        """Backbone frozen for the first ``freeze_epochs`` epochs; DDP is rebuilt when that changes."""
        frozen = self.epoch < int(self.cfg.freeze_epochs or 0)
        _set_requires_grad(self.model.backbone, not frozen)
        if not self.info.enabled or frozen == self.net_frozen:
            self.net_frozen = frozen
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.net = self.model
        gc.collect()  # the previous wrapper's gradient hooks go with it
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.net = DDP(self.model, device_ids=ids)
        self.net_frozen = frozen

    def _train_step(self, batch: dict[str, Any]) -> None:
        cfg, info = self.cfg, self.info
        b = to_device(batch, self.device)
        supervised = b["gt_valid"] if self.task == "avss" else b["mask_valid"]
        count = dist.all_reduce_sum(supervised.sum().to(torch.float64), info).item()
        denom = max(count, 1.0) / info.world  # DDP averages gradients: sum over all frames / global count
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.net(b["frames"], b["log_mel"], frame_valid=b["frame_valid"],
                           return_intermediate=self.criterion.needs_intermediate)
        terms = self.criterion(out, b["masks"], supervised, denom)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.schedule_steps, float(cfg.lr or 0), str(cfg.lr_schedule or "constant"),
                                int(cfg.warmup_steps or 0))
        grad_norm = None
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None],
                                                              float(cfg.grad_clip)))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.batch += 1
        if self.negatives is not None:
            self.negative_clips += int(dist.all_reduce_sum(torch.tensor(float(batch["negative_clips"]), dtype=torch.float64,
                                                                        device=self.device),
                                                           info).item())
        if self.progress:
            self.progress.step(self.step, self.epoch, float(terms["total"].detach()))
        if self.step == 1 or self.step % int(cfg.log_every or 1) == 0:
            self._log_step(terms, grad_norm)

    def _log_step(self, terms: dict[str, torch.Tensor], grad_norm: float | None) -> None:
        names = list(terms)
        values = dist.all_reduce_sum(torch.stack([terms[k].detach().float() for k in names]), self.info) / self.info.world
        now = time.perf_counter()
        rec: dict[str, Any] = {"type": "train", "step": self.step, "epoch": self.epoch, "batch": self.batch,
                               "lr": self.optimizer.param_groups[0]["lr"]}
        rec.update({k: float(v) for k, v in zip(names, values.tolist())})
        if grad_norm is not None:
            rec["grad_norm"] = grad_norm
        if self.negatives is not None:
            rec["negative_clips"] = self.negative_clips
        rec["seconds"] = round(self._elapsed(), 3)
        rec["step_seconds"] = round((now - self.t_log) / max(self.step - self.step_log, 1), 4)
        self.t_log, self.step_log = now, self.step
        self._emit(rec)

    def _emit(self, rec: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(rec)
        if self.progress:
            self.progress.record(rec)

    def _elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t0

    # ------------------------------------------------------------------------------------------------ validation
    def _validation_due(self, epoch: int) -> bool:
        every, start = int(self.cfg.val_every or 0), int(self.cfg.val_start or 0)
        return self.val_ds is not None and every > 0 and epoch >= start and (epoch - start) % every == 0

    def _validate(self, epoch: int) -> None:
        if self.info.is_main:
            scores = self.evaluate()
            is_best = self.best is None or scores["miou"] > self.best["miou"]
            if is_best:
                self.best = {"miou": scores["miou"], "fscore": scores["fscore"], "epoch": epoch, "step": self.step}
                save_checkpoint(self.model, self.run_dir / BEST, self._meta({"avseg_val_miou": str(scores["miou"])}))
            self._emit({"type": "val", "step": self.step, "epoch": epoch, **scores, "best": is_best,
                        "seconds": round(self._elapsed(), 3)})
        self.best = dist.broadcast_object(self.best, self.info)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Official-protocol mIoU and F-score of the model on the validation split (``val_batch`` clips a batch)."""
        assert self.val_ds is not None
        model, semantic = self.model, self.task == "avss"
        metric: BinaryMetrics | SemanticMetrics = SemanticMetrics(model.num_classes, "official") if semantic \
            else BinaryMetrics("official")
        batches = sequential_batches(len(self.val_ds), int(self.cfg.val_batch or 1))
        loader = make_loader(self.val_ds, batches, num_workers=int(self.cfg.num_workers or 0), seed=0)
        model.eval()
        try:
            for batch in loader:
                b = to_device(batch, self.device)
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    logits = model(b["frames"], b["log_mel"], frame_valid=b["frame_valid"])["pred_masks"]
                logits = logits.float().cpu()
                metric.update(logits if semantic else logits[:, 0], batch["masks"], valid=batch["mask_valid"])
        finally:
            model.train()
        res = metric.compute()
        return {"miou": float(res["miou"]), "fscore": float(res["fscore"])}

    # ------------------------------------------------------------------------------------------------ saving
    def _meta(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"avseg_train_step": str(self.step), "avseg_train_epoch": str(self.epoch),
                "avseg_train_task": self.task, **(extra or {})}

    def _save(self) -> None:
        """``last.safetensors`` and ``state.pt`` (every process's RNG state gathered to process 0). The checkpoint is
        written in full under a side name and renamed only after ``state.pt`` is complete, so a kill at any point
        leaves the two naming the same step (except between the two renames, which the resume guard reports)."""
        rngs = dist.gather_objects(capture_rng(), self.info)
        if self.info.is_main:
            pending = save_checkpoint(self.model, self.run_dir / (LAST + ".pending"), self._meta())
            save_state(self.run_dir, {
                "step": self.step, "epoch": self.epoch, "batch": self.batch,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "scheduler": None, "rng": rngs, "best": self.best, "elapsed": self._elapsed(),
                "world_size": self.info.world, "negative_clips": self.negative_clips,
                "data_order": {"seed": int(self.cfg.seed or 0), "clips": self.num_clips,
                               "batch_size": int(self.cfg.batch_size or 1)},
            })
            os.replace(pending, self.run_dir / LAST)
        dist.barrier(self.info)
