"""The audio-visual mixer: channel attention with the audio feature as the query, a sigmoid gate on channels."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CrossModalMixer(nn.Module):
    def __init__(self, *, dim: int = 256, num_heads: int = 8) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(dim, dim * 2, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, feature_map: Tensor, audio: Tensor) -> Tensor:
        """``feature_map``: ``[N, C, H, W]``, ``audio``: ``[N, 1, C]``. Returns the gated map ``[N, C, H, W]``."""
        n, c, _, _ = feature_map.shape
        m = self.num_heads
        flat = feature_map.flatten(2).transpose(1, 2)  # [N, HW, C]
        q = self.q_proj(audio).reshape(n, 1, m, c // m).permute(0, 2, 1, 3)  # [N, M, 1, D]
        k, v = self.kv_proj(flat).reshape(n, -1, 2, m, c // m).permute(2, 0, 3, 1, 4).unbind(0)  # [N, M, HW, D]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # [N, M, 1, HW]
        gate = self.proj((attn @ v).transpose(1, 2).reshape(n, 1, c)).sigmoid()  # [N, 1, C]
        return feature_map * gate[:, 0, :, None, None]

    def forward_fast(self, feature_map: Tensor, audio: Tensor) -> Tensor:
        """:meth:`forward` (same shapes, the same function within float rounding) without projecting the map to
        keys and values: with one query per head, ``q . (Wk x) = (Wk^T q) . x`` and ``sum_p a_p (Wv x_p) =
        Wv (sum_p a_p x_p)``, so the map meets two ``[N, M, C]`` matrices instead of a ``[C, 2C]`` projection
        (per frame at 512 px: 0.13 instead of 8.6 GFLOP)."""
        n, c, _, _ = feature_map.shape
        m = self.num_heads
        flat = feature_map.flatten(2).transpose(1, 2)  # [N, HW, C] (a view when channels_last)
        wk, wv = self.kv_proj.weight.view(2, m, c // m, c).unbind(0)  # each [M, D, C]
        q = self.q_proj(audio).view(n, m, c // m) * self.scale  # [N, M, D]
        keys = torch.einsum("nmd,mdc->nmc", q, wk)  # [N, M, C]: Wk_m^T q_m
        attn = torch.bmm(keys, flat.transpose(1, 2)).softmax(dim=-1)  # [N, M, HW]
        pooled = torch.bmm(attn, flat)  # [N, M, C]
        gate = self.proj(torch.einsum("nmc,mdc->nmd", pooled, wv).reshape(n, 1, c)).sigmoid()  # [N, 1, C]
        return feature_map * gate[:, 0, :, None, None]
