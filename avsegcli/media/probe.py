"""Probe a media file without ffprobe: ffmpeg's stream listing plus decord's frame index.

``probe(path)`` lists the file's streams with the bundled ffmpeg (:func:`avsegcli.media.ffmpeg.list_streams`:
container, duration, one record per stream), which rejects missing, empty, non-media and unreadable files
*before* decord sees them (decord can crash or hang on garbage). For a file with a video stream it then opens
decord (:class:`~avsegcli.media.video.VideoSource`), which indexes every packet: exact frame count, average fps,
per-frame timestamps, and the decoded frame size (frame 0 is decoded once, which also catches files whose packets
are present but undecodable).

Every failure is a :class:`~avsegcli.errors.MediaError` carrying the path and a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avsegcli.media.ffmpeg import AudioStreamInfo, list_streams
from avsegcli.media.video import VideoSource


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learnt about a file. Video fields are 0 for audio-only files.

    ``frame_times`` is ``[num_frames]`` float64: each frame's presentation time in seconds,
    counted from the video stream's start (decord's per-frame timestamps, rounded to 1 us), in
    presentation order, so frame ``i`` of decord is shown at ``frame_times[i]`` (VFR-safe).
    """

    path: str
    container: str
    duration: float
    fps: float
    num_frames: int
    width: int
    height: int
    video_codec: str | None
    audio_streams: tuple[AudioStreamInfo, ...] = ()
    frame_times: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    @property
    def has_video(self) -> bool:
        return self.num_frames > 0

    @property
    def has_audio(self) -> bool:
        return len(self.audio_streams) > 0

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of a decoded frame."""
        return (self.height, self.width)


def probe(path: str | Path) -> MediaInfo:
    """Probe ``path``: :class:`MediaInfo` (duration, fps, frame count, size, audio streams).

    Audio-only files probe fine (``num_frames == 0``); :func:`~avsegcli.media.read_clip` is what
    refuses them. Raises :class:`~avsegcli.errors.MediaError` for anything unreadable.
    """
    listing = list_streams(path)
    p = str(path)
    if not listing.video:
        return MediaInfo(p, listing.container, float(listing.duration or 0.0), 0.0, 0, 0, 0, None,
                         tuple(listing.audio))
    with VideoSource(path) as src:
        frame_times = src.frame_times
        height, width = src.frame_size
        fps = src.fps
        num_frames = src.num_frames
    duration = listing.duration
    if duration is None or duration <= 0:
        step = 1.0 / fps if fps > 0 else 0.0
        duration = float(frame_times[-1] + step) if num_frames else 0.0
    return MediaInfo(
        path=p, container=listing.container, duration=float(duration), fps=fps, num_frames=num_frames,
        width=width, height=height, video_codec=listing.video[0]["codec"],
        audio_streams=tuple(listing.audio), frame_times=frame_times,
    )
