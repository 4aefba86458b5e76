"""The ``avseg run`` engine on one machine: many videos, decode workers, cross-video batches, atomic outputs.

Decoding and preprocessing run in worker processes (``workers`` > 0, :mod:`avsegcli.run.decode`) that stream
windows of frames (uint8) and their audio patches through one pipe each (a worker that dies fails only its video);
the main process packs frames from any videos into batches of ``batch_size``, runs the model (VGGish once per
distinct audio second) and writes each video's folder with :class:`~avsegcli.masks.io.VideoMaskWriter`, which
publishes it only when complete. One bad video is reported and the others go on.

:func:`run_videos` plans the videos (:func:`avsegcli.run.plan.plan_videos`: inputs, locks, resume), then hands
every decode message to a :class:`_Batches`, which batches, runs the model, post-processes on threads and
publishes or fails each video.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avsegcli import __version__
from avsegcli.errors import os_reason
from avsegcli.inference.feed import available_cores, default_workers, device_guard, stage, to_device
from avsegcli.inference.predictor import Predictor
from avsegcli.masks.io import VideoMaskWriter
from avsegcli.media.override import AudioOverride
from avsegcli.run.decode import decode_messages
from avsegcli.run.locks import VideoLocks
from avsegcli.run.options import RunOptions
from avsegcli.run.plan import Plan, output_stems, plan_videos
from avsegcli.run.results import RunProgress, VideoResult

#: one sampled frame waiting for a batch: (video index, row in its window, the window's payload)
Row = tuple[int, int, dict[str, Any]]


def write_failure(err: OSError, folder: str | Path) -> str:
    """Reason for a video whose outputs could not be written (ENOSPC, EROFS, EACCES... in our words)."""
    return f"cannot write its masks into {folder}: {os_reason(err)} (nothing published; rerun to resume)"


@dataclass
class _Video:
    result: VideoResult
    writer: VideoMaskWriter | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    expected: int = -1  # sampled frames announced by its decoder
    written: int = 0  # frames handed to its writer
    ended: bool = False
    write_error: str = ""  # set by a writer thread when the disk refused this video's masks
    t0: float = 0.0


class _Batches:
    """The main process's side of one :func:`run_videos`: frames of any videos in batches of ``batch_size``, the
    model, post-processing on ``post_threads`` threads (upsample, host copy, write) while the next batch computes,
    and each video published (``meta.json`` last) or failed. Call :meth:`take` per decode message, then
    :meth:`drain`, and :meth:`close` always."""

    def __init__(self, predictor: Predictor, out_dir: Path, plan: Plan, locks: VideoLocks, *, fmt: str, save_probs: bool,
                 fps: float | None, span: tuple[float | None, float | None], pad: bool, post_threads: int,
                 progress: RunProgress | None) -> None:
        self.predictor, self.out_dir, self.locks, self.progress = predictor, out_dir, locks, progress
        self.fmt, self.save_probs, self.fps, self.span = fmt, save_probs, fps, span
        self.videos = [_Video(r) for r in plan.results]
        self.identities = plan.identities
        self.device = predictor.device
        self.model_info = predictor.model_info()
        self.pad_to = predictor.batch_size if pad else None
        self.pending: list[Row] = []
        self.post_threads = post_threads
        self.pool = ThreadPoolExecutor(post_threads, thread_name_prefix="avseg-post") if post_threads > 0 else None
        self.inflight: deque[tuple[Future | None, list[Row]]] = deque()

    # ---- decode messages --------------------------------------------------------------------------------------

    def take(self, msg: tuple) -> None:
        """One decode message (see :mod:`avsegcli.run.decode`)."""
        kind, vid = msg[0], msg[1]
        v = self.videos[vid]
        if kind == "start":
            v.expected, v.meta, v.t0 = msg[2], msg[3], time.perf_counter()
            v.result.has_audio, v.result.warnings = msg[3]["has_audio"], msg[3]["warnings"]
            try:
                v.writer = VideoMaskWriter(self.out_dir, v.result.stem, fmt=self.fmt, semantic=self.predictor.semantic,
                                           save_probs=self.save_probs)
            except OSError as err:
                self.fail(vid, write_failure(err, self.out_dir / v.result.stem))
                return
            if self.progress:
                self.progress.video_started(vid, Path(v.result.path).name, v.expected)
        elif kind == "win":
            self.pending.extend((vid, r, msg[2]) for r in range(len(msg[2]["frame_indices"])))
            self.flush(force=False)
        elif kind == "end":
            v.ended = True
            if v.expected == 0:
                self.fail(vid, "has no frames to segment")
            self.flush(force=False)
            self.maybe_finish(vid)
        elif kind == "error":
            self.fail(vid, msg[2])

    def drain(self) -> None:
        """The last short batch, then every batch written before the last videos are published."""
        self.flush(force=True)
        self.complete(0)

    def close(self) -> None:
        """Stop the post-processing threads and drop every lock still held (also after an error or Ctrl-C)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.locks.release_all()

    # ---- batches ----------------------------------------------------------------------------------------------

    def flush(self, force: bool) -> None:
        """Run the model on every full batch waiting (``force``: the short rest too); rows of failed videos drop."""
        size = self.predictor.batch_size
        while self.pending and (force or len(self.pending) >= size):
            take, self.pending = self.pending[:size], self.pending[size:]
            live = [(vid, row, w) for vid, row, w in take if self.videos[vid].result.status == "pending"]
            if not live:
                continue
            keys: dict[tuple[int, int], int] = {}
            patches, rows = [], []
            for vid, row, w in live:  # one audio patch per (video, second)
                key = (vid, int(w["chunk_indices"][row]))
                if key not in keys:
                    keys[key] = len(patches)
                    patches.append(w["chunk_log_mel"][w["chunk_rows"][row]])
                rows.append(keys[key])
            frames = stage([w["frames"][row] for _, row, w in live], self.device, pad_to=self.pad_to)  # pinned on CUDA
            rows += [rows[-1]] * (frames.shape[0] - len(rows))
            logits = self.predictor.logits(frames, stage(patches, self.device, pad_to=self.pad_to), np.array(rows))[: len(live)]
            if self.pool is None:
                self.post(live, logits)
                self.inflight.append((None, live))
            else:
                self.inflight.append((self.pool.submit(self.post, live, logits), live))
            self.complete(self.post_threads + 1)  # bounded: each job holds its batch's logits

    def post(self, live: list[Row], logits: torch.Tensor) -> None:
        """Masks of one batch (``logits [len(live), C, h, w]``) at each video's size (one host copy per size),
        handed to the writers. Runs on a post-processing thread (or inline)."""
        with device_guard(self.device):  # this thread too: pinned buffers and events on the run's GPU
            groups: dict[tuple[int, int], list[int]] = {}
            for i, (_, _, w) in enumerate(live):
                groups.setdefault(tuple(w["raw_size"]), []).append(i)
            for size, idx in groups.items():
                sel = logits if len(idx) == len(live) else logits[to_device(stage([np.asarray(idx, np.int64)], self.device)[0], self.device)]
                masks, probs = self.predictor.to_masks(sel, size, with_probs=self.save_probs)
                for j, i in enumerate(idx):
                    vid, row, w = live[i]
                    v = self.videos[vid]
                    if v.write_error:
                        continue
                    try:
                        v.writer.add(frame_index=int(w["frame_indices"][row]), timestamp=float(w["timestamps"][row]),
                                     chunk=int(w["chunk_indices"][row]), mask=masks[j], probs=None if probs is None else probs[j])
                    except OSError as err:  # disk full, read-only...: that video fails cleanly, the run goes on
                        v.write_error = write_failure(err, self.out_dir / v.result.stem)

    def complete(self, limit: int) -> None:
        """Account for finished post-processing jobs, oldest first, until at most ``limit`` are in flight (a failed
        job raises here, in this thread)."""
        while self.inflight and (len(self.inflight) > limit or self.inflight[0][0] is None or self.inflight[0][0].done()):
            fut, live = self.inflight.popleft()
            if fut is not None:
                fut.result()
            for vid, _, _ in live:
                v = self.videos[vid]
                v.written += 1
                if self.progress:
                    self.progress.frames_done(vid, 1)
                if v.write_error and v.result.status == "pending":
                    self.fail(vid, v.write_error)
                self.maybe_finish(vid)

    # ---- videos -----------------------------------------------------------------------------------------------

    def maybe_finish(self, vid: int) -> None:
        """Publish a video once its decoder ended and all its frames are written (``meta.json`` completes it)."""
        v = self.videos[vid]
        if v.result.status != "pending" or not v.ended or v.written < v.expected:
            return
        v.result.seconds = round(time.perf_counter() - v.t0, 3)
        start, end = self.span
        meta = {"source": str(Path(v.result.path).resolve()), **v.meta, "sample_fps": self.fps, "window": {"start": start, "end": end},
                "model": self.model_info,
                "avseg_version": __version__, "seconds": v.result.seconds, "source_identity": self.identities.get(vid)}
        try:
            v.writer.finish(meta)
        except OSError as err:
            self.fail(vid, write_failure(err, self.out_dir / v.result.stem))
            return
        self.locks.release(v.result.stem)
        v.result.status, v.result.frames = "done", v.written
        if self.progress:
            self.progress.video_finished(vid, v.result)

    def fail(self, vid: int, reason: str) -> None:
        """Mark a video failed, remove its unfinished folder and release its lock (once)."""
        v = self.videos[vid]
        if v.result.status != "pending":
            return
        v.result.status, v.result.reason = "failed", reason
        if v.writer is not None:
            self.complete(0)  # no job may still be writing into the folder we remove
            v.writer.abort()
        self.locks.release(v.result.stem)
        if self.progress:
            self.progress.video_finished(vid, v.result)

    def results(self) -> list[VideoResult]:
        """One result per input, in input order (a video still pending here lost its decoder silently: failed)."""
        for vid, v in enumerate(self.videos):
            if v.result.status == "pending":
                self.fail(vid, "decoding stopped before the end of the video")
        return [v.result for v in self.videos]


def run_videos(predictor: Predictor, paths: list[Path], out_dir: str | Path, *, fmt: str = "png", save_probs: bool = False,
               overwrite: bool = False, workers: int | None = None, fps: float | None = 1.0, progress: RunProgress | None = None,
               start: float | None = None, end: float | None = None, stems: list[str] | None = None,
               pad_to_batch: bool | None = None, post_threads: int | None = None,
               audio: AudioOverride | None = None) -> list[VideoResult]:
    """Segment every video into ``out_dir/<stem>/``. Returns one :class:`VideoResult` per input, in input order.
    ``fps``: frames per second sampled (None: every frame). ``start``/``end`` (seconds): only the sampled frames
    with ``start <= t < end`` (same names, masks and audio seconds as a whole-video run). ``audio``: what every
    video hears instead of its own track (:func:`avsegcli.media.override.parse_audio`: silence, noise or another
    file; None = original; in ``meta.json``). ``stems``: each video's folder name (default :func:`output_stems`;
    the Ray runner passes each video's own).

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
    stems = output_stems(paths) if stems is None else list(stems)
    locks = VideoLocks(out_dir)  # a second run into the same --out skips what this one holds (and vice versa)
    plan = plan_videos(paths, stems, out_dir, locks, overwrite=overwrite, audio=audio)
    device = predictor.device
    if workers is None:
        workers = default_workers(device, jobs=len(plan.jobs))
    if post_threads is None:
        post_threads = 1 if device.type != "cuda" else max(1, min(4, available_cores() // 2))
    pad = getattr(predictor, "compiled", False) if pad_to_batch is None else pad_to_batch
    batches = _Batches(predictor, out_dir, plan, locks, fmt=fmt, save_probs=save_probs, fps=fps, span=(start, end), pad=pad,
                       post_threads=post_threads, progress=progress)
    window = max(1, min(predictor.batch_size, 64))  # frames per decode message
    try:
        with device_guard(device):  # pinned staging buffers and streams on the run's GPU
            for msg in decode_messages(plan.jobs, workers, fps, predictor.image_size, predictor.via, window, (start, end), audio):
                batches.take(msg)
            batches.drain()
    finally:
        batches.close()
    return batches.results()


def segment_videos(predictor: Predictor, paths: list[Path], opts: RunOptions, *, progress: RunProgress | None = None,
                   stems: list[str] | None = None) -> list[VideoResult]:
    """:func:`run_videos` with the flags of one ``avseg run`` (``opts``, validated), into ``opts.out``. Under
    ``--ray`` (``opts.cluster``) each actor decodes its videos inline (``workers=0``)."""
    return run_videos(predictor, paths, opts.out, fmt=opts.fmt, save_probs=opts.save_probs, overwrite=opts.overwrite,
                      workers=0 if opts.cluster is not None else opts.workers, fps=opts.sample_fps, progress=progress,
                      start=opts.start, end=opts.end, stems=stems, audio=opts.validate().heard)
