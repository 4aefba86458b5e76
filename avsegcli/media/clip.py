"""From a video file to model inputs: sampled frames plus the log-mel patch of their second.

* :func:`read_clip` decodes everything at once into a :class:`Clip` (short videos);
* :func:`iter_batches` walks the video in windows of ``batch_size`` sampled frames and streams
  the audio alongside, yielding :class:`Batch` objects with memory bounded by one window (long
  videos). Both give the same numbers (tested).

Frame ``i`` sampled at time ``t`` (see :mod:`avsegcli.media.sampling`) gets the patch of audio
chunk ``floor(t)``: the 96 STFT frames from sample ``16000 * floor(t)``
(:func:`avsegcli.media.logmel.chunk_patch`). Seconds past the end of the audio, and every second
of a video without an audio track, get the silence patch (``log(0.01)``); a video without audio
is not an error but warns with :class:`NoAudioWarning` and sets ``has_audio=False``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avsegcli.errors import MediaError
from avsegcli.media.audio import iter_seconds, load_audio
from avsegcli.media.logmel import chunk_patch, log_mel_chunks, silence_patch
from avsegcli.media.preprocess import preprocess_frames, resize_frames
from avsegcli.media.probe import MediaInfo, probe
from avsegcli.media.sampling import chunk_indices, sample_times, unique_chunks
from avsegcli.media.video import VideoSource


class NoAudioWarning(UserWarning):
    """A video without an audio track: its log-mel patches are silence."""


@dataclass
class Clip:
    """All sampled frames of a video. ``N`` frames, ``S = image_size``.

    frames ``[N, 3, S, S]`` float32 (normalised); log_mel ``[N, 1, 96, 64]`` float32 (the patch
    of each frame's chunk); timestamps ``[N]`` float64 s; frame_indices ``[N]`` int64 (decord
    frame numbers); chunk_indices ``[N]`` int64 (``floor(timestamp)``); raw_size ``(H, W)``.
    """

    frames: torch.Tensor
    log_mel: torch.Tensor
    timestamps: np.ndarray
    frame_indices: np.ndarray
    chunk_indices: np.ndarray
    has_audio: bool
    info: MediaInfo
    raw_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class Batch:
    """A window of ``B`` consecutive sampled frames, as :func:`iter_batches` yields them.

    frames ``[B, 3, S, S]`` float32; timestamps ``[B]`` float64; frame_indices ``[B]`` int64;
    chunk_indices ``[B]`` int64 (absolute chunk = ``floor(timestamp)``).

    Audio, once per distinct chunk (run VGGish on ``chunk_log_mel`` only):
    chunk_ids ``[C]`` int64 (the distinct absolute chunks of this batch, ascending);
    chunk_log_mel ``[C, 1, 96, 64]`` float32 (row ``j`` is chunk ``chunk_ids[j]``);
    chunk_rows ``[B]`` int64 (frame ``i`` uses ``chunk_log_mel[chunk_rows[i]]``).
    ``log_mel`` ``[B, 1, 96, 64]`` is the per-frame view ``chunk_log_mel[chunk_rows]``.
    A chunk whose frames straddle two batches appears in both. ``start`` is the position of
    the batch's first frame in the whole sampled sequence; raw_size is the source ``(H, W)``.
    """

    frames: torch.Tensor
    timestamps: np.ndarray
    frame_indices: np.ndarray
    chunk_indices: np.ndarray
    chunk_ids: np.ndarray
    chunk_log_mel: torch.Tensor
    chunk_rows: np.ndarray
    has_audio: bool
    info: MediaInfo
    raw_size: tuple[int, int]
    start: int

    @property
    def log_mel(self) -> torch.Tensor:
        return self.chunk_log_mel[torch.from_numpy(self.chunk_rows)]

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def _video_info(path: str | Path, info: MediaInfo | None) -> MediaInfo:
    info = info if info is not None else probe(path)
    if not info.has_video:
        raise MediaError("has no video stream", path=path)
    if not info.has_audio:
        warnings.warn(f"{path}: has no audio track; using silent log-mel patches", NoAudioWarning, stacklevel=3)
    return info


def read_clip(path: str | Path, fps: float | None = 1, image_size: int = 224, via: int | None = None,
              *, info: MediaInfo | None = None, start: float | None = None, end: float | None = None) -> Clip:
    """Decode a whole video: every sampled frame (``fps`` rule of :func:`sample_times`) plus the
    log-mel patch of its second. Holds all sampled raw frames and the whole 16 kHz waveform at
    once: use :func:`iter_batches` for long videos.
    """
    info = _video_info(path, info)
    idx, ts = sample_times(info, fps, start=start, end=end)
    chunks = chunk_indices(ts)
    with VideoSource(path) as src:
        raw = src.get(idx)
        raw_size = src.frame_size
    frames = preprocess_frames(raw, image_size, via)
    del raw
    num_chunks = int(chunks.max()) + 1 if chunks.size else 0
    if info.has_audio:
        wave = load_audio(path, channels=info.audio_streams[0].channels or None)
        table = log_mel_chunks(wave, num_chunks=num_chunks)
    else:
        table = silence_patch().unsqueeze(0).expand(num_chunks, -1, -1, -1).contiguous()
    log_mel = table[torch.from_numpy(chunks)] if num_chunks else torch.zeros((0, 1, 96, 64))
    return Clip(frames, log_mel, ts, idx, chunks, info.has_audio, info, raw_size)


class ChunkStream:
    """Log-mel patches of consecutive one-second chunks, read from an ffmpeg pipe on demand.

    ``patch(k)`` must be asked with non-decreasing ``k``; seconds skipped over are read but not
    transformed. Holds one second of samples and the last patch. Without audio (``path=None``)
    or past the end of the stream every patch is silence.
    """

    def __init__(self, path: str | Path | None, channels: int | None = None) -> None:
        self._seconds = iter_seconds(path, channels=channels) if path is not None else iter(())
        self._next = 0  # chunk index of the next second the pipe will give
        self._cache: tuple[int, torch.Tensor] | None = None
        self._ended = path is None

    def patch(self, k: int) -> torch.Tensor:
        """``[1, 96, 64]`` float32 patch of chunk ``k``."""
        if self._cache is not None and self._cache[0] == k:
            return self._cache[1]
        if k < self._next:
            raise ValueError(f"chunk {k} asked after chunk {self._next - 1}: chunks must not go back")
        samples = None
        while not self._ended and self._next <= k:
            block = next(self._seconds, None)
            if block is None:
                self._ended = True
                break
            if self._next == k:
                samples = block
            self._next += 1
        result = chunk_patch(samples) if samples is not None else silence_patch()
        self._next = max(self._next, k + 1)
        self._cache = (k, result)
        return result

    def close(self) -> None:
        close = getattr(self._seconds, "close", None)
        if close is not None:
            close()


def iter_batches(path: str | Path, fps: float | None = 1, batch_size: int = 32, image_size: int = 224,
                 via: int | None = None, *, info: MediaInfo | None = None, start: float | None = None,
                 end: float | None = None, normalized: bool = True, audio: Any = None) -> Iterator[Batch]:
    """Yield :class:`Batch` objects of ``batch_size`` sampled frames (the last may be smaller).
    ``normalized=False``: ``Batch.frames`` is the resized uint8 picture ``[N, S, S, 3]`` (before normalisation,
    see :func:`~avsegcli.media.preprocess.resize_frames`) instead of the float32 model input.

    Decodes one window of frames at a time (``decord get_batch``) while the audio streams
    through one ffmpeg pipe, so memory does not grow with the video's length. Same frames,
    timestamps and patches as :func:`read_clip`. Stopping early (``break``) is fine. ``start``/``end`` (seconds)
    keep only the sampled frames with ``start <= t < end``; their chunks stay ``floor(t)`` on the source's
    timeline (the audio before the window is read through, not transformed). ``audio``: an
    :class:`~avsegcli.media.override.AudioOverride` heard instead of the video's own track (``avseg run --audio``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    info = _video_info(path, info)
    idx, ts = sample_times(info, fps, start=start, end=end)
    chunks = chunk_indices(ts)
    if audio is not None:
        stream = audio.stream()
    elif info.has_audio:
        stream = ChunkStream(path, info.audio_streams[0].channels or None)
    else:
        stream = ChunkStream(None)
    try:
        with VideoSource(path) as src:
            for sl, raw in src.iter_windows(idx, batch_size):
                frames = preprocess_frames(raw, image_size, via) if normalized else resize_frames(raw, image_size, via)
                del raw
                ids, rows = unique_chunks(chunks[sl])
                table = torch.stack([stream.patch(int(k)) for k in ids])
                yield Batch(frames=frames, timestamps=ts[sl], frame_indices=idx[sl], chunk_indices=chunks[sl],
                            chunk_ids=ids, chunk_log_mel=table, chunk_rows=rows, has_audio=info.has_audio,
                            info=info, raw_size=src.frame_size, start=sl.start)
    finally:
        stream.close()
