"""``avseg run --ray``: the same run spread over a Ray cluster, one loaded :class:`Predictor` per actor.

Videos are the unit of work. Each actor calls :func:`avsegcli.run.local.run_videos` for one video at a time (decoding
inline, ``workers=0``), so the output folder, ``meta.json``, the ``.partial`` build-and-rename and the resume rule
are the local run's own code. The driver hands out videos, gathers the :class:`VideoResult`\\ s, replaces an actor
that died (killed, crashed, its node lost) and gives its video to another actor at most ``retries`` times; a video
that fails for its own reason (a bad file) comes back as a failed result and is not retried.

``--out`` must be one folder seen at the same path by every node (a shared filesystem): each actor writes a
marker file there when it starts and the driver reads it, so a node-local path is refused at once.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from avsegcli.errors import AvsegError
from avsegcli.run.local import VideoResult, output_stems

INSTALL_HINT = "--ray needs Ray, an optional extra: pip install 'avseg[ray]' (or pip install -e '.[ray]' in a checkout)"
START_TIMEOUT_S = 600.0  # no actor ready after this long: the cluster cannot host one


def import_ray():
    """The ``ray`` module, or an :class:`AvsegError` (exit 2) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise AvsegError(INSTALL_HINT) from None
    return ray


@dataclass
class RayOptions:
    """Where and how wide to run. ``address``: None or ``local`` starts a private local instance; ``auto``,
    ``host:port`` or ``ray://host:port`` joins a running cluster."""

    address: str | None = None
    actors: int = 0  # 0: as many as the cluster's GPUs (or CPUs, without GPUs) allow
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU actors)
    cpus_per_actor: float = 1.0
    retries: int = 3  # per video, after its actor or node was lost
    start_timeout: float = START_TIMEOUT_S
    progress_every: float = 0.5  # seconds between progress polls of the actors' frame counts


@dataclass
class RayRun:
    """What :func:`run_on_ray` returns: results in input order, the actors' model info and the summary's ``ray``."""

    results: list[VideoResult]
    model: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


class RayProgress(Protocol):
    def update(self, snapshot: dict[str, Any]) -> None: ...


# ---- inside the cluster ---------------------------------------------------------------------------------------

class _Board:
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


class _BoardProgress:
    """:class:`avsegcli.run.local.RunProgress` for one video, forwarded to the board (fire and forget)."""

    def __init__(self, board, stem: str, actor: str, node: str) -> None:
        self.board, self.stem, self.actor, self.node = board, stem, actor, node

    def video_started(self, vid: int, name: str, frames: int) -> None:
        self.board.started.remote(self.stem, self.actor, self.node, frames)

    def frames_done(self, vid: int, n: int) -> None:
        self.board.frames.remote(self.stem, n)

    def video_finished(self, vid: int, result: VideoResult) -> None:
        self.board.finished.remote(self.stem)


class _Segmenter:
    """One Ray actor: a loaded Predictor, working in the driver's folder so relative paths mean the same."""

    def __init__(self, name: str, cwd: str, predictor_kwargs: dict[str, Any], threads: int, board) -> None:
        import ray
        import torch

        torch.set_num_threads(max(1, threads))
        self.name, self.board, self.error = name, board, ""
        self.node_id = ray.get_runtime_context().get_node_id()
        self.ip = ray.util.get_node_ip_address()
        self.cwd_ok = os.path.isdir(cwd)
        if self.cwd_ok:
            os.chdir(cwd)
        try:
            from avsegcli.inference.predictor import Predictor

            self.predictor = Predictor(**predictor_kwargs)
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

    def segment(self, path: str, stem: str, out_dir: str, run_kwargs: dict[str, Any]) -> dict[str, Any]:
        from avsegcli.run.local import run_videos

        progress = _BoardProgress(self.board, stem, self.name, self.ip)
        result = run_videos(self.predictor, [Path(path)], out_dir, workers=0, stems=[stem], progress=progress, **run_kwargs)[0]
        return {"result": asdict(result), "node_id": self.node_id, "ip": self.ip}


# ---- the driver -----------------------------------------------------------------------------------------------

def connect(ray, address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` or start a local instance; True when this call started one (and owns it)."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address in (None, "", "local"):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        return True
    try:
        ray.init(address=address, **quiet)
    except ImportError as err:  # ray:// needs Ray Client's extra packages
        raise AvsegError(f"cannot join the Ray cluster at {address!r}: {err} (ray:// needs pip install 'ray[client]')") from None
    except Exception as err:  # ConnectionError, RuntimeError, ValueError...: one line, no traceback
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise AvsegError(f"cannot join the Ray cluster at {address!r}: {first} (start one with `ray start --head`)") from None
    return False


def _first_line(err: BaseException) -> str:
    """One line for a Ray error: the cause's reason for an error raised in our code, else Ray's first line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, AvsegError):
        return cause.reason
    text = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
    return (text.strip().splitlines() or [type(err).__name__])[0][:300]


class _Driver:
    def __init__(self, ray, paths: list[Path], out_dir: Path, predictor_kwargs: dict[str, Any], run_kwargs: dict[str, Any],
                 opts: RayOptions, progress: RayProgress | None) -> None:
        self.ray, self.paths, self.out, self.opts, self.progress = ray, paths, out_dir, opts, progress
        self.run_kwargs = run_kwargs
        self.stems = output_stems(paths)
        self.token = secrets.token_hex(4)
        res = ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
        self.gpa = opts.gpus_per_actor if opts.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
        self.cpa = opts.cpus_per_actor
        if self.gpa > gpus:
            raise AvsegError(f"--ray-gpus-per-actor {self.gpa:g}: the Ray cluster has {gpus:g} GPU(s)")
        if self.cpa > cpus:
            raise AvsegError(f"--ray-cpus-per-actor {self.cpa:g}: the Ray cluster has {cpus:g} CPU(s)")
        fit = int(gpus // self.gpa) if self.gpa > 0 else int(cpus // self.cpa) if self.cpa > 0 else 1
        self.num_actors = max(1, min(opts.actors or fit, len(paths)))
        kwargs = dict(predictor_kwargs)
        if self.gpa == 0 and str(kwargs.get("device", "auto")) == "auto":
            kwargs["device"] = "cpu"  # a CPU actor on a GPU node must not take a GPU Ray did not give it
        self.predictor_kwargs = kwargs
        self.cluster = {"CPU": cpus, "GPU": gpus, "nodes": len([n for n in ray.nodes() if n.get("Alive")])}
        self.spawned = 0
        self.max_spawns = self.num_actors * (1 + max(0, opts.retries))
        self.board = ray.remote(_Board).options(num_cpus=0).remote()
        self.actor_cls = ray.remote(_Segmenter)

    def _spawn(self) -> None:
        name = f"avseg-{self.token}-{self.spawned}"
        self.spawned += 1
        actor = self.actor_cls.options(name=name, num_cpus=self.cpa, num_gpus=self.gpa, max_restarts=0).remote(
            name, os.getcwd(), self.predictor_kwargs, int(max(1, self.cpa)), self.board)
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
                    ref = self.actors[name].segment.remote(str(self.paths[vid]), self.stems[vid], str(self.out), self.run_kwargs)
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
                ready, _ = ray.wait(list(self.starting) + list(running), num_returns=1, timeout=min(0.5, self.opts.progress_every))
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
                        if attempts[vid] <= self.opts.retries:
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
                if not where and time.monotonic() - t0 > self.opts.start_timeout:
                    raise AvsegError(f"no avseg actor could start on the Ray cluster within {self.opts.start_timeout:.0f} s (each asks for "
                                     f"{self.cpa:g} CPU and {self.gpa:g} GPU; the cluster has {self.cluster['CPU']:g} CPU, {self.cluster['GPU']:g} GPU)")
                if self.progress and (time.monotonic() - last_poll >= self.opts.progress_every or not left):
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
        info = {"address": self.opts.address or "local", "actors": self.num_actors, "gpus_per_actor": self.gpa,
                "cpus_per_actor": self.cpa, "cluster": self.cluster, "retries": self.opts.retries,
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


def run_on_ray(paths: list[Path], out_dir: str | Path, *, predictor_kwargs: dict[str, Any], run_kwargs: dict[str, Any],
               options: RayOptions | None = None, progress: RayProgress | None = None) -> RayRun:
    """Segment ``paths`` into ``out_dir`` on Ray. ``predictor_kwargs`` go to each actor's :class:`Predictor`,
    ``run_kwargs`` to :func:`run_videos` (fmt, save_probs, overwrite, fps, ...). Joins or starts Ray as
    ``options.address`` says; a local instance started here is shut down at the end."""
    ray = import_ray()
    opts = options or RayOptions()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AvsegError(f"cannot create the output folder ({err.strerror or err})", path=out) from None
    local_cpus = None
    if opts.actors and opts.address in (None, "", "local"):
        local_cpus = max(int(os.cpu_count() or 1), int(opts.actors * opts.cpus_per_actor + 0.999))
    owned = connect(ray, opts.address, local_cpus)
    try:
        return _Driver(ray, paths, out, predictor_kwargs, run_kwargs, opts, progress).run()
    finally:
        if owned:
            ray.shutdown()
