"""Sine positional encoding of DETR (not normalised), as the released head uses it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avsegcli.modeling.cache import module_cache


class SinePositionalEncoding(nn.Module):
    """Positions (row, column) counted from 1, encoded by sines and cosines of ``num_feats`` frequencies each."""

    def __init__(self, *, num_feats: int = 128, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature

    def forward(self, height: int, width: int, device: torch.device | None = None) -> Tensor:
        """Returns ``[1, 2 * num_feats, height, width]`` float32 (y features first, then x); computed once per
        size and device (it has no parameters), then reused."""
        key = ("pos", int(height), int(width), torch.device(device) if device is not None else None)
        cache = module_cache(self)
        if key not in cache:
            with torch.inference_mode(False):  # a normal tensor: usable by autograd after an inference-mode call
                cache[key] = self._encode(height, width, device)
        return cache[key]

    def _encode(self, height: int, width: int, device: torch.device | None) -> Tensor:
        y = torch.arange(1, height + 1, dtype=torch.float32, device=device)[:, None].expand(height, width)
        x = torch.arange(1, width + 1, dtype=torch.float32, device=device)[None, :].expand(height, width)
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_feats)
        pos_x = x[:, :, None] / dim_t
        pos_y = y[:, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
        return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)[None]
