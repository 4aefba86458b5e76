"""``avseg run --ray``: the driver's display (videos and frames done, per node), fed by :func:`avsegcli.run.ray.run_on_ray`."""

from __future__ import annotations

import time
from typing import Any

from rich.progress import Progress


class RichRayProgress:
    """Overall videos and frames, and one line per Ray node with its videos and frames done
    (:class:`avsegcli.run.ray_driver.RayProgress`)."""

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
