"""``avseg train``: train or fine-tune AVSegFormer on AVSBench (flags map one to one onto ``TrainConfig``).

Registered by the CLI as ``app.command("train")(train_cmd.train)``; ``python -m avsegcli.cli.train_cmd ...`` runs
the same command on its own.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from avsegcli.cli.common import WEIGHTS_NAMES, Offline, Quiet, Verbose, set_offline, set_verbosity
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _RichTrainProgress:
    """One bar of optimiser steps (epoch, loss); logged steps and validations as lines above it."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console, self.quiet = console, quiet
        self.p: Progress | None = None
        self.task = 0

    def start(self, total_steps: int, done_steps: int) -> None:
        if self.quiet:
            return
        cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn()]
        self.p = Progress(*cols, console=self.console, transient=False)
        self.p.start()
        self.task = self.p.add_task("steps", total=total_steps, completed=done_steps)

    def step(self, step: int, epoch: int, loss: float) -> None:
        if self.p is not None:
            self.p.update(self.task, completed=step, description=f"epoch {epoch} loss {loss:.4f}")

    def record(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        if record["type"] == "val":
            mark = " (best)" if record.get("best") else ""
            self.message(f"val epoch {record['epoch']} step {record['step']}: mIoU {record['miou']:.4f} "
                         f"F {record['fscore']:.4f}{mark}")
        else:
            terms = " ".join(f"{k[5:] if k.startswith('loss_') else k} {v:.4f}" for k, v in record.items()
                             if k.startswith("loss_") or k == "total")
            self.message(f"step {record['step']} epoch {record['epoch']}: {terms} lr {record['lr']:.2e}")

    def message(self, text: str) -> None:
        (self.p.console if self.p is not None else self.console).print(text, markup=False, highlight=False)

    def finish(self) -> None:
        if self.p is not None:
            self.p.stop()
            self.p = None


def _path(p: Optional[Path]) -> Optional[str]:
    return None if p is None else str(p)


def train(
    task: Optional[str] = typer.Option(None, "--task", help="s4, ms3 or avss (not needed with --resume)."),
    data: Optional[Path] = typer.Option(None, "--data", help="AVSBench root (holding Single-source/, Multi-sources/ or AVSS/)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder: checkpoints, state.pt, log.jsonl."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model preset (s4-r50, s4-pvt2, ms3-*, avss-*, tiny) or a .json model config. Default <task>-r50, or --init's."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Training resolution (multiple of 32). Default: the preset's (512 S4/MS3, 224 AVSS)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Default: released (S4 30, MS3 60, AVSS 30)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Clips per step over all processes. Default: released (S4/MS3 2, AVSS 4)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adamw (released, default) or sgd (momentum 0.9)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate. Default 2e-5 (released)."),
    lr_schedule: Optional[str] = typer.Option(None, "--lr-schedule", help="constant (released, default) or cosine (to 0 at the end of --epochs; --max-steps only stops early)."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Linear learning-rate warm-up over N steps. Default 0 (released)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay. Default 0.01 (torch's AdamW default, as released)."),
    freeze_epochs: Optional[int] = typer.Option(None, "--freeze-epochs", help="Epochs with the visual backbone frozen. Default: released (S4 5, MS3 10, AVSS 0)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="S4/MS3: dice (released) or bce; AVSS: ce."),
    aux: Optional[str] = typer.Option(None, "--aux", help="Auxiliary losses: both (default), mix (released), intermediate or none."),
    mix_weight: Optional[float] = typer.Option(None, "--mix-weight", help="Weight of the mix loss. Default 0.1."),
    inter_weight: Optional[float] = typer.Option(None, "--inter-weight", help="Weight of each decoder layer's mask loss. Default 1.0."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 (default; IEEE float32, also on CUDA), tf32 (CUDA: TF32 convolutions and matmuls), bf16 or fp16 (autocast; fp16 with loss scaling, CUDA only)."),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Max gradient norm (0 = off, the default)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of weights, data order and dropout. Default 123."),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every N epochs (0 = never). Default: released (S4/MS3 1, AVSS 2)."),
    val_start: Optional[int] = typer.Option(None, "--val-start", help="First epoch validated (0-based). Default: released (AVSS 10, else 0)."),
    val_batch: Optional[int] = typer.Option(None, "--val-batch", help="Clips per validation batch. Default: released (S4/MS3 2, AVSS 4)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many steps in all (resumable)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Log every N steps to log.jsonl. Default: released (50; AVSS 20)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader worker processes per process. Default 4."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default), cpu, cuda or cuda:N."),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights", metavar="PATH|NAME", help="ImageNet .pth: torchvision ResNet-50 or the PVTv2-B5 authors' file; PATH or NAME (resnet50, pvt2-b5: fetched once into the cache)."),
    vggish_weights: Optional[str] = typer.Option(None, "--vggish-weights", metavar="PATH|NAME", help="vggish-10086976.pth: PATH or the NAME vggish (fetched once into the cache)."),
    init: Optional[str] = typer.Option(None, "--init", metavar="PATH|NAME", help="Fine-tune from a whole checkpoint (ours or the authors' .pth): PATH or NAME, " + WEIGHTS_NAMES + "."),
    offline: Offline = False,
    train_vggish: Optional[bool] = typer.Option(None, "--train-vggish/--freeze-vggish", help="Train VGGish too (frozen by default, as released)."),
    train_masks: Optional[str] = typer.Option(None, "--train-masks", help="S4 train split: first (the benchmark's one annotated frame per clip) or all (every mask file present, e.g. avseg synth data)."),
    negative_audio: Optional[float] = typer.Option(None, "--negative-audio", help="Probability that a training clip hears negative audio (silence, noise or another train clip's off-screen sound) with an all-empty target. Default 0."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder exactly where it stopped."),
    quiet: Quiet = False,
    verbose: Verbose = False,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Train AVSegFormer on AVSBench with the released recipe (resumable; several GPUs with torchrun)."""
    set_verbosity(verbose, quiet)
    set_offline(offline)
    from avsegcli.train.engine import train as run_training
    from avsegcli.train import TrainConfig

    config = TrainConfig(
        task=task, data=_path(data), out=_path(out), preset=preset, image_size=image_size, epochs=epochs,
        batch_size=batch_size, optimizer=optimizer, lr=lr, lr_schedule=lr_schedule, warmup_steps=warmup_steps, weight_decay=weight_decay, freeze_epochs=freeze_epochs, loss=loss, aux=aux,
        mix_weight=mix_weight, inter_weight=inter_weight, precision=precision, grad_clip=grad_clip, seed=seed,
        val_every=val_every, val_start=val_start, val_batch=val_batch, max_steps=max_steps, log_every=log_every,
        num_workers=workers, device=device, backbone_weights=_path(backbone_weights),
        vggish_weights=_path(vggish_weights), init=_path(init), train_vggish=train_vggish, train_masks=train_masks, negative_audio=negative_audio, resume=_path(resume),
    )
    main_process = os.environ.get("RANK", "0") == "0"
    if verbose and main_process:
        from avsegcli.cli.common import detail

        detail(f"config {config}")
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    progress = _RichTrainProgress(console, quiet=quiet or as_json or not main_process)
    try:
        result = run_training(config, progress=progress)
    finally:
        progress.finish()
    if not main_process:
        return
    summary = {"run_dir": str(result.run_dir), "step": result.step, "epoch": result.epoch,
               "last": str(result.last) if result.last else None, "best": str(result.best) if result.best else None,
               "best_miou": result.best_miou, "seconds": round(result.seconds, 3), "warnings": result.warnings}
    if as_json:
        print(json.dumps(summary, indent=2))
    elif not quiet:
        best = f", best val mIoU {result.best_miou:.4f} ({result.best})" if result.best_miou is not None else ""
        console.print(f"done: step {result.step}, epoch {result.epoch} in {result.seconds:.1f} s; "
                      f"last {result.last}{best}", markup=False)


def main() -> None:
    """``python -m avsegcli.cli.train_cmd``: this command alone, errors as one line like ``avseg``."""
    from avsegcli.errors import AvsegError

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train)
    try:
        app()
    except AvsegError as err:
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {err}", markup=False)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
