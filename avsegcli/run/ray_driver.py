"""``avseg run --ray``, the driver: hands out videos to actors, gathers results, replaces lost actors.

Videos are the unit of work. The driver gives each idle :class:`~avsegcli.run.ray_actors.Segmenter` one video,
gathers the :class:`~avsegcli.run.results.VideoResult`\\ s, replaces an actor that died (killed, crashed, its node
lost) and gives its video to another actor at most ``retries`` times; a video that fails for its own reason (a bad
file) comes back as a failed result and is not retried. Each actor writes a marker file into ``--out`` when it
starts and the driver reads it, so an ``--out`` not shared by every node is refused at once.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from avsegcli.errors import AvsegError
from avsegcli.run.options import RunOptions
from avsegcli.run.plan import output_stems
from avsegcli.run.ray_actors import Board, Segmenter
from avsegcli.run.results import VideoResult


@dataclass
class RayRun:
    """What :func:`avsegcli.run.ray.run_on_ray` returns: results in input order, the actors' model info and the
    summary's ``ray`` entry."""

    results: list[VideoResult]
    model: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


class RayProgress(Protocol):
    def update(self, snapshot: dict[str, Any]) -> None: ...


def _first_line(err: BaseException) -> str:
    """One line for a Ray error: the cause's reason for an error raised in our code, else Ray's first line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, AvsegError):
        return cause.reason
    text = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
    return (text.strip().splitlines() or [type(err).__name__])[0][:300]


class Driver:
    """One ``--ray`` run on a connected cluster: ``opts`` (validated, with ``opts.cluster``) go to every actor."""

    def __init__(self, ray, paths: list[Path], opts: RunOptions, progress: RayProgress | None) -> None:
        self.ray, self.paths, self.out, self.progress = ray, paths, Path(opts.out), progress
        self.run_opts, self.ray_opts = opts, opts.cluster  # the whole record (for the actors), its --ray part
        self.stems = output_stems(paths)
        self.token = secrets.token_hex(4)
        res = ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
        self.gpa = self.ray_opts.gpus_per_actor if self.ray_opts.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
        self.cpa = self.ray_opts.cpus_per_actor
        if self.gpa > gpus:
            raise AvsegError(f"--ray-gpus-per-actor {self.gpa:g}: the Ray cluster has {gpus:g} GPU(s)")
        if self.cpa > cpus:
            raise AvsegError(f"--ray-cpus-per-actor {self.cpa:g}: the Ray cluster has {cpus:g} CPU(s)")
        fit = int(gpus // self.gpa) if self.gpa > 0 else int(cpus // self.cpa) if self.cpa > 0 else 1
        self.num_actors = max(1, min(self.ray_opts.actors or fit, len(paths)))
        # a CPU actor on a GPU node must not take a GPU Ray did not give it
        self.device = "cpu" if self.gpa == 0 and str(opts.device) == "auto" else None
        self.cluster = {"CPU": cpus, "GPU": gpus, "nodes": len([n for n in ray.nodes() if n.get("Alive")])}
        self.spawned = 0
        self.max_spawns = self.num_actors * (1 + max(0, self.ray_opts.retries))
        self.board = ray.remote(Board).options(num_cpus=0).remote()
        self.actor_cls = ray.remote(Segmenter)

    def _spawn(self) -> None:
        name = f"avseg-{self.token}-{self.spawned}"
        self.spawned += 1
        actor = self.actor_cls.options(name=name, num_cpus=self.cpa, num_gpus=self.gpa, max_restarts=0).remote(
            name, os.getcwd(), self.run_opts, self.device, int(max(1, self.cpa)), self.board)
        self.actors[name] = actor
        self.starting[actor.hello.remote(str(self.out), f".avseg-ray-{name}.json")] = name

    def _check_marker(self, info: dict[str, Any]) -> None:
        marker = self.out / f".avseg-ray-{info['actor']}.json"
        try:
            seen = json.loads(marker.read_text())
            marker.unlink()
        except (OSError, ValueError):
            seen = None
        if not seen or seen.get("node_id") != info["node_id"]:
            raise AvsegError(f"{self.out}: --out is not visible from Ray node {info['ip']} (its actor wrote a marker there that "
                             "this driver cannot read); --out must be a shared folder at the same path on every node")

    def _kill(self, name: str) -> None:
        actor = self.actors.pop(name, None)
        if actor is not None:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass

    def run(self) -> RayRun:
        ray = self.ray
        self.actors: dict[str, Any] = {}
        self.starting: dict[Any, str] = {}
        running: dict[Any, tuple[str, int]] = {}
        where: dict[str, dict[str, Any]] = {}
        idle: list[str] = []
        todo = deque(range(len(self.paths)))
        results: list[VideoResult | None] = [None] * len(self.paths)
        attempts = [0] * len(self.paths)
        lost: list[dict[str, Any]] = []
        nodes: dict[str, dict[str, Any]] = {}
        model: dict[str, Any] = {}
        t0, last_poll, left = time.monotonic(), 0.0, len(self.paths)

        def settle(vid: int, result: VideoResult) -> None:
            nonlocal left
            results[vid], left = result, left - 1

        for _ in range(self.num_actors):
            self._spawn()
        try:
            while left:  # a counter: a scan of 200k results per event would dominate the driver
                while idle and todo:
                    vid, name = todo.popleft(), idle.pop()
                    ref = self.actors[name].segment.remote(str(self.paths[vid]), self.stems[vid])
                    running[ref] = (name, vid)
                if not self.starting and not running:
                    if self.spawned < self.max_spawns:
                        self._spawn()
                        continue
                    last = lost[-1]["error"] if lost else "unknown"
                    for vid in todo:
                        settle(vid, VideoResult(str(self.paths[vid]), self.stems[vid], "failed",
                                                reason=f"no Ray actor left to process it ({len(lost)} lost; last: {last})"))
                    break
                ready, _ = ray.wait(list(self.starting) + list(running), num_returns=1, timeout=min(0.5, self.ray_opts.progress_every))
                for ref in ready:
                    if ref in self.starting:
                        name = self.starting.pop(ref)
                        try:
                            info = ray.get(ref)
                        except ray.exceptions.RayError as err:
                            lost.append({"actor": name, "stem": None, "node": None, "error": _first_line(err)})
                            self._kill(name)
                            continue
                        if info["error"]:
                            raise AvsegError(info["error"])
                        self._check_marker(info)
                        model = model or info["model"]
                        where[name] = info
                        node = nodes.setdefault(info["node_id"], {"ip": info["ip"], "actors": 0, "done": 0, "skipped": 0, "failed": 0, "frames": 0})
                        node["actors"] += 1
                        idle.append(name)
                        continue
                    name, vid = running.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayTaskError as err:  # raised inside run_videos: this video's own failure
                        settle(vid, VideoResult(str(self.paths[vid]), self.stems[vid], "failed", reason=_first_line(err)))
                        nodes[where[name]["node_id"]]["failed"] += 1
                        idle.append(name)
                        continue
                    except ray.exceptions.RayError as err:  # the actor, its worker or its node is gone
                        attempts[vid] += 1
                        lost.append({"actor": name, "stem": self.stems[vid], "node": where[name]["ip"], "error": _first_line(err)})
                        self._kill(name)
                        if attempts[vid] <= self.ray_opts.retries:
                            todo.appendleft(vid)
                        else:
                            settle(vid, VideoResult(str(self.paths[vid]), self.stems[vid], "failed",
                                                    reason=f"its Ray actor was lost {attempts[vid]} times (last on {where[name]['ip']}: {lost[-1]['error']})"))
                        if self.spawned < self.max_spawns:
                            self._spawn()
                        continue
                    r = VideoResult(**out["result"])
                    settle(vid, r)
                    node = nodes[out["node_id"]]
                    node[r.status] = node.get(r.status, 0) + 1
                    node["frames"] += r.frames
                    idle.append(name)
                if not where and time.monotonic() - t0 > self.ray_opts.start_timeout:
                    raise AvsegError(f"no avseg actor could start on the Ray cluster within {self.ray_opts.start_timeout:.0f} s (each asks for "
                                     f"{self.cpa:g} CPU and {self.gpa:g} GPU; the cluster has {self.cluster['CPU']:g} CPU, {self.cluster['GPU']:g} GPU)")
                if self.progress and (time.monotonic() - last_poll >= self.ray_opts.progress_every or not left):
                    last_poll = time.monotonic()
                    self.progress.update(self._snapshot(results, nodes, where))
        finally:
            for name in list(self.actors):
                self._kill(name)
            try:
                ray.kill(self.board)
            except Exception:
                pass
            for marker in self.out.glob(f".avseg-ray-avseg-{self.token}-*.json"):  # of actors still starting at the end
                marker.unlink(missing_ok=True)
        info = {"address": self.ray_opts.address or "local", "actors": self.num_actors, "gpus_per_actor": self.gpa,
                "cpus_per_actor": self.cpa, "cluster": self.cluster, "retries": self.ray_opts.retries,
                "nodes": [{"node_id": k, **v} for k, v in nodes.items()], "lost": lost}
        return RayRun([r for r in results if r is not None], model, info)

    def _snapshot(self, results, nodes, where) -> dict[str, Any]:
        try:
            live = self.ray.get(self.board.snapshot.remote(), timeout=5)
        except Exception:  # progress is best effort
            live = {}
        done = [r for r in results if r is not None]
        per_node = {v["ip"]: {"videos": v["done"] + v["skipped"] + v["failed"], "frames": v["frames"]} for v in nodes.values()}
        for rec in live.values():
            per_node.setdefault(rec["node"], {"videos": 0, "frames": 0})["frames"] += rec["done"]
        return {"videos_done": len(done), "videos_total": len(results),
                "frames_done": sum(r.frames for r in done) + sum(rec["done"] for rec in live.values()),
                "frames_total": sum(r.frames for r in done) + sum(rec["total"] for rec in live.values()),
                "nodes": per_node, "in_flight": live}
