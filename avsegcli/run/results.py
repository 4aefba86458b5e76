"""What a run reports: one :class:`VideoResult` per input, progress hooks, and ``summary.json``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class VideoResult:
    """One input's outcome. ``seconds``: wall time from its first decoded frame to its folder's publication."""

    path: str
    stem: str
    status: str  # done | skipped | failed
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    has_audio: bool | None = None
    warnings: list[str] = field(default_factory=list)


class RunProgress(Protocol):
    """Progress of a local run (``vid``: the input's index; ``frames``/``n``: sampled frames)."""

    def video_started(self, vid: int, name: str, frames: int) -> None: ...
    def frames_done(self, vid: int, n: int) -> None: ...
    def video_finished(self, vid: int, result: VideoResult) -> None: ...


def write_summary(results: list[VideoResult], out_dir: str | Path, extra: dict[str, Any]) -> Path:
    """``out_dir/summary.json`` (written to a temporary name, then renamed)."""
    data = {**extra, "videos": [asdict(r) for r in results],
            "counts": {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")},
            "frames": sum(r.frames for r in results)}
    path = Path(out_dir) / "summary.json"
    tmp = path.with_name(f".summary.json.{os.getpid()}.tmp")  # two runs into one --out must not share it
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path
