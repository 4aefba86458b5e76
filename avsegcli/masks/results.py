"""The one result type of a prediction: a video's masks (:class:`VideoMasks`), frame by frame (:class:`FrameMask`).

The same type whether the masks are in memory or read back from disk::

    pred.predict_video("clip.mp4")          # VideoMasks, straight from the model  (avsegcli.inference.predictor)
    read_masks_dir("out/clip")              # VideoMasks, from an `avseg run` folder (avsegcli.masks.io)
    for f in pred.stream("clip.mp4"): ...   # FrameMask per sampled frame, as the model produces them
    video[i], list(video)                   # the same FrameMask records, taken from a VideoMasks

It lives here, below inference, because render and eval read saved masks without a model. Old names:
``FrameResult`` = :class:`FrameMask`, ``VideoPrediction`` = ``MaskSet`` = :class:`VideoMasks`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: tolerance (seconds) of ``floor(timestamp)`` when a frame's audio second is not recorded
_EPS = 1e-6


def chunks_of(meta: dict[str, Any], timestamps: np.ndarray) -> np.ndarray:
    """``[N]`` int64: the audio second each saved frame heard, from ``meta.json``'s per-frame ``chunk`` records
    (when there is one per timestamp), else ``floor(timestamp)`` (seconds, 1 us tolerance, at least 0)."""
    frames = meta.get("frames") or []
    if len(frames) == len(timestamps) and all("chunk" in f for f in frames):
        return np.array([int(f["chunk"]) for f in frames], dtype=np.int64)
    return np.maximum(np.floor(np.asarray(timestamps, dtype=np.float64) + _EPS), 0).astype(np.int64)


@dataclass
class FrameMask:
    """One sampled frame's prediction.

    ``mask [H, W]`` uint8 at the source size (0/1, or class ids when semantic); ``timestamp`` seconds;
    ``frame_index`` (source frame number); ``chunk`` (the audio second it heard: ``floor(timestamp)``);
    ``has_audio`` (the video had an audio track; None when a saved folder does not say); ``probs`` when asked for
    (binary: ``[H, W]`` sigmoid; semantic: ``[K, S, S]`` softmax at model size).
    """

    mask: np.ndarray
    timestamp: float
    frame_index: int
    chunk: int
    has_audio: bool | None
    probs: np.ndarray | None = None


@dataclass
class VideoMasks:
    """One video's predicted masks at its own size, in frame order.

    ``masks [N, H, W]`` uint8 (0/1, or class ids when ``semantic``); ``frame_indices [N]`` int64 (source frame
    numbers); ``timestamps [N]`` float64 seconds; ``meta`` (a saved folder's ``meta.json``; empty in memory);
    ``chunk_indices [N]`` int64 (the audio second of each frame; from ``meta`` or ``floor(timestamp)`` when not
    given); ``has_audio`` (None when unknown); ``probs`` (binary ``[N, H, W]`` sigmoid, semantic ``[N, K, S, S]``
    softmax at model size; only in memory, with ``return_probs``). ``video[i]`` is frame ``i`` as a
    :class:`FrameMask`; ``len(video)`` is ``N``.
    """

    masks: np.ndarray
    frame_indices: np.ndarray
    timestamps: np.ndarray
    semantic: bool
    meta: dict[str, Any] = field(default_factory=dict)
    chunk_indices: np.ndarray | None = None
    has_audio: bool | None = None
    probs: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.chunk_indices is None:
            self.chunk_indices = chunks_of(self.meta, self.timestamps)

    @classmethod
    def from_frames(cls, frames: Sequence[FrameMask], *, semantic: bool, meta: dict[str, Any] | None = None) -> VideoMasks:
        """Stack ``frames`` (at least one, all of one size) into one :class:`VideoMasks`; ``has_audio`` is the last
        frame's, ``probs`` are kept when the frames carry them."""
        return cls(
            masks=np.stack([f.mask for f in frames]), frame_indices=np.array([f.frame_index for f in frames], dtype=np.int64),
            timestamps=np.array([f.timestamp for f in frames], dtype=np.float64), semantic=semantic, meta=dict(meta or {}),
            chunk_indices=np.array([f.chunk for f in frames], dtype=np.int64), has_audio=frames[-1].has_audio,
            probs=np.stack([f.probs for f in frames]) if frames[0].probs is not None else None,
        )

    def __len__(self) -> int:
        return int(self.frame_indices.shape[0])

    def __getitem__(self, i: int) -> FrameMask:
        return FrameMask(mask=self.masks[i], timestamp=float(self.timestamps[i]), frame_index=int(self.frame_indices[i]),
                         chunk=int(self.chunk_indices[i]), has_audio=self.has_audio,
                         probs=None if self.probs is None else self.probs[i])

    def __iter__(self) -> Iterator[FrameMask]:
        return (self[i] for i in range(len(self)))
