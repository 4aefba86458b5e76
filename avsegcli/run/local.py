"""The ``avseg run`` engine: many videos, decode workers, cross-video batches, atomic per-video outputs.

Decoding and preprocessing run in worker processes (``workers`` > 0) that stream windows of frames (uint8) and
their audio patches through one pipe each (a worker that dies fails only its video); the main process packs frames from any videos into batches of
``batch_size``, runs the model (VGGish once per distinct audio second) and writes each video's folder with
:class:`~avsegcli.masks.io.VideoMaskWriter`, which publishes it only when complete. One bad video is reported
and the others go on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from avsegcli import __version__
from avsegcli.errors import AvsegError
from avsegcli.inference.feed import available_cores, default_workers, device_guard, stage, to_device
from avsegcli.masks.io import VideoMaskWriter
from avsegcli.inference.predictor import Predictor
from avsegcli.run.guard import VideoLocks, guarded_worker, not_a_file, resume_decision, source_identity, write_failure

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".3gp", ".ogv")


def collect_inputs(inputs: list[str], glob: str | None = None, *, exclude: str | Path | None = None) -> list[Path]:
    """Files as given, folders searched recursively (``glob`` or the common video extensions), ``@list.txt``
    files read one path per line (blank lines and ``#`` comments skipped). Order kept, duplicates dropped.
    Folder scans skip ``exclude`` (the ``--out`` folder) and every avseg output folder; missing files, symlink
    loops and unreadable entries stay in the list and fail as that input (:func:`avsegcli.run.guard.find_inputs`)."""
    from avsegcli.run.guard import find_inputs

    return find_inputs(inputs, glob, VIDEO_EXTENSIONS, exclude=exclude)


def output_stems(paths: list[Path]) -> list[str]:
    """One folder name per video: the file stem, made unique with ``-2``, ``-3``... when stems repeat."""
    used: dict[str, int] = {}
    stems = []
    for p in paths:
        n = used.get(p.stem, 0) + 1
        used[p.stem] = n
        stems.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return stems


@dataclass
class VideoResult:
    path: str
    stem: str
    status: str  # done | skipped | failed
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    has_audio: bool | None = None
    warnings: list[str] = field(default_factory=list)


class RunProgress(Protocol):
    def video_started(self, vid: int, name: str, frames: int) -> None: ...
    def frames_done(self, vid: int, n: int) -> None: ...
    def video_finished(self, vid: int, result: VideoResult) -> None: ...


# ---- decoding (in workers or inline) -------------------------------------------------------------------------

def _decode_video(vid: int, path: str, fps: float | None, image_size: int, via: int | None, window: int,
                  span: tuple[float | None, float | None] = (None, None), audio: Any = None) -> Iterator[tuple]:
    """Messages for one video: ("start", vid, n, meta), ("win", vid, payload)..., ("end", vid) or ("error", vid, reason).
    ``span``: the ``(start, end)`` seconds window (``--start/--end``; None = unbounded). ``audio``: an
    :class:`~avsegcli.media.override.AudioOverride` (``--audio``; None = the video's own)."""
    from avsegcli import media

    try:
        info = media.probe(path)
        idx, _ = media.sample_times(info, fps, start=span[0], end=span[1])
        if not len(idx) and span != (None, None) and info.num_frames:
            yield ("error", vid, f"no sampled frame between {span[0] or 0:g} s and "
                                 f"{'the end' if span[1] is None else f'{span[1]:g} s'} (the video lasts {info.duration:.3f} s)")
            return
        notes = [] if info.has_audio else ["no audio track: processed with silent audio"]
        meta = {"width": info.width, "height": info.height, "fps": info.fps, "duration": info.duration,
                "num_source_frames": info.num_frames, "has_audio": info.has_audio, "warnings": notes,
                "audio": audio.describe() if audio is not None else {"source": "original"}}
        yield ("start", vid, len(idx), meta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", media.NoAudioWarning)  # recorded in meta["warnings"] instead
            for b in media.iter_batches(path, fps=fps, batch_size=window, image_size=image_size, via=via, info=info,
                                        start=span[0], end=span[1], normalized=False, audio=audio):  # uint8 [n, S, S, 3]
                yield ("win", vid, {"frames": b.frames.numpy(), "timestamps": b.timestamps, "frame_indices": b.frame_indices,
                                    "chunk_indices": b.chunk_indices, "chunk_ids": b.chunk_ids,
                                    "chunk_log_mel": b.chunk_log_mel.numpy(), "chunk_rows": b.chunk_rows, "raw_size": tuple(b.raw_size)})
        yield ("end", vid)
    except AvsegError as err:
        yield ("error", vid, err.reason)
    except Exception as err:  # a decoder crash on a hostile file must not stop the batch
        yield ("error", vid, f"cannot be decoded ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})")


def _worker(conn, fps, image_size, via, window, span=(None, None), audio=None) -> None:
    """A decode process: jobs ``(vid, path)`` arrive on ``conn`` (None: stop), messages go back on it. A feeder
    thread sends while the next window decodes (at most ``_PREFETCH`` messages ahead)."""
    import threading

    torch.set_num_threads(1)  # (started through runguard.guarded_worker: it dies with the run, stderr is quiet)
    outbox: queue.Queue = queue.Queue(maxsize=_PREFETCH)

    def feed() -> None:
        while (msg := outbox.get()) is not None:
            try:
                conn.send(msg)
            except OSError:  # the run is gone
                os._exit(0)

    feeder = threading.Thread(target=feed, name="avseg-feeder", daemon=True)
    feeder.start()
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the run is gone
            os._exit(0)
        if job is None:
            break
        for msg in _decode_video(*job, fps, image_size, via, window, span, audio):
            outbox.put(msg)
    outbox.put(None)
    feeder.join()


#: messages a decode worker may have ready ahead of the main process
_PREFETCH = 2


def _death_reason(exitcode: int | None) -> str:
    import signal

    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if name == "SIGKILL":
            return "its decoding process was killed (SIGKILL: out of memory?)"
        return f"the decoder crashed on this file ({name})"
    return f"its decoding process exited unexpectedly (exit code {exitcode})"


def _messages(jobs: list[tuple[int, str]], workers: int, fps, image_size, via, window, span=(None, None),
              audio=None) -> Iterator[tuple]:
    """Decode messages of every job, from ``workers`` processes (0: inline). Each worker has its own pipe and
    gets its next job from here, so a worker that dies (a decoder crash on a hostile file, the OOM killer) fails
    only the video it had -- its pipe reads as closed, even mid-message -- and a new worker takes the rest."""
    if workers <= 0:
        for vid, path in jobs:
            yield from _decode_video(vid, path, fps, image_size, via, window, span, audio)
        return
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    todo = list(reversed(jobs))
    live: dict[Any, list] = {}  # connection -> [process, current job or None, whether it has sent a message]
    spawns = len(jobs) + workers  # a bound on replacements, should something kill every worker at start
    retried: set[int] = set()

    def start_worker() -> None:
        nonlocal spawns
        spawns -= 1
        here, there = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=guarded_worker, daemon=True,  # dies with this process, even during its imports
                           args=(os.getpid(), __name__, "_worker", there, fps, image_size, via, window, span, audio))
        proc.start()
        there.close()  # only the worker holds that end now: its death reads as EOF here
        live[here] = [proc, None, False]
        give_job(here)

    def give_job(conn) -> None:
        job = todo.pop() if todo else None
        live[conn][1:] = [job, False]
        try:
            conn.send(job)
        except OSError:
            pass  # it died already: its EOF is handled below

    for _ in range(min(workers, len(jobs))):
        start_worker()
    try:
        while live:
            for conn in wait(list(live), timeout=1.0):
                proc, job, started = live[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    del live[conn]
                    conn.close()
                    proc.join(timeout=5.0)
                    if job is not None and not started and job[0] not in retried:
                        retried.add(job[0])  # it died before this video began: give it to another worker
                        todo.append(job)
                    elif job is not None:
                        yield ("error", job[0], _death_reason(proc.exitcode))
                    if todo and spawns > 0:
                        start_worker()
                    continue
                live[conn][2] = True
                yield msg
                if msg[0] in ("end", "error"):
                    give_job(conn)  # the next video, or None: stop
    finally:
        for conn, (proc, *_) in list(live.items()):
            try:
                conn.send(None)
            except OSError:
                pass
        for conn, (proc, *_) in list(live.items()):
            proc.join(timeout=1.0)
            if proc.is_alive():
                proc.terminate()
            conn.close()


# ---- the run -------------------------------------------------------------------------------------------------

def _audio_mismatch(folder: Path, audio: Any) -> tuple[str, str] | None:
    """``("fail", reason)`` when a finished folder was made hearing other audio than this run (``--audio``)."""
    import json

    try:
        had = json.loads((folder / "meta.json").read_text()).get("audio") or {"source": "original"}
    except (OSError, ValueError, AttributeError):
        return None
    want = audio.describe() if audio is not None else {"source": "original"}
    if had == want:
        return None
    return "fail", (f"its output folder {folder} was made with --audio {had.get('path') or had.get('source')}, this run "
                    f"hears {want.get('path') or want['source']}; use --overwrite to replace it, or another --out")

@dataclass
class _Video:
    result: VideoResult
    writer: VideoMaskWriter | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    expected: int = -1
    written: int = 0
    ended: bool = False
    write_error: str = ""  # set by a writer thread when the disk refused this video's masks
    t0: float = 0.0


def run_videos(predictor: Predictor, paths: list[Path], out_dir: str | Path, *, fmt: str = "png", save_probs: bool = False,
               overwrite: bool = False, workers: int | None = None, fps: float | None = 1.0, progress: RunProgress | None = None,
               start: float | None = None, end: float | None = None, stems: list[str] | None = None,
               pad_to_batch: bool | None = None, post_threads: int | None = None, audio: Any = None) -> list[VideoResult]:
    """Segment every video into ``out_dir/<stem>/``. Returns one :class:`VideoResult` per input, in input order.
    ``start``/``end`` (seconds): only the sampled frames with ``start <= t < end`` (same names, masks and audio
    seconds as a whole-video run). ``audio``: what every video hears instead of its own track
    (:func:`avsegcli.media.override.parse_audio`: silence, noise or another file; None = original; in ``meta.json``).

    ``workers``: decode processes (``None``: :func:`avsegcli.inference.feed.default_workers`; 0 decodes in this process).
    Frames come from them as the resized uint8 picture and are normalised on the model's device.
    ``pad_to_batch``: run short batches (the last one, or one thinned by a failed video) padded to ``batch_size``
    with repeats of their last frame, so a compiled model sees one shape; the padded outputs are dropped
    (``None``: when the predictor is compiled).
    ``post_threads``: threads that upsample the logits, copy the masks to the host and write them while the next
    batch computes (``None``: 1 on the CPU, up to 4 on CUDA; 0 does it inline). Outputs do not depend on it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = output_stems(paths) if stems is None else list(stems)  # the Ray runner passes each video's own stem
    videos = [_Video(VideoResult(path=str(p), stem=s, status="pending")) for p, s in zip(paths, stems)]
    jobs = []
    locks = VideoLocks(out_dir)  # a second run into the same --out skips what this one holds (and vice versa)
    identities: dict[int, dict | None] = {}
    for vid, (v, p) in enumerate(zip(videos, paths)):
        what = not_a_file(p)
        if what is not None:  # a FIFO, socket or device given by name: never opened (a FIFO would block the run)
            v.result.status, v.result.reason = "failed", f"is {what}, not a video file"
            continue
        if locks.acquire(v.result.stem) is False:
            v.result.status = "skipped"
            v.result.reason = f"in progress in another avseg run into the same --out{locks.holder(v.result.stem)}"
            continue
        identities[vid] = source_identity(p)
        decision, reason = ("run", "") if overwrite else resume_decision(out_dir / v.result.stem, p, identities[vid])
        if decision == "skip":
            decision, reason = _audio_mismatch(out_dir / v.result.stem, audio) or (decision, reason)
        if decision == "run":
            jobs.append((vid, str(p)))
        else:
            v.result.status, v.result.reason = ("skipped" if decision == "skip" else "failed"), reason
            locks.release(v.result.stem)
    window = max(1, min(predictor.batch_size, 64))
    pending: list[tuple[int, int, dict[str, Any]]] = []  # (vid, row, window payload)
    model_info = predictor.model_info()
    device = predictor.device
    if workers is None:
        workers = default_workers(device, jobs=len(jobs))
    if post_threads is None:
        post_threads = 1 if device.type != "cuda" else max(1, min(4, available_cores() // 2))
    pool = ThreadPoolExecutor(post_threads, thread_name_prefix="avseg-post") if post_threads > 0 else None
    inflight: deque[tuple[Future | None, list[tuple[int, int, dict[str, Any]]]]] = deque()

    def post(live: list[tuple[int, int, dict[str, Any]]], logits: torch.Tensor) -> None:
        """Masks of one batch at each video's size (one host copy per size), handed to the writers."""
        with device_guard(device):  # this thread too: pinned buffers and events on the run's GPU
            groups: dict[tuple[int, int], list[int]] = {}
            for i, (_, _, w) in enumerate(live):
                groups.setdefault(tuple(w["raw_size"]), []).append(i)
            for size, idx in groups.items():
                sel = logits if len(idx) == len(live) else logits[to_device(stage([np.asarray(idx, np.int64)], device)[0], device)]
                masks, probs = predictor.to_masks(sel, size, with_probs=save_probs)
                for j, i in enumerate(idx):
                    vid, row, w = live[i]
                    v = videos[vid]
                    if v.write_error:
                        continue
                    try:
                        v.writer.add(frame_index=int(w["frame_indices"][row]), timestamp=float(w["timestamps"][row]),
                                     chunk=int(w["chunk_indices"][row]), mask=masks[j], probs=None if probs is None else probs[j])
                    except OSError as err:  # disk full, read-only...: that video fails cleanly, the run goes on
                        v.write_error = write_failure(err, out_dir / v.result.stem)

    def complete(limit: int) -> None:
        """Account for finished post-processing jobs, oldest first, until at most ``limit`` are in flight (a failed
        job raises here, in this thread)."""
        while inflight and (len(inflight) > limit or inflight[0][0] is None or inflight[0][0].done()):
            fut, live = inflight.popleft()
            if fut is not None:
                fut.result()
            for vid, _, _ in live:
                videos[vid].written += 1
                if progress:
                    progress.frames_done(vid, 1)
                if videos[vid].write_error and videos[vid].result.status == "pending":
                    fail(vid, videos[vid].write_error)
                maybe_finish(vid)

    def flush(force: bool) -> None:
        while pending and (force or len(pending) >= predictor.batch_size):
            take, rest = pending[: predictor.batch_size], pending[predictor.batch_size:]
            pending[:] = rest
            live = [(vid, row, w) for vid, row, w in take if videos[vid].result.status == "pending"]
            if not live:
                continue
            keys: dict[tuple[int, int], int] = {}
            patches, rows = [], []
            for vid, row, w in live:
                key = (vid, int(w["chunk_indices"][row]))
                if key not in keys:
                    keys[key] = len(patches)
                    patches.append(w["chunk_log_mel"][w["chunk_rows"][row]])
                rows.append(keys[key])
            pad = predictor.batch_size if (getattr(predictor, "compiled", False) if pad_to_batch is None else pad_to_batch) else None
            frames = stage([w["frames"][row] for _, row, w in live], device, pad_to=pad)  # pinned on CUDA
            rows += [rows[-1]] * (frames.shape[0] - len(rows))
            logits = predictor.logits(frames, stage(patches, device, pad_to=pad), np.array(rows))[: len(live)]
            if pool is None:
                post(live, logits)
                inflight.append((None, live))
            else:
                inflight.append((pool.submit(post, live, logits), live))
            complete(post_threads + 1)  # bounded: each job holds its batch's logits

    def maybe_finish(vid: int) -> None:
        v = videos[vid]
        if v.result.status != "pending" or not v.ended or v.written < v.expected:
            return
        v.result.seconds = round(time.perf_counter() - v.t0, 3)
        meta = {"source": str(Path(v.result.path).resolve()), **v.meta, "sample_fps": fps, "window": {"start": start, "end": end},
                "model": model_info,
                "avseg_version": __version__, "seconds": v.result.seconds, "source_identity": identities.get(vid)}
        try:
            v.writer.finish(meta)
        except OSError as err:
            fail(vid, write_failure(err, out_dir / v.result.stem))
            return
        locks.release(v.result.stem)
        v.result.status, v.result.frames = "done", v.written
        if progress:
            progress.video_finished(vid, v.result)

    def fail(vid: int, reason: str) -> None:
        v = videos[vid]
        if v.result.status != "pending":
            return
        v.result.status, v.result.reason = "failed", reason
        if v.writer is not None:
            complete(0)  # no job may still be writing into the folder we remove
            v.writer.abort()
        locks.release(v.result.stem)
        if progress:
            progress.video_finished(vid, v.result)

    try:
        with device_guard(device):  # pinned staging buffers and streams on the run's GPU
            for msg in _messages(jobs, workers, fps, predictor.image_size, predictor.via, window, (start, end), audio):
                kind, vid = msg[0], msg[1]
                v = videos[vid]
                if kind == "start":
                    v.expected, v.meta, v.t0 = msg[2], msg[3], time.perf_counter()
                    v.result.has_audio, v.result.warnings = msg[3]["has_audio"], msg[3]["warnings"]
                    try:
                        v.writer = VideoMaskWriter(out_dir, v.result.stem, fmt=fmt, semantic=predictor.semantic, save_probs=save_probs)
                    except OSError as err:
                        fail(vid, write_failure(err, out_dir / v.result.stem))
                        continue
                    if progress:
                        progress.video_started(vid, Path(v.result.path).name, v.expected)
                elif kind == "win":
                    pending.extend((vid, r, msg[2]) for r in range(len(msg[2]["frame_indices"])))
                    flush(force=False)
                elif kind == "end":
                    v.ended = True
                    if v.expected == 0:
                        fail(vid, "has no frames to segment")
                    flush(force=False)
                    maybe_finish(vid)
                elif kind == "error":
                    fail(vid, msg[2])
            flush(force=True)
            complete(0)  # every batch written before the last videos are published
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        locks.release_all()
    for vid, v in enumerate(videos):
        if v.result.status == "pending":  # cannot happen unless a worker died silently
            fail(vid, "decoding stopped before the end of the video")
    return [v.result for v in videos]


def write_summary(results: list[VideoResult], out_dir: str | Path, extra: dict[str, Any]) -> Path:
    """``out_dir/summary.json`` (written to a temporary name, then renamed)."""
    import json
    from dataclasses import asdict

    data = {**extra, "videos": [asdict(r) for r in results],
            "counts": {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")},
            "frames": sum(r.frames for r in results)}
    path = Path(out_dir) / "summary.json"
    tmp = path.with_name(f".summary.json.{os.getpid()}.tmp")  # two runs into one --out must not share it
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path
