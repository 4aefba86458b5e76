"""``avseg run``: segment the sounding objects of many videos.

The flags become one :class:`~avsegcli.run.options.RunOptions` (one field each), handed to
:func:`avsegcli.run.session.run_all`; this module adds the display: progress bars, the result table, one
``error:`` line per failed video, ``--json``, ``--render`` and ``--sheet``. ``avseg run --help`` groups the flags
in panels; the ones a first run needs (INPUTS, ``--out``, ``--weights``, ``--device``, ``--fps``, ``--format``)
come first.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from avsegcli.cli.common import WEIGHTS_NAMES, detail, offline_in_panel, set_offline, set_verbosity, verbosity_in_panel
from avsegcli.cli.run_ray import RichRayProgress
from avsegcli.errors import AvsegError, os_reason

#: help panels of ``avseg run --help``, after the arguments and the first options (what a first run needs)
INPUT, MODEL, OUTPUT, DISPLAY, CLUSTER = "Input", "Model and precision", "Output", "Display", "Cluster (Ray)"
VerboseHere, QuietHere = verbosity_in_panel(DISPLAY)
OfflineHere = offline_in_panel(MODEL)


class _RichProgress:
    """Overall videos and frames, one bar per video in flight, frames/s."""

    def __init__(self, progress: Progress, num_videos: int) -> None:
        self.p = progress
        self.videos = progress.add_task("videos", total=num_videos)
        self.frames = progress.add_task("frames", total=0)
        self.per_video: dict[int, int] = {}
        self.t0 = time.perf_counter()
        self.count = 0

    def video_started(self, vid: int, name: str, frames: int) -> None:
        self.p.update(self.frames, total=(self.p.tasks[self.frames].total or 0) + frames)
        self.per_video[vid] = self.p.add_task(f"  {name[:40]}", total=frames)

    def frames_done(self, vid: int, n: int) -> None:
        self.count += n
        rate = self.count / max(time.perf_counter() - self.t0, 1e-9)
        self.p.update(self.frames, advance=n, description=f"frames ({rate:.2f}/s)")
        if vid in self.per_video:
            self.p.update(self.per_video[vid], advance=n)

    def video_finished(self, vid: int, result) -> None:
        self.p.update(self.videos, advance=1)
        task = self.per_video.pop(vid, None)
        if task is not None:
            self.p.remove_task(task)


def _sheet_all(results, out: Path, console: Console, quiet: bool) -> None:
    """DIR/<stem>/sheet.png for the videos done in this run (a failure marks that video failed, the rest go on)."""
    from avsegcli.render.sheet import contact_sheet

    for r in results:
        if r.status != "done":
            continue
        try:
            stats = contact_sheet(r.path, out / r.stem, out / r.stem / "sheet.png")
            if not quiet:
                console.print(f"wrote {stats['out']} ({stats['tiles']} tiles)", markup=False, highlight=False)
        except AvsegError as err:
            r.status, r.reason = "failed", f"sheet: {err.reason}"


def _render_all(results, out: Path, console: Console, quiet: bool, start: float | None = None, end: float | None = None) -> None:
    """Overlay videos for the videos done in this run (a render failure marks that video failed, the rest go on)."""
    from avsegcli.render import render_video

    for r in results:
        if r.status != "done":
            continue
        try:
            stats = render_video(r.path, out / r.stem, out / r.stem / "overlay.mp4", progress=not quiet, start=start, end=end)
            if not quiet:
                console.print(f"rendered {stats['out']} ({stats['frames']} frames)", markup=False, highlight=False)
        except AvsegError as err:
            r.status, r.reason = "failed", f"render: {err.reason}"
        except OSError as err:  # the disk filled up or went read-only
            r.status, r.reason = "failed", f"render: cannot write {out / r.stem / 'overlay.mp4'} ({os_reason(err)})"


def _display(console: Console, *, ray: bool):
    """The progress display of :func:`avsegcli.run.session.run_all`: bars on stderr, per video (or per Ray node)."""

    @contextmanager
    def show(num_videos: int):
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=False) as progress:
            yield RichRayProgress(progress, num_videos) if ray else _RichProgress(progress, num_videos)

    return show


def _report(results, out: Path, frames: int, seconds: float, summary_path: Path | None, *, as_json: bool, quiet: bool) -> None:
    """stdout: the summary as JSON (``--json``) or the result table (unless ``--quiet``)."""
    if as_json and summary_path is not None:
        print(summary_path.read_text())
    elif not quiet:
        table = Table(title=f"avseg run: {out}")
        for col in ("video", "status", "frames", "seconds", "frames/s", "note"):
            table.add_column(col)
        for r in results:
            rate = f"{r.frames / r.seconds:.2f}" if r.seconds else ""
            note = r.reason or ("; ".join(r.warnings) if r.warnings else "")
            table.add_row(Path(r.path).name, r.status, str(r.frames), f"{r.seconds:.1f}", rate, note)
        counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
        table.caption = (f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; {frames} frames in "
                         f"{seconds:.1f} s ({frames / max(seconds, 1e-9):.2f} frames/s)")
        Console().print(table)


def run(
    inputs: list[str] = typer.Argument(..., help="Video files, folders (searched recursively) or @list.txt files."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: one subfolder of masks per video."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", metavar="PATH|NAME", help="Checkpoint: PATH (.pth of the authors or our .safetensors; .onnx/.xml with --backend) or NAME, " + WEIGHTS_NAMES + ", e.g. s4-pvt2. Default: the bundled model in weights/."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    fps: float = typer.Option(1.0, "--fps", help="Frames per second to segment (1 = the benchmark's rate; 0 = every frame)."),
    fmt: str = typer.Option("png", "--format", help="png (one image per frame), npz (one array per video), rle (masks.json: COCO RLE, YouTube-VIS-like) or all."),
    glob: Optional[str] = typer.Option(None, "--glob", help="File pattern inside folders (default: common video extensions).", rich_help_panel=INPUT),
    start: Optional[float] = typer.Option(None, "--start", help="Segment only frames at or after this time (seconds on the source's timeline).", rich_help_panel=INPUT),
    end: Optional[float] = typer.Option(None, "--end", help="Segment only frames before this time (seconds).", rich_help_panel=INPUT),
    audio: str = typer.Option("original", "--audio", help="What the model hears: original (the video's own audio), silence, noise (white, RMS 0.1, seed 0) or FILE (another file's audio from its start, looped or cut to the video's length). Recorded in meta.json.", rich_help_panel=INPUT),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode processes (0 = decode in the main process; default from the cores: all but one with CUDA, a quarter on the CPU, at least 1).", rich_help_panel=INPUT),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where native and faster: AVX512-BF16/AMX CPUs, CUDA 8.0+; else fp32), fp32 (IEEE), tf32 (CUDA), bf16 or fp16.", rich_help_panel=MODEL),
    impl: str = typer.Option("fast", "--impl", help="fast (default) or reference (the authors' arithmetic, op for op; same masks within float rounding).", rich_help_panel=MODEL),
    compile_model: bool = typer.Option(False, "--compile", help="Run the model through torch.compile (pays a compile time at start; see README).", rich_help_panel=MODEL),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Frames per forward pass, across videos.", rich_help_panel=MODEL),
    backend: str = typer.Option("torch", "--backend", help="torch (default), onnxruntime or openvino: run an exported model (--weights FILE.onnx/.xml from avseg export, or a checkpoint exported on first use into the cache). Extras: [onnx], [openvino].", rich_help_panel=MODEL),
    offline: OfflineHere = False,
    save_probs: bool = typer.Option(False, "--save-probs", help="With --format npz (or all): also store probabilities.", rich_help_panel=OUTPUT),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo videos that already have a finished output.", rich_help_panel=OUTPUT),
    render: bool = typer.Option(False, "--render", help="Also draw each finished video's masks over it: DIR/<stem>/overlay.mp4 (as avseg render).", rich_help_panel=OUTPUT),
    sheet: bool = typer.Option(False, "--sheet", help="Also write DIR/<stem>/sheet.png: every sampled frame with its mask in one grid (as avseg render --sheet).", rich_help_panel=OUTPUT),
    quiet: QuietHere = False,
    verbose: VerboseHere = False,
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON on stdout.", rich_help_panel=DISPLAY),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Run on Ray (needs the optional ray extra): local (start an instance on this machine), auto (the cluster joined with `ray start`), host:port or ray://host:port. --out must be shared by every node.", rich_help_panel=CLUSTER),
    ray_actors: int = typer.Option(0, "--ray-actors", help="With --ray: actors, each with its own loaded model and decoding inline (0 = as many as the cluster's GPUs, or CPUs, allow).", rich_help_panel=CLUSTER),
    ray_gpus_per_actor: Optional[float] = typer.Option(None, "--ray-gpus-per-actor", help="With --ray: GPUs per actor (0.25 = four actors share a GPU; default 1 when the cluster has GPUs, else 0).", rich_help_panel=CLUSTER),
    ray_cpus_per_actor: float = typer.Option(1.0, "--ray-cpus-per-actor", help="With --ray: CPU cores per actor.", rich_help_panel=CLUSTER),
    ray_retries: int = typer.Option(3, "--ray-retries", help="With --ray: times a video is given to another actor after its actor or node was lost.", rich_help_panel=CLUSTER),
) -> None:
    """Segment the sounding objects of every sampled frame; resumable (finished videos are skipped)."""
    from avsegcli.run.options import RayOptions, RunOptions  # lazy: the library imports torch (not for --help)
    from avsegcli.run.results import write_summary
    from avsegcli.run.session import run_all

    cluster = None if ray is None else RayOptions(address=ray, actors=ray_actors, gpus_per_actor=ray_gpus_per_actor,
                                                  cpus_per_actor=ray_cpus_per_actor, retries=ray_retries)
    opts = RunOptions(inputs=inputs, glob=glob, fps=fps, start=start, end=end, audio=audio, workers=workers, weights=weights,
                      device=device, precision=precision, impl=impl, compile=compile_model, batch_size=batch_size, backend=backend, offline=offline, out=out,
                      fmt=fmt, save_probs=save_probs, overwrite=overwrite, render=render, sheet=sheet, quiet=quiet,
                      verbose=verbose, json=as_json, cluster=cluster)
    set_verbosity(opts.verbose, opts.quiet)
    set_offline(opts.offline)
    if opts.verbose:  # decode workers keep their stderr (normally /dev/null: native decoder noise)
        os.environ.setdefault("AVSEG_WORKER_STDERR", "1")
    console = Console(stderr=True)
    silent = opts.quiet or opts.json
    outcome = run_all(opts, display=None if silent else _display(console, ray=cluster is not None), note=detail)
    results, t0 = outcome.results, outcome.started
    if opts.render:
        _render_all(results, opts.out, console, silent, start=opts.start, end=opts.end)
    if opts.sheet:
        _sheet_all(results, opts.out, console, silent)
    seconds = time.perf_counter() - t0
    frames = sum(r.frames for r in results)
    try:
        summary_path = write_summary(results, opts.out, {"model": outcome.model, "seconds": round(seconds, 3),
                                                    "frames_per_second": round(frames / seconds, 4) if seconds else None,
                                                    **outcome.extra})
    except OSError as exc:  # the disk filled up or went read-only at the very end
        summary_path, summary_error = None, f"error: {opts.out / 'summary.json'}: cannot write the run summary ({os_reason(exc)})"
    else:
        summary_error = ""
    _report(results, opts.out, frames, seconds, summary_path, as_json=opts.json, quiet=opts.quiet)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:  # one line each, whatever a file name contains
        line = f"error: {r.path}: {r.reason}".replace("\r", "\\r").replace("\n", "\\n")
        err.print(line, markup=False, emoji=False)
    if summary_error:
        err.print(summary_error, markup=False)
    for r in results:
        if r.status != "failed":
            detail(f"{r.path}: {r.status}{f' ({r.reason})' if r.reason else ''}; {r.frames} frames"
                   + (f"; {'; '.join(r.warnings)}" if r.warnings else ""))
    if failed or summary_error:
        raise typer.Exit(1)
