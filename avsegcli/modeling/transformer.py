"""The deformable encoder over the visual levels and the query decoder (names as in the released head)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from avsegcli.modeling.attention import Attention
from avsegcli.modeling.deform_attn import MSDeformAttn


class EncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a GELU FFN; post-norm."""

    def __init__(self, *, dim: int, ffn_dim: int, num_levels: int, num_heads: int, num_points: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim=dim, num_levels=num_levels, num_heads=num_heads, num_points=num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.activation = nn.GELU()
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """``src``, ``pos``: ``[N, S, C]``; ``reference_points``: ``[N, S, L, 2]``. Returns ``[N, S, C]``."""
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class Encoder(nn.Module):
    def __init__(self, *, layers: Sequence[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes: Sequence[tuple[int, int]], batch: int, device: torch.device) -> Tensor:
        """Pixel centres of every level, normalised to [0, 1]: ``[N, S, L, 2]`` (x, y), the same for every level."""
        refs = []
        for h, w in spatial_shapes:
            ys = torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device) / h
            xs = torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device) / w
            ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
            refs.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
        ref = torch.cat(refs, 0)  # [S, 2]
        return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(self, src: Tensor, pos: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """``src``, ``pos``: ``[N, S, C]`` (pos includes the level embedding). Returns the memory ``[N, S, C]``."""
        ref = self.reference_points(spatial_shapes, src.shape[0], src.device)  # float32 in every working dtype
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes)
        return src


class DecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the encoder memory, GELU FFN; post-norm, no positional terms."""

    def __init__(self, *, dim: int, ffn_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.activation = nn.GELU()
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, query: Tensor, memory: Tensor, need_attn: bool = False) -> tuple[Tensor, Tensor | None]:
        """``query``: ``[N, Q, C]``, ``memory``: ``[N, S, C]``.

        Returns the new queries ``[N, Q, C]`` and, when ``need_attn``, the cross-attention map averaged over
        heads ``[N, Q, S]`` (else None).
        """
        query = self.norm1(query + self.dropout1(self.self_attn(query, query, query, need_weights=False)[0]))
        out, attn = self.cross_attn(query, memory, memory, need_weights=need_attn, average_attn_weights=True)
        query = self.norm2(query + self.dropout2(out))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(query))))
        return self.norm3(query + self.dropout4(ffn)), attn


class Decoder(nn.Module):
    def __init__(self, *, layers: Sequence[DecoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, query: Tensor, memory: Tensor, need_attn: bool = False) -> tuple[list[Tensor], list[Tensor | None]]:
        """Returns every layer's queries (each ``[N, Q, C]``) and cross-attention maps (each ``[N, Q, S]`` or None)."""
        outputs, attns = [], []
        for layer in self.layers:
            query, attn = layer(query, memory, need_attn)
            outputs.append(query)
            attns.append(attn)
        return outputs, attns


class Transformer(nn.Module):
    """Holds ``encoder`` and ``decoder`` under the released names (``head.transformer.encoder/decoder``)."""

    def __init__(self, *, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
