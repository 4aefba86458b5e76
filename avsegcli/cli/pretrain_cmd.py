"""``avseg pretrain-audio``: the synthetic stand-in for VGGish's AudioSet weights (flags map onto ``pretrain_audio``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from avsegcli.cli.common import Quiet, Verbose, set_verbosity
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def pretrain_audio(
    data: Path = typer.Option(..., "--data", "-d", help="A synthetic S4 dataset root (avseg synth --task s4); its train split is read."),
    out: Path = typer.Option(..., "--out", "-o", help="VGGish weights to write (.pth), for avseg train --vggish-weights."),
    preset: str = typer.Option("synth", "--preset", help="Model preset whose VGGish widths are trained."),
    steps: int = typer.Option(300, "--steps", help="Optimiser steps (AdamW, cosine learning rate)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Log-mel patches (seconds) per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and the patch order."),
    quiet: Quiet = False,
    verbose: Verbose = False,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Train VGGish to name the sounding categories of each second of a synthetic train split."""
    set_verbosity(verbose, quiet)
    from avsegcli.errors import AvsegError
    from avsegcli.synth.audio_pretrain import pretrain_audio as run

    if steps <= 0 or batch_size <= 0 or lr <= 0:
        raise AvsegError("--steps, --batch-size and --lr must be > 0")
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True, disable=quiet or as_json) as progress:
        bar = progress.add_task("audio pre-training", total=steps)
        res = run(data, out, preset=preset, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                  progress=lambda done, total, loss: progress.update(bar, completed=done, description=f"loss {loss:.4f}"))
    if as_json:
        print(json.dumps(res, indent=2))
    elif not quiet:
        val = res.get("val")
        tail = f"; val seconds fully right {val['exact']:.4f}" if val else ""
        console.print(f"wrote {res['out']} ({res['patches']} train seconds, {res['steps']} steps, {res['seconds']} s); "
                      f"train seconds fully right {res['train']['exact']:.4f}{tail}", markup=False)
