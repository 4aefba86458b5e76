"""``avseg synth``: write a procedural audio-visual dataset in the AVSBench layout (flags map onto ``generate``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from avsegcli.cli.common import Quiet, Verbose, set_verbosity
from avsegcli.errors import AvsegError


def _parse_pairs(text: Optional[str], flag: str) -> dict[str, int]:
    """``"train=1,val=2"`` -> ``{"train": 1, "val": 2}`` (AvsegError on a malformed item)."""
    out: dict[str, int] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = int(value)
        except ValueError:
            raise AvsegError(f"{flag} takes split=integer pairs separated by commas, got {item!r}") from None
    return out


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def synth(
    task: str = typer.Option(..., "--task", "-t", help="s4 (single source), ms3 (multi-source) or avss (semantic)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset root to write (the folder you later pass as --data)."),
    videos: int = typer.Option(10, "--videos", "-n", help="Clips per split (AVSS: per subset and split)."),
    split_videos: Optional[str] = typer.Option(None, "--split-videos", help="Per-split clip counts, e.g. train=160,val=20,test=20 (overrides --videos)."),
    seed: int = typer.Option(0, "--seed", "-s", help="Dataset seed; each split's seed is derived from it and the split name."),
    split_seeds: Optional[str] = typer.Option(None, "--split-seeds", help="Explicit split seeds, e.g. train=1,val=2,test=3 (must differ)."),
    splits: str = typer.Option("train,val,test", "--splits", help="Splits to write, comma-separated."),
    subsets: str = typer.Option("v1s,v1m,v2", "--subsets", help="AVSS subsets, comma-separated (v1s, v1m: 5 s; v2: 10 s)."),
    image_size: int = typer.Option(224, "--image-size", help="Frame side in pixels (even)."),
    fps: int = typer.Option(16, "--fps", help="Frame rate of the mp4s; the benchmark frame of second l is int(l*fps + 15/16*fps)."),
    mp4: bool = typer.Option(True, "--mp4/--no-mp4", help="Also write videos/<split>/<name>.mp4 (H.264 + AAC)."),
    workers: int = typer.Option(1, "--workers", "-j", help="Processes rendering clips (the files do not depend on it)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write over an earlier synthetic dataset of this task in --out."),
    quiet: Quiet = False,
    verbose: Verbose = False,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Generate bouncing-shape clips whose objects make category sounds, with ground-truth masks of the sounding ones."""
    from avsegcli.synth import generate  # lazy: the library (torch) only once a command runs, not for --help

    set_verbosity(verbose, quiet)

    split_names = _names(splits)
    counts = _parse_pairs(split_videos, "--split-videos") or videos
    kw = dict(videos_per_split=counts, seed=seed, splits=split_names, mp4=mp4, image_size=image_size, fps=fps,
              split_seeds=_parse_pairs(split_seeds, "--split-seeds") or None, subsets=_names(subsets),
              workers=workers, overwrite=overwrite)
    if quiet or as_json:
        summary = generate(task, out, **kw)
    else:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn()]
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            bar = progress.add_task(f"synth {task}", total=None)

            def report(done: int, total: int, name: str) -> None:
                progress.update(bar, completed=done, total=total, description=f"synth {task}: {name}")

            summary = generate(task, out, progress=report, **kw)
    if as_json:
        print(json.dumps(summary, indent=1))
        return
    if quiet:
        return
    table = Table(title=f"avseg synth {task}: {out}")
    for col in ("split", "seed", "clips", "seconds", "with sound", "silent"):
        table.add_column(col)
    for name, s in summary["splits"].items():
        table.add_row(name, str(summary["split_seeds"][name]), str(s["clips"]), str(s["seconds"]),
                      str(s["sounding_seconds"]), str(s["silent_seconds"]))
    cats = ", ".join(f"{k} {v}" for k, v in summary["category_seconds"].items())
    table.caption = (f"{sum(s['clips'] for s in summary['splits'].values())} clips in {summary['elapsed_s']:.1f} s "
                     f"({summary['clips_per_s']} clips/s); seconds with sound per category: {cats}")
    Console().print(table)
