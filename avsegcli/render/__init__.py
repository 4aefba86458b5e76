"""``avseg render``: draw saved masks over their video, every source frame, and encode the result.

Public API::

    from avsegcli.render import render_video, draw_overlay

    stats = render_video("clip.mp4", "masks/clip", "clip_overlay.mp4", hold="second", alpha=0.5,
                         contour=True, side_by_side=False, timestamp=False, audio_bar=False,
                         frames_dir=None, progress=True)
    image, legend_names = draw_overlay(frame, mask, semantic=True)

Masks come from ``avseg run`` (usually one per second); each source frame shows the mask of its second
(``hold="second"``) or the nearest sampled one (``hold="nearest"``), see :mod:`avsegcli.render.timeline`.
Drawing (colours, contour, legend of the classes present in the current frame) is in
:mod:`avsegcli.render.draw`, encoding (H.264 MP4 with the source audio, or PNG frames) in
:mod:`avsegcli.render.encode`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from avsegcli.errors import AvsegError
from avsegcli.media.probe import probe
from avsegcli.media.sampling import check_window, in_window
from avsegcli.media.video import VideoSource
from avsegcli.palette import AVSS_CLASS_NAMES
from avsegcli.render.draw import BINARY_COLOUR, MaskLayer, draw_overlay, prepare_mask
from avsegcli.render.encode import FrameFolderWriter, VideoWriter, audio_plan, rational_fps
from avsegcli.render.timeline import HOLD_MODES, MaskTrack, audio_rms, check_match, frame_to_mask, open_masks

__all__ = ["BINARY_COLOUR", "HOLD_MODES", "MaskLayer", "MaskTrack", "audio_rms", "check_match", "draw_overlay",
           "frame_to_mask", "open_masks", "prepare_mask", "render_video"]

#: bytes of decoded source frames held at once (frames are decoded in windows of this size, at most 32)
WINDOW_BYTES = 64 * 1024 * 1024

ProgressFn = Callable[[int, int], None]


class _RichProgress:
    """A Rich progress bar on stderr: ``rendering NAME ━━━━ 120/250 frames 0:00:03 < 0:00:04``."""

    def __init__(self, label: str, total: int) -> None:
        self.progress = Progress(TextColumn("rendering {task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("frames"), TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task(label, total=total)

    def __enter__(self) -> "_RichProgress":
        self.progress.start()
        return self

    def __call__(self, done: int, total: int) -> None:
        self.progress.update(self.task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        self.progress.stop()


def _class_names(meta: dict[str, Any]) -> tuple[str, ...]:
    names = meta.get("class_names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return tuple(names)
    return AVSS_CLASS_NAMES


def render_video(
    video: str | Path,
    masks_dir: str | Path,
    out: str | Path | None = None,
    *,
    hold: str = "second",
    alpha: float = 0.5,
    contour: bool = True,
    side_by_side: bool = False,
    timestamp: bool = False,
    audio_bar: bool = False,
    frames_dir: str | Path | None = None,
    progress: bool | ProgressFn = False,
    crf: int = 18,
    preset: str = "veryfast",
    start: float | None = None,
    end: float | None = None,
) -> dict[str, Any]:
    """Render ``masks_dir`` (an ``avseg run`` mask folder) over every frame of ``video``.

    Writes ``out`` (H.264 MP4/MOV/MKV with the source audio, copied when the container allows, else AAC)
    and/or ``frames_dir`` (one overlay PNG per source frame, ``000000.png`` ...); at least one is needed.
    ``alpha`` is the fill opacity (0..1), ``contour`` draws the mask boundary, ``side_by_side`` puts the
    original left of the overlay, ``timestamp`` prints the frame time, ``audio_bar`` shows the RMS level of
    the audio in each frame's ``[t, t + 1/fps)`` window. ``progress``: True for a Rich bar on stderr, or a
    ``callback(frames_done, total)``. ``crf``/``preset`` are libx264's quality/speed settings
    (``veryfast`` by default: about twice as fast as ``medium``, slightly bigger files at the same quality).
    ``start``/``end`` (seconds): only the source frames with ``start <= t < end``, with the audio from the first
    of them on (the source's timeline; timestamps printed as in the source).

    Raises :class:`AvsegError` with a one-line reason when masks and video do not belong together.
    Returns stats: ``frames``, ``fps`` (float), ``fps_rational`` (``"30000/1001"``), ``duration`` (s),
    ``size`` (``[W, H]`` written), ``masks``, ``semantic``, ``hold``, ``audio`` (``"copied"``,
    ``"re-encoded"`` or ``"none"``), ``audio_codec``, ``out``, ``frames_dir``, ``seconds`` (wall time).
    """
    check_window(start, end)
    if out is None and frames_dir is None:
        raise AvsegError("nothing to write: give an output video (-o) or a frames folder (--frames)")
    if hold not in HOLD_MODES:
        raise AvsegError(f"unknown hold mode {hold!r} (second or nearest)")
    if not 0.0 <= float(alpha) <= 1.0:
        raise AvsegError(f"alpha must be between 0 and 1, got {alpha}")
    if out is not None and Path(out).resolve() == Path(video).resolve():
        raise AvsegError("the output would overwrite the source video; choose another -o", path=out)
    t_begin = time.perf_counter()
    info = probe(video)
    if not info.has_video:
        raise AvsegError("has no video stream", path=video)
    track = open_masks(masks_dir)
    n, frame_times = info.num_frames, np.asarray(info.frame_times, dtype=np.float64)
    check_match(track, video, n, info.size, frame_times)
    rows = frame_to_mask(frame_times, track.timestamps, track.chunks, hold)
    fps = rational_fps(info.fps)
    shown = np.flatnonzero(in_window(frame_times, start, end))  # source frames drawn (all without a window)
    if not shown.size:
        raise AvsegError(f"no frame between {start or 0:g} s and {'the end' if end is None else f'{end:g} s'} "
                         f"(the video lasts {info.duration:.3f} s)", path=video)
    clip = (float(frame_times[shown[0]]), shown.size / float(fps)) if shown.size < n else None
    names = _class_names(track.meta)

    audio_codec = info.audio_streams[0].codec if info.has_audio else None
    levels = None
    if audio_bar:
        if info.has_audio:
            levels = audio_rms(video, frame_times, frame_times + 1.0 / float(fps),
                               channels=max(1, info.audio_streams[0].channels or 1))
        else:
            levels = np.zeros(n)
    out_w, out_h = info.width * (2 if side_by_side else 1), info.height
    plan = "none"
    with ExitStack() as stack:
        writers: list[VideoWriter | FrameFolderWriter] = []
        try:
            if frames_dir is not None:
                writers.append(FrameFolderWriter(frames_dir))
            if out is not None:
                plan = audio_plan(audio_codec, Path(out))
                writers.append(VideoWriter(out, width=out_w, height=out_h, fps=fps, audio_from=video, audio=plan,
                                           crf=crf, preset=preset, audio_clip=clip))
            report: ProgressFn | None
            if progress is True:
                report = stack.enter_context(_RichProgress(Path(video).name, shown.size))
            else:
                report = progress or None
            source = stack.enter_context(VideoSource(video))
            window = int(max(1, min(32, WINDOW_BYTES // max(1, info.width * info.height * 3))))
            cached_row, layer = -1, None
            for sl, frames in source.iter_windows(shown, window):
                for i, frame in zip(shown[sl], frames):
                    if rows[i] != cached_row:
                        cached_row = int(rows[i])
                        layer = prepare_mask(track.get(cached_row), semantic=track.semantic, contour=contour,
                                             class_names=names)
                    image, _ = draw_overlay(frame, layer, alpha=alpha, side_by_side=side_by_side,
                                            timestamp=float(frame_times[i]) if timestamp else None,
                                            audio_rms=float(levels[i]) if levels is not None else None)
                    for w in writers:
                        w.write(image)
                if report is not None:
                    report(sl.stop, shown.size)
            for w in writers:
                w.finish()
        except BaseException:
            for w in writers:
                w.abort()
            raise
    written_w, written_h = (out_w + out_w % 2, out_h + out_h % 2) if out is not None else (out_w, out_h)
    return {
        "frames": int(shown.size), "fps": float(fps), "fps_rational": f"{fps.numerator}/{fps.denominator}",
        "duration": shown.size / float(fps), "first_frame": int(shown[0]), "size": [written_w, written_h], "masks": len(track), "semantic": track.semantic,
        "hold": hold, "audio": {"copy": "copied", "aac": "re-encoded", "none": "none"}[plan],
        "audio_codec": audio_codec, "out": str(out) if out is not None else None,
        "frames_dir": str(frames_dir) if frames_dir is not None else None,
        "seconds": round(time.perf_counter() - t_begin, 3),
    }
