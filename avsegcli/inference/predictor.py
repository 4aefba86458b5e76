"""``Predictor``: a loaded model plus the exact preprocessing its checkpoint expects; videos in, masks out.

    from avsegcli import Predictor
    pred = Predictor("AVSegFormer_res50_s4.pth", device="cpu")
    result = pred.predict_video("video.mp4")      # VideoMasks: result.masks [N, H, W] uint8, result.timestamps [N] s
    for r in pred.stream("long.mp4"):              # one FrameMask per sampled frame, memory bounded by a batch
        r.mask, r.timestamp, r.frame_index, r.chunk

Both are the result types of :mod:`avsegcli.masks.results` (what ``read_masks_dir`` returns too); ``FrameResult``
and ``VideoPrediction`` are their old names here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avsegcli.errors import AvsegError, CheckpointError
from avsegcli.export.cache import is_exported, runner_for
from avsegcli.export.runners import BACKENDS, Runner
from avsegcli.inference import precision as precision_modes
from avsegcli.inference.feed import device_frames, device_guard, logits_to_masks, normalize_stats, stage, to_device
from avsegcli.masks.results import FrameMask, VideoMasks
from avsegcli.media.clip import iter_batches
from avsegcli.media.override import AudioOverride, parse_audio
from avsegcli.hub import resolve_weights
from avsegcli.weights import RELEASED, load_model, sha256sum

REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
DEFAULT_WEIGHTS_NAME = "avseg-synth-s4.safetensors"
PRECISIONS = precision_modes.DTYPES  # the concrete modes; "auto" resolves to one of them (avsegcli.inference.precision)


def default_weights() -> Path:
    """The bundled default checkpoint in ``weights/`` (the repository's), or a clear error naming what to do."""
    path = REPO_WEIGHTS / DEFAULT_WEIGHTS_NAME
    if path.is_file():
        return path
    names = ", ".join(r.filename for r in RELEASED)
    raise CheckpointError(
        f"no --weights given and no bundled default model at {path}; pass --weights FILE or a name (avseg weights list), or put a checkpoint in "
        f"{REPO_WEIGHTS}/ (the authors' released files: {names})"
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device to run on, with its index when it is CUDA (``auto``/``cuda``: the current CUDA device), so every
    tensor, stream and pinned buffer of a run names one GPU and no context opens on another."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AvsegError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AvsegError(f"device {device} asked for, but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise AvsegError(f"device {device} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


#: old names of the result types (:mod:`avsegcli.masks.results`): one frame, one video
FrameResult = FrameMask
VideoPrediction = VideoMasks


class Predictor:
    """Loads the model once; ``predict_video`` / ``predict_frames`` run it with the checkpoint's preprocessing.

    ``precision``: ``auto`` (default: bf16 where native and faster, else fp32), ``fp32``, ``tf32``, ``bf16`` or
    ``fp16`` (:mod:`avsegcli.inference.precision`); ``impl``: ``fast`` (default) or ``reference`` (the released arithmetic,
    op for op); ``compile``: run the model through ``torch.compile`` (first batches pay the compile time).
    ``backend``: ``torch`` (default), or ``onnxruntime`` / ``openvino`` running an exported file (``weights`` an
    ``.onnx`` / ``.xml`` from ``avseg export``, or a checkpoint exported on the fly to the cache:
    :mod:`avsegcli.export`); everything around the forward is the same code.
    """

    def __init__(self, weights: str | Path | None = None, *, device: str | torch.device = "auto", precision: str = "auto",
                 batch_size: int = 8, fps: float | None = 1.0, impl: str = "fast", compile: bool = False, backend: str = "torch") -> None:
        if batch_size < 1:
            raise AvsegError(f"batch size must be at least 1, got {batch_size}")
        if impl not in ("fast", "reference"):
            raise AvsegError(f"unknown impl {impl!r} (fast or reference)")
        if backend not in BACKENDS:
            raise AvsegError(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")
        self.weights = resolve_weights(weights) if weights is not None else default_weights()  # a file or a name
        self.backend = backend
        self.requested_precision = precision
        self.impl = impl
        self.compiled = compile
        self.batch_size = batch_size
        self.fps = fps
        self._sha256: str | None = None
        self.runner: Runner | None = None
        self.model = None
        if backend == "torch":
            if is_exported(self.weights):
                raise AvsegError("is an exported model: run it with --backend onnxruntime or openvino", path=self.weights)
            self.device = resolve_device(device)
            self.precision = precision_modes.resolve(precision, self.device)
            self.model = load_model(self.weights, device=self.device, impl=impl)
            dtype = precision_modes.reduced_dtype(self.precision)
            if dtype is not None:  # weights cast once, float32 islands: the same on every device (no autocast)
                self.model.cast_for_inference(dtype)
            self._forward = torch.compile(self.model, dynamic=False) if compile else self.model
            self.config: dict[str, Any] = self.model.config
            self.num_classes = self.model.num_classes
        else:  # an exported graph: frames + log-mel -> logits, on the host (onnxruntime's CUDA provider copies itself)
            if compile:
                raise AvsegError(f"--compile applies to --backend torch; {backend} compiles the graph itself")
            asked = str(resolve_device(device)) if str(device) != "auto" else "cpu"
            self.runner = runner_for(backend, self.weights, precision=precision, device=asked)
            self.device = torch.device("cpu")
            self.precision = self.runner.precision
            self.impl = self.runner.meta.impl  # the arithmetic the file was exported with (avseg export --impl)
            self._sha256 = self.runner.meta.source_sha256
            self.config = self.runner.meta.config
            self.num_classes = self.runner.meta.num_classes
        self._stats = normalize_stats(self.device)  # mean and std, kept on the device
        self.image_size: int = int(self.config["image_size"])
        self.via: int | None = self.config.get("frame_resize_via")
        self.semantic = self.num_classes > 1

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256sum(self.weights)
        return self._sha256

    def model_info(self) -> dict[str, Any]:
        return {"weights": str(self.weights), "sha256": self.sha256, "preset": self.config.get("name"), "task": self.config.get("task"),
                "num_classes": self.num_classes, "image_size": self.image_size, "device": str(self.device), "precision": self.precision,
                "precision_requested": self.requested_precision, "impl": self.impl, "compiled": self.compiled,
                **(self.runner.info() if self.runner is not None else {})}

    def scope(self):
        """The context every forward of this predictor runs in: the precision's float32 switches, restored on the
        way out (:func:`avsegcli.inference.precision.scope`; cuDNN's autotuner on for CUDA's repeating shapes), and the
        predictor's GPU as the current device (so nothing touches another GPU)."""
        stack = contextlib.ExitStack()
        stack.enter_context(precision_modes.scope(self.precision, benchmark=self.device.type == "cuda"))
        stack.enter_context(device_guard(self.device))
        return stack

    @torch.inference_mode()
    def forward(self, frames: torch.Tensor, log_mel: torch.Tensor | None = None, *, audio_embedding: torch.Tensor | None = None,
                frame_valid: torch.Tensor | None = None) -> torch.Tensor:
        """The model on device tensors, as this predictor runs it (precision, impl, compiled or not): ``frames
        [B, 3, S, S]`` normalised float32, ``log_mel [B, 1, 96, 64]`` or ``audio_embedding [B, 128]``, optional
        ``frame_valid [B]``. Returns ``[B, K, S, S]`` float32 logits. ``avseg run``, ``stream`` and ``avseg eval``
        all come through here. Another backend takes ``log_mel`` (its graph holds VGGish)."""
        if self.runner is not None:
            if log_mel is None:
                raise AvsegError(f"the {self.backend} backend takes log-mel patches (its graph includes VGGish), not audio embeddings")
            logits = self.runner(frames, log_mel)
            # the torch model zeroes the outputs of invalid (padding) frames; the same here
            return logits if frame_valid is None else logits * frame_valid.to(logits.dtype).view(-1, 1, 1, 1)
        with self.scope():
            if audio_embedding is None:
                audio_embedding = self.model.embed_audio(log_mel)
            out = self._forward(frames, audio_embedding=audio_embedding, frame_valid=frame_valid)
        return out["pred_masks"].float()

    @torch.inference_mode()
    def logits(self, frames: torch.Tensor, chunk_log_mel: torch.Tensor, chunk_rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``frames``: normalised float32 ``[B, 3, S, S]``, or the resized uint8 picture ``[B, S, S, 3]`` (normalised on
        the device, same numbers: :func:`avsegcli.inference.feed.device_frames`); ``chunk_log_mel [C, 1, 96, 64]`` (one patch per
        distinct audio second), ``chunk_rows [B]`` (frame -> patch row). VGGish runs once per patch. Host tensors
        should be pinned on CUDA (:func:`avsegcli.inference.feed.stage`); every copy to the device is asynchronous there.
        A compiled predictor pads a short batch to ``batch_size`` (repeats of its last frame; one shape, no
        recompilation) and drops the padded rows. Returns ``[B, K, S, S]`` float32 logits."""
        n = frames.shape[0]
        rows = np.asarray(chunk_rows, dtype=np.int64)
        if self.compiled and n < self.batch_size:
            frames = torch.cat([frames, frames[-1:].expand(self.batch_size - n, *frames.shape[1:])])
            rows = np.concatenate([rows, np.full(self.batch_size - n, rows[-1], np.int64)])
        rows_dev = to_device(stage([rows], self.device)[0], self.device)
        x = device_frames(frames, self.device, self._stats)
        log_mel = to_device(chunk_log_mel, self.device)
        if self.runner is not None:  # one patch per frame: the graph runs VGGish itself
            return self.forward(x, log_mel[rows_dev])[:n]
        with self.scope():
            emb = self.model.embed_audio(log_mel)
        return self.forward(x, audio_embedding=emb[rows_dev])[:n]

    def to_masks(self, logits: torch.Tensor, size: tuple[int, int], with_probs: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``[B, K, S, S]`` -> masks ``[B, H, W]`` uint8 at the source size, on the logits' device with one copy to
        the host: binary ``bilinear(logits) > 0`` (= sigmoid > 0.5); semantic the argmax over all classes of the
        bilinearly upsampled logits (class chunks when large). See :func:`avsegcli.inference.feed.logits_to_masks`."""
        return logits_to_masks(logits, size, semantic=self.semantic, with_probs=with_probs)

    def predict_frames(self, frames: torch.Tensor, log_mel: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
        """Already preprocessed ``frames [N, 3, S, S]`` and per-frame ``log_mel [N, 1, 96, 64]`` -> masks ``[N, H, W]``."""
        size = size or (self.image_size, self.image_size)
        masks = []
        for i in range(0, frames.shape[0], self.batch_size):
            lg = self.logits(frames[i:i + self.batch_size], log_mel[i:i + self.batch_size], np.arange(min(self.batch_size, frames.shape[0] - i)))
            masks.append(self.to_masks(lg, size)[0])
        return np.concatenate(masks) if masks else np.zeros((0, *size), np.uint8)

    def stream(self, path: str | Path, *, fps: float | None = None, return_probs: bool = False,
               start: float | None = None, end: float | None = None, audio: Any = None) -> Iterator[FrameMask]:
        """Yield one :class:`~avsegcli.masks.results.FrameMask` per sampled frame, in time order, as the model produces them.

        Frames are decoded, run and released one batch (``batch_size`` frames) at a time and the audio streams
        alongside, so memory does not grow with the video's length. ``fps`` defaults to the predictor's;
        ``start``/``end`` (seconds) keep only the sampled frames with ``start <= t < end`` (same masks as a
        whole-video run for those frames). Stopping early (``break``) is fine. ``audio``: ``'original'`` (or None,
        the video's own), ``'silence'``, ``'noise'``, another media file, or an
        :class:`~avsegcli.media.override.AudioOverride` (see :mod:`avsegcli.media.override`).
        """
        fps = self.fps if fps is None else fps
        override = audio if isinstance(audio, AudioOverride) else parse_audio(audio)
        for batch in iter_batches(path, fps=fps, batch_size=self.batch_size, image_size=self.image_size,
                                        via=self.via, start=start, end=end, audio=override, normalized=False):
            # uint8 frames, normalised on the device by logits() (the same numbers; what avseg run sends too)
            masks, probs = self.to_masks(self.logits(batch.frames, batch.chunk_log_mel, batch.chunk_rows), batch.raw_size, return_probs)
            for i in range(len(batch)):
                yield FrameMask(mask=masks[i], timestamp=float(batch.timestamps[i]), frame_index=int(batch.frame_indices[i]),
                                  chunk=int(batch.chunk_indices[i]), has_audio=batch.has_audio,
                                  probs=None if probs is None else probs[i])

    def predict_video(self, path: str | Path, *, fps: float | None = None, return_probs: bool = False,
                      start: float | None = None, end: float | None = None, audio: Any = None) -> VideoMasks:
        """Masks of every sampled frame of a video (``fps`` defaults to the predictor's, 1 frame per second):
        :meth:`stream` collected into one :class:`~avsegcli.masks.results.VideoMasks` (``audio`` as there;
        ``meta`` empty, ``probs`` with ``return_probs``)."""
        frames = list(self.stream(path, fps=fps, return_probs=return_probs, start=start, end=end, audio=audio))
        if not frames:
            raise AvsegError("has no frames to predict", path=path)
        return VideoMasks.from_frames(frames, semantic=self.semantic)
