"""``Predictor``: a loaded model plus the exact preprocessing its checkpoint expects; videos in, masks out.

    from avsegcli import Predictor
    pred = Predictor("AVSegFormer_res50_s4.pth", device="cpu")
    result = pred.predict_video("video.mp4")      # result.masks [N, H, W] uint8, result.timestamps [N] seconds
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avsegcli.errors import AvsegError, CheckpointError
from avsegcli.weights import RELEASED, load_model, sha256sum

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS_NAME = "avseg-synth-s4.safetensors"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_weights() -> Path:
    """The bundled default checkpoint in ``weights/`` (the repository's), or a clear error naming what to do."""
    path = REPO_WEIGHTS / DEFAULT_WEIGHTS_NAME
    if path.is_file():
        return path
    names = ", ".join(r.filename for r in RELEASED)
    raise CheckpointError(
        f"no --weights given and no bundled default model at {path}; pass --weights FILE, or put a checkpoint in "
        f"{REPO_WEIGHTS}/ (the authors' released files: {names})"
    )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AvsegError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AvsegError(f"device {device} asked for, but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise AvsegError(f"device {device} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


@dataclass
class VideoPrediction:
    """Masks of one video at its own size: ``masks [N, H, W]`` uint8 (0/1, or class ids when semantic)."""

    masks: np.ndarray
    timestamps: np.ndarray
    frame_indices: np.ndarray
    chunk_indices: np.ndarray
    has_audio: bool
    semantic: bool
    probs: np.ndarray | None = None  # binary: [N, H, W] sigmoid; semantic: [N, K, S, S] softmax at model size


class Predictor:
    """Loads the model once; ``predict_video`` / ``predict_frames`` run it with the checkpoint's preprocessing."""

    def __init__(self, weights: str | Path | None = None, *, device: str | torch.device = "auto", precision: str = "fp32",
                 batch_size: int = 8, fps: float | None = 1.0) -> None:
        if precision not in PRECISIONS:
            raise AvsegError(f"unknown precision {precision!r} (fp32, fp16 or bf16)")
        if batch_size < 1:
            raise AvsegError(f"batch size must be at least 1, got {batch_size}")
        self.weights = Path(weights) if weights is not None else default_weights()
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.fps = fps
        self.model = load_model(self.weights, device=self.device)
        self.config: dict[str, Any] = self.model.config
        self.image_size: int = int(self.config["image_size"])
        self.via: int | None = self.config.get("frame_resize_via")
        self.num_classes = self.model.num_classes
        self.semantic = self.num_classes > 1
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = sha256sum(self.weights)
        return self._sha256

    def model_info(self) -> dict[str, Any]:
        return {"weights": str(self.weights), "sha256": self.sha256, "preset": self.config.get("name"), "task": self.config.get("task"),
                "num_classes": self.num_classes, "image_size": self.image_size, "device": str(self.device), "precision": self.precision}

    def autocast(self):
        """The autocast context for this predictor's precision (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[self.precision])

    @torch.inference_mode()
    def logits(self, frames: torch.Tensor, chunk_log_mel: torch.Tensor, chunk_rows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``frames [B, 3, S, S]`` normalised, ``chunk_log_mel [C, 1, 96, 64]`` (one patch per distinct audio second),
        ``chunk_rows [B]`` (frame -> patch row). VGGish runs once per patch. Returns ``[B, K, S, S]`` float32 logits."""
        rows = torch.as_tensor(np.asarray(chunk_rows), dtype=torch.long, device=self.device)
        with self.autocast():
            emb = self.model.embed_audio(chunk_log_mel.to(self.device, non_blocking=True))
            out = self.model(frames.to(self.device, non_blocking=True), audio_embedding=emb[rows])
        return out["pred_masks"].float()

    def to_masks(self, logits: torch.Tensor, size: tuple[int, int], with_probs: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``[B, K, S, S]`` -> masks ``[B, H, W]`` uint8 at the source size (bilinear on the logits, then
        threshold 0.5 / argmax). For semantic masks only the classes that win somewhere at model size are upsampled."""
        h, w = size
        if not self.semantic:
            up = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            masks = (up > 0).to(torch.uint8).cpu().numpy()
            return masks, (up.sigmoid().cpu().numpy() if with_probs else None)
        out = np.empty((logits.shape[0], h, w), dtype=np.uint8)
        for i, lg in enumerate(logits):
            classes = lg.argmax(0).unique()
            up = F.interpolate(lg[classes][None], size=(h, w), mode="bilinear", align_corners=False)[0]
            out[i] = classes[up.argmax(0)].to(torch.uint8).cpu().numpy()
        return out, (logits.softmax(1).cpu().numpy() if with_probs else None)

    def predict_frames(self, frames: torch.Tensor, log_mel: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
        """Already preprocessed ``frames [N, 3, S, S]`` and per-frame ``log_mel [N, 1, 96, 64]`` -> masks ``[N, H, W]``."""
        size = size or (self.image_size, self.image_size)
        masks = []
        for i in range(0, frames.shape[0], self.batch_size):
            lg = self.logits(frames[i:i + self.batch_size], log_mel[i:i + self.batch_size], np.arange(min(self.batch_size, frames.shape[0] - i)))
            masks.append(self.to_masks(lg, size)[0])
        return np.concatenate(masks) if masks else np.zeros((0, *size), np.uint8)

    def predict_video(self, path: str | Path, *, fps: float | None = None, return_probs: bool = False) -> VideoPrediction:
        """Masks of every sampled frame of a video (``fps`` defaults to the predictor's, 1 frame per second)."""
        from avsegcli import media

        fps = self.fps if fps is None else fps
        parts: dict[str, list[np.ndarray]] = {"masks": [], "probs": [], "ts": [], "idx": [], "chunks": []}
        has_audio = True
        for batch in media.iter_batches(path, fps=fps, batch_size=self.batch_size, image_size=self.image_size, via=self.via):
            masks, probs = self.to_masks(self.logits(batch.frames, batch.chunk_log_mel, batch.chunk_rows), batch.raw_size, return_probs)
            parts["masks"].append(masks)
            if probs is not None:
                parts["probs"].append(probs)
            parts["ts"].append(batch.timestamps)
            parts["idx"].append(batch.frame_indices)
            parts["chunks"].append(batch.chunk_indices)
            has_audio = batch.has_audio
        if not parts["masks"]:
            raise AvsegError("has no frames to predict", path=path)
        return VideoPrediction(
            masks=np.concatenate(parts["masks"]), timestamps=np.concatenate(parts["ts"]),
            frame_indices=np.concatenate(parts["idx"]), chunk_indices=np.concatenate(parts["chunks"]),
            has_audio=has_audio, semantic=self.semantic, probs=np.concatenate(parts["probs"]) if parts["probs"] else None,
        )
