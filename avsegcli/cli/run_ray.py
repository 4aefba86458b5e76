"""``avseg run --ray``: the driver's display (videos and frames done, per node) around :func:`avsegcli.run.ray.run_on_ray`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _RichRayProgress:
    """Overall videos and frames, and one line per Ray node with its videos and frames done."""

    def __init__(self, progress: Progress, num_videos: int) -> None:
        self.p = progress
        self.videos = progress.add_task("videos", total=num_videos)
        self.frames = progress.add_task("frames", total=0)
        self.nodes: dict[str, int] = {}
        self.total = num_videos
        self.t0 = time.perf_counter()

    def update(self, snap: dict[str, Any]) -> None:
        rate = snap["frames_done"] / max(time.perf_counter() - self.t0, 1e-9)
        self.p.update(self.videos, completed=snap["videos_done"])
        self.p.update(self.frames, completed=snap["frames_done"], total=max(snap["frames_total"], snap["frames_done"]),
                      description=f"frames ({rate:.2f}/s)")
        for ip, rec in sorted(snap["nodes"].items()):
            if ip not in self.nodes:
                self.nodes[ip] = self.p.add_task("", total=self.total)
            self.p.update(self.nodes[ip], completed=rec["videos"], description=f"  node {ip}: {rec['frames']} frames")


def check_ray_flags(actors: int, gpus_per_actor: float | None, cpus_per_actor: float, retries: int) -> None:
    """Usage errors (exit 2) before any work: Ray not installed (with how to install it), impossible numbers."""
    from avsegcli.errors import AvsegError
    from avsegcli.run.ray import import_ray

    import_ray()
    if actors < 0 or retries < 0:
        raise AvsegError("--ray-actors and --ray-retries must be 0 or more")
    if not cpus_per_actor > 0 or not (gpus_per_actor or 0) >= 0:
        raise AvsegError("--ray-cpus-per-actor must be above 0 and --ray-gpus-per-actor not negative")


def run_with_ray(paths: list[Path], out: Path, *, address: str, actors: int, gpus_per_actor: float | None, cpus_per_actor: float,
                 retries: int, predictor_kwargs: dict[str, Any], run_kwargs: dict[str, Any], console: Console, show: bool):
    """Returns ``(results, model_info, summary_extra)`` for ``avseg run``'s shared table, summary and exit code."""
    from avsegcli.run.ray import RayOptions, run_on_ray

    opts = RayOptions(address=address, actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor, retries=retries)
    kwargs = {"predictor_kwargs": predictor_kwargs, "run_kwargs": run_kwargs, "options": opts}
    if not show:
        run = run_on_ray(paths, out, **kwargs)
    else:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=False) as progress:
            run = run_on_ray(paths, out, progress=_RichRayProgress(progress, len(paths)), **kwargs)
    return run.results, run.model, {"ray": run.info}
