"""The training engine behind ``avseg train``: the released AVSegFormer recipe, resumable bit for bit, on one or
several processes (``torchrun``).

    from avsegcli.train.engine import train
    from avsegcli.train import TrainConfig
    result = train(TrainConfig(task="s4", data="/data/AVSBench", out="runs/s4", preset="s4-r50",
                               backbone_weights="resnet50-19c8e357.pth", vggish_weights="vggish-10086976.pth"))

One optimiser step = one global batch of ``batch_size`` clips (``[B*T,...]`` frames, see
:mod:`avsegcli.train.data`), split evenly over the processes. Losses: :mod:`avsegcli.losses`. Files in the run
folder: ``config.json``, ``last.safetensors``, ``best.safetensors`` (best validation mIoU), ``state.pt``,
``log.jsonl`` (:mod:`avsegcli.train.state`); only process 0 writes them. Validation: :mod:`avsegcli.train.validate`;
the checkpoint pair and its resume check: :mod:`avsegcli.train.checkpoint`.
"""

from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from avsegcli.build import build_model
from avsegcli.data import make_dataset
from avsegcli.errors import AvsegError
from avsegcli.inference import precision as precision_modes
from avsegcli.inference.feed import device_guard
from avsegcli.losses import SegmentationLoss
from avsegcli.modeling import AVSegFormer
from avsegcli.tasks import S4
from avsegcli.train import dist
from avsegcli.train.checkpoint import checkpoint_meta, data_order, load_resume_state, save_last
from avsegcli.train.config import TrainConfig, check_task, lr_at, prepare
from avsegcli.train.data import epoch_batches, make_loader, rank_share, steps_per_epoch, to_device
from avsegcli.train.init_weights import initialise, strict_load
from avsegcli.train.negatives import NegativeAudioClips, NegativeSampler
from avsegcli.train.state import (BEST, LAST, JsonlLog, capture_rng, check_fresh_run_dir, restore_rng, seed_everything,
                                  write_run_config)
from avsegcli.train.validate import AMP_DTYPES, evaluate, mixed_precision, validation_due
from avsegcli.weights import INTERMEDIATE_ONLY, save_checkpoint


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


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class _Trainer:
    def __init__(self, cfg: TrainConfig, model_cfg: dict[str, Any], resuming: bool, info: dist.DistInfo,
                 progress: TrainProgress | None) -> None:
        self.cfg, self.model_cfg, self.resuming, self.info, self.progress = cfg, model_cfg, resuming, info, progress
        self.run_dir = Path(str(cfg.out))
        self.device = info.device
        self.task = check_task(cfg.task)
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
        cfg, size = self.cfg, int(self.model_cfg["image_size"])
        extra = {"train_masks": cfg.train_masks} if self.task == S4 and cfg.train_masks else {}
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
        if self.resuming:
            st = load_resume_state(self.run_dir, self._data_order())
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
        self.net = self.model
        gc.collect()  # the previous wrapper's gradient hooks go with it
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.net = DDP(self.model, device_ids=ids)
        self.net_frozen = frozen

    def _train_step(self, batch: dict[str, Any]) -> None:
        cfg, info = self.cfg, self.info
        b = to_device(batch, self.device)
        supervised = b["gt_valid"] if self.task.semantic else b["mask_valid"]
        count = dist.all_reduce_sum(supervised.sum().to(torch.float64), info).item()
        denom = max(count, 1.0) / info.world  # DDP averages gradients: sum over all frames / global count
        with mixed_precision(self.device, self.amp_dtype):
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
        return self.val_ds is not None and validation_due(epoch, int(self.cfg.val_every or 0), int(self.cfg.val_start or 0))

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

    def evaluate(self) -> dict[str, float]:
        """Official-protocol mIoU and F-score of the model on the validation split (``val_batch`` clips a batch)."""
        assert self.val_ds is not None
        return evaluate(self.model, self.val_ds, self.task, self.device, self.amp_dtype, int(self.cfg.val_batch or 1),
                        int(self.cfg.num_workers or 0))

    # ------------------------------------------------------------------------------------------------ saving
    def _meta(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return checkpoint_meta(self.step, self.epoch, self.task, extra)

    def _data_order(self) -> dict[str, int]:
        return data_order(int(self.cfg.seed or 0), self.num_clips, int(self.cfg.batch_size or 1))

    def _save(self) -> None:
        """``last.safetensors`` and ``state.pt`` as one pair (:func:`~avsegcli.train.checkpoint.save_last`), every
        process's RNG state gathered to process 0."""
        rngs = dist.gather_objects(capture_rng(), self.info)
        if self.info.is_main:
            save_last(self.run_dir, self.model, self._meta(), lambda: {
                "step": self.step, "epoch": self.epoch, "batch": self.batch,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "scheduler": None, "rng": rngs, "best": self.best, "elapsed": self._elapsed(),
                "world_size": self.info.world, "negative_clips": self.negative_clips,
                "data_order": self._data_order(),
            })
        dist.barrier(self.info)
