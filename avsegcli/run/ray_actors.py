"""``avseg run --ray``, inside the cluster: the segmenting actors and the progress board they report to.

Each :class:`Segmenter` holds one loaded :class:`~avsegcli.inference.predictor.Predictor` (built from the run's
:class:`~avsegcli.run.options.RunOptions`, the same record the driver got) and runs
:func:`avsegcli.run.local.segment_videos` on one video at a time, decoding inline: the output folder, ``meta.json``,
the ``.partial`` build-and-rename and the resume rule are the local run's own code.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from avsegcli.errors import AvsegError
from avsegcli.run.local import segment_videos
from avsegcli.run.options import RunOptions
from avsegcli.run.results import VideoResult


class Board:
    """A CPU-less actor holding the frames done of the videos in flight (actors report, the driver polls)."""

    def __init__(self) -> None:
        self.live: dict[str, dict[str, Any]] = {}

    def started(self, stem: str, actor: str, node: str, total: int) -> None:
        self.live[stem] = {"actor": actor, "node": node, "done": 0, "total": total}

    def frames(self, stem: str, n: int) -> None:
        if stem in self.live:
            self.live[stem]["done"] += n

    def finished(self, stem: str) -> None:
        self.live.pop(stem, None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.live


class BoardProgress:
    """:class:`avsegcli.run.results.RunProgress` for one video, forwarded to the board (fire and forget)."""

    def __init__(self, board, stem: str, actor: str, node: str) -> None:
        self.board, self.stem, self.actor, self.node = board, stem, actor, node

    def video_started(self, vid: int, name: str, frames: int) -> None:
        self.board.started.remote(self.stem, self.actor, self.node, frames)

    def frames_done(self, vid: int, n: int) -> None:
        self.board.frames.remote(self.stem, n)

    def video_finished(self, vid: int, result: VideoResult) -> None:
        self.board.finished.remote(self.stem)


class Segmenter:
    """One Ray actor: a loaded Predictor, working in the driver's folder so relative paths mean the same.
    ``device``: None for the run's ``--device``, or ``"cpu"`` for a CPU actor (no GPU granted by Ray)."""

    def __init__(self, name: str, cwd: str, opts: RunOptions, device: str | None, threads: int, board) -> None:
        import ray  # lazy: an optional extra (this module is imported by every run; the class runs only in Ray)

        torch.set_num_threads(max(1, threads))
        self.name, self.board, self.opts, self.error = name, board, opts, ""
        self.node_id = ray.get_runtime_context().get_node_id()
        self.ip = ray.util.get_node_ip_address()
        self.cwd_ok = os.path.isdir(cwd)
        if self.cwd_ok:
            os.chdir(cwd)
        try:
            self.predictor = opts.predictor(device=device)
            self.model = self.predictor.model_info()
        except AvsegError as err:
            hint = "" if self.cwd_ok else f" (the driver's folder {cwd} does not exist on node {self.ip}: give absolute shared paths)"
            self.error = f"{err}{hint}"

    def hello(self, out_dir: str, marker: str) -> dict[str, Any]:
        """Start-up report; writes ``out_dir/marker`` for the driver to find (the shared-folder check)."""
        info = {"actor": self.name, "node_id": self.node_id, "ip": self.ip, "pid": os.getpid(), "error": self.error}
        if self.error:
            return info
        info["model"] = self.model
        try:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / marker).write_text(json.dumps({"node_id": self.node_id, "ip": self.ip}))
        except OSError as err:
            info["error"] = f"{out_dir}: cannot write the output folder on Ray node {self.ip} ({err.strerror or err})"
        return info

    def segment(self, path: str, stem: str) -> dict[str, Any]:
        """One video into ``opts.out/<stem>``: its :class:`VideoResult` (as a dict) and where it ran."""
        progress = BoardProgress(self.board, stem, self.name, self.ip)
        result = segment_videos(self.predictor, [Path(path)], self.opts, stems=[stem], progress=progress)[0]
        return {"result": asdict(result), "node_id": self.node_id, "ip": self.ip}
