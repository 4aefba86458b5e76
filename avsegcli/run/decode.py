"""Decoding for ``avseg run``, in worker processes or inline.

Each decode worker streams one video at a time as messages through its own pipe: ``("start", vid, n, meta)``,
``("win", vid, payload)`` per window of frames (the resized uint8 pictures and their audio patches), then
``("end", vid)`` or ``("error", vid, reason)``. A worker that dies (a decoder crash on a hostile file, the OOM
killer) fails only the video it had; a new worker takes the rest. Workers start through
:func:`avsegcli.run.procs.guarded_worker`, so they die with the run and keep native decoder noise off the terminal.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import warnings
from collections.abc import Iterator
from multiprocessing.connection import wait
from typing import Any

import torch

from avsegcli import media
from avsegcli.errors import AvsegError
from avsegcli.run.procs import guarded_worker

#: messages a decode worker may have ready ahead of the main process
_PREFETCH = 2


def _decode_video(vid: int, path: str, fps: float | None, image_size: int, via: int | None, window: int,
                  span: tuple[float | None, float | None] = (None, None), audio: Any = None) -> Iterator[tuple]:
    """Messages for one video: ("start", vid, n, meta), ("win", vid, payload)..., ("end", vid) or ("error", vid, reason).
    ``span``: the ``(start, end)`` seconds window (``--start/--end``; None = unbounded). ``audio``: an
    :class:`~avsegcli.media.override.AudioOverride` (``--audio``; None = the video's own)."""
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
    torch.set_num_threads(1)  # (started through procs.guarded_worker: it dies with the run, stderr is quiet)
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


def _death_reason(exitcode: int | None) -> str:
    """A video's failure reason when its decode worker exited (``exitcode`` < 0: killed by that signal)."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if name == "SIGKILL":
            return "its decoding process was killed (SIGKILL: out of memory?)"
        return f"the decoder crashed on this file ({name})"
    return f"its decoding process exited unexpectedly (exit code {exitcode})"


def decode_messages(jobs: list[tuple[int, str]], workers: int, fps: float | None, image_size: int, via: int | None, window: int,
                    span: tuple[float | None, float | None] = (None, None), audio: Any = None) -> Iterator[tuple]:
    """Decode messages of every job ``(vid, path)``, from ``workers`` processes (0: inline); frames resized to
    ``image_size`` (through ``via``), ``window`` frames per message. Each worker has its own pipe and
    gets its next job from here, so a worker that dies (a decoder crash on a hostile file, the OOM killer) fails
    only the video it had -- its pipe reads as closed, even mid-message -- and a new worker takes the rest."""
    if workers <= 0:
        for vid, path in jobs:
            yield from _decode_video(vid, path, fps, image_size, via, window, span, audio)
        return
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
