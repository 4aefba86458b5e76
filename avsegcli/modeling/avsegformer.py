"""AVSegFormer: backbone + VGGish + audio projection + head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsegcli.modeling.head import AVSegHead
from avsegcli.modeling.vggish import VGGish


class AVSegFormer(nn.Module):
    """The whole model. ``config`` (the preset dict it was built from) travels with it into checkpoints."""

    def __init__(self, *, backbone: nn.Module, vggish: VGGish, head: AVSegHead, audio_dim: int, dim: int, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.vggish = vggish
        self.head = head
        self.audio_proj = nn.Linear(audio_dim, dim)
        self.config = dict(config or {})

    @property
    def num_classes(self) -> int:
        return self.head.fc[-1].out_channels

    def embed_audio(self, log_mel: Tensor) -> Tensor:
        """``log_mel``: ``[N, 1, 96, 64]`` -> VGGish embedding ``[N, 128]``. Run it once per audio chunk."""
        return self.vggish(log_mel)

    def forward(
        self,
        frames: Tensor,
        log_mel: Tensor | None = None,
        *,
        audio_embedding: Tensor | None = None,
        frame_valid: Tensor | None = None,
        return_intermediate: bool = False,
    ) -> dict[str, Any]:
        """
        Args:
            frames: ``[N, 3, H, W]`` ImageNet-normalised RGB.
            log_mel: ``[N, 1, 96, 64]`` the log-mel patch of each frame's second, or None when
                ``audio_embedding`` ``[N, 128]`` (from :meth:`embed_audio`) is given instead.
            frame_valid: optional ``[N]`` 0/1 flags; features and outputs of invalid (padding) frames are zeroed,
                as the released AVSS model does.
            return_intermediate: add ``intermediate_masks``, one ``[N, K, H, W]`` per decoder layer.

        Returns a dict: ``pred_masks`` ``[N, K, H, W]`` logits, ``mask_feature`` ``[N, 256, H/4, W/4]``,
        ``queries`` ``[N, Q, 256]``, and ``intermediate_masks`` on request.
        """
        if audio_embedding is None:
            if log_mel is None:
                raise ValueError("give log_mel or audio_embedding")
            audio_embedding = self.embed_audio(log_mel)
        audio = self.audio_proj(audio_embedding[:, None, :])  # [N, 1, dim]
        feats = self.backbone(frames)
        flag = None if frame_valid is None else frame_valid.to(frames.dtype).view(-1, 1, 1, 1)
        if flag is not None:
            feats = [f * flag for f in feats]
        out = self.head(feats, audio, return_intermediate=return_intermediate)
        size = frames.shape[-2:]
        if out["pred_masks"].shape[-2:] != size:
            out["pred_masks"] = F.interpolate(out["pred_masks"], size=size, mode="bilinear", align_corners=False)
            if return_intermediate:
                out["intermediate_masks"] = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in out["intermediate_masks"]]
        if flag is not None:
            out["pred_masks"] = out["pred_masks"] * flag
            out["mask_feature"] = out["mask_feature"] * flag
            if return_intermediate:
                out["intermediate_masks"] = [m * flag for m in out["intermediate_masks"]]
        return out
