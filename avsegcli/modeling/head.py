"""The AVSegFormer head: encoder, audio queries, decoder, mixer and mask prediction (released names)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsegcli.modeling import upconv
from avsegcli.modeling.deform_attn import MSDeformAttn
from avsegcli.modeling.mixer import CrossModalMixer
from avsegcli.modeling.position import SinePositionalEncoding
from avsegcli.modeling.query_generator import AudioQueryGenerator
from avsegcli.modeling.transformer import Transformer


class Interpolate(nn.Module):
    """Bilinear resize by a factor (a parameter-free slot in the released ``nn.Sequential`` layouts)."""

    def __init__(self, *, scale_factor: int) -> None:
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)


class QueryMLP(nn.Module):
    """1x1 convolutions over the query axis of a ``[N, Q, H, W]`` map: ``Q -> hidden -> ... -> out``."""

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Conv2d(a, b, kernel_size=1) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def forward_folded(self, queries: Tensor, feature: Tensor, chunk: int = 2048) -> Tensor:
        """``feature + forward(einsum("bqc,bchw->bqhw", queries, feature))`` as GEMMs over pixels (the fast path).

        The query product is folded into the first layer, ``W1 (q F) = (W1 q) F``: one ``[hidden, C]`` matrix per
        sample replaces the ``[Q, H*W]`` map. Then ``[pixels, channels]`` GEMMs with fused bias (addmm) and
        in-place ReLU, ``chunk`` pixels at a time, written into a channels-last result (no layout copies).

        Args:
            queries: ``[N, Q, C]``; feature: ``[N, C, H, W]`` (a view, no copy, when channels_last).
        Returns ``[N, C, H, W]`` in channels_last memory, the same dtype as ``feature``.
        """
        n, c, h, w = feature.shape
        x = feature.permute(0, 2, 3, 1).reshape(n, h * w, c)  # [N, P, C]
        first, *middle, last = self.layers
        w1 = torch.matmul(first.weight.flatten(1), queries).transpose(1, 2)  # [N, C, hidden] = (W1 q)^T
        # with autograd or autocast (whose casts never apply to out= variants): chunks are concatenated instead of
        # written in place
        # one graph for any batch size while Dynamo traces (export, and compile, for which Dynamo folds is_exporting()
        # to True as well): the samples of a chunk in one batched GEMM
        if torch.compiler.is_exporting():
            parts = []
            for i in range(0, h * w, chunk):
                xb = x[:, i:i + chunk]  # [N, p, C]
                y = torch.baddbmm(first.bias.view(1, 1, -1), xb, w1).relu()  # [N, p, hidden]
                for layer in middle:
                    y = F.linear(y, layer.weight.flatten(1), layer.bias).relu()
                parts.append(F.linear(y, last.weight.flatten(1), last.bias) + xb)
            return torch.cat(parts, 1).view(n, h, w, -1).permute(0, 3, 1, 2)
        grad = torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type)
        out = None if grad else torch.empty(n, h * w, last.out_channels, dtype=x.dtype, device=x.device)  # [N, P, C]
        parts = []
        for b in range(n):
            for i in range(0, h * w, chunk):
                xb = x[b, i:i + chunk]  # [p, C]
                y = torch.addmm(first.bias, xb, w1[b]).relu_()  # [p, hidden]
                for layer in middle:
                    y = torch.addmm(layer.bias, y, layer.weight.flatten(1).t()).relu_()
                if grad:
                    parts.append(torch.addmm(last.bias, y, last.weight.flatten(1).t()) + xb)
                else:
                    res = out[b, i:i + chunk]
                    torch.addmm(last.bias, y, last.weight.flatten(1).t(), out=res)
                    res += xb
        if grad:
            out = torch.cat(parts).view(n, h * w, -1)
        return out.view(n, h, w, -1).permute(0, 3, 1, 2)


class SimpleFPN(nn.Module):
    """Three upsample-conv steps from stride 32 to stride 4, adding the stride-16 and stride-8 maps on the way."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.up1 = nn.Sequential(Interpolate(scale_factor=2), nn.Conv2d(dim, dim, 3, padding=1))
        self.up2 = nn.Sequential(Interpolate(scale_factor=2), nn.Conv2d(dim, dim, 3, padding=1))
        self.up3 = nn.Sequential(Interpolate(scale_factor=2), nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        """``levels``: maps at strides 8, 16, 32, each ``[N, C, h, w]``. Returns ``[N, C, H/4, W/4]``."""
        x = self.up1(levels[2]) + levels[1]
        x = self.up2(x) + levels[0]
        return self.up3(x)


def run_mask_convs(convs: nn.Sequential, x: Tensor, fast: bool = False) -> Tensor:
    """Apply :func:`_mask_convs`' layers; the last 1x1 convolution (the logits) runs in its weight's dtype with
    autocast off, so logits are float32 whatever the working precision (float32 weights are kept there).
    ``fast``: the upsampling and the 3x3 convolution after it run as one phase convolution
    (:func:`~avsegcli.modeling.upconv.upsample_conv3x3`, the same function)."""
    layers = list(convs[:-1])
    i = 0
    while i < len(layers):
        layer = layers[i]
        if fast and isinstance(layer, Interpolate) and i + 1 < len(layers) and upconv.can_use(x, layers[i + 1], layer.scale_factor):
            x = upconv.upsample_conv3x3(x, layers[i + 1], int(layer.scale_factor))
            i += 2
            continue
        x = layer(x)
        i += 1
    last = convs[-1]
    with torch.autocast(x.device.type, enabled=False):
        return last(x.to(last.weight.dtype))


def _mask_convs(dim: int, num_classes: int, scale_factor: int, widths: Sequence[int]) -> nn.Sequential:
    """Output convolutions: 3x3 to ``widths[0]`` (128 released), bilinear upsampling, 3x3 to ``widths[1]``
    (32 released), ReLU, 1x1 to the classes."""
    a, b = widths
    return nn.Sequential(
        nn.Conv2d(dim, a, 3, padding=1),
        Interpolate(scale_factor=scale_factor),
        nn.Conv2d(a, b, 3, padding=1),
        nn.ReLU(True),
        nn.Conv2d(b, num_classes, 1, bias=False),
    )


class AVSegHead(nn.Module):
    """Turns four visual maps and the projected audio feature into per-pixel logits.

    The mask steps come in pairs (:mod:`avsegcli.modeling.impl`): :meth:`predict` (the released op order: einsum,
    1x1 convolutions over the query axis) and :meth:`predict_fast` (:meth:`QueryMLP.forward_folded`, the phase
    up-convolution; equal within float rounding); :meth:`intermediate_mask` and :meth:`intermediate_mask_fast`.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_classes: int,
        num_queries: int,
        dim: int,
        mlp_dim: int,
        transformer: Transformer,
        query_generator: AudioQueryGenerator,
        mixer: CrossModalMixer,
        positional_encoding: SinePositionalEncoding,
        scale_factor: int = 4,
        mask_widths: Sequence[int] = (128, 32),
    ) -> None:
        super().__init__()
        self.num_levels = len(in_channels) - 1
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, dim))
        self.learnable_query = nn.Embedding(num_queries, dim)
        self.query_generator = query_generator
        self.transformer = transformer
        self.positional_encoding = positional_encoding
        self.in_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, dim, 1), nn.GroupNorm(32, dim)) for c in in_channels)
        self.mlp = QueryMLP(in_dim=num_queries, hidden_dim=mlp_dim, out_dim=dim, num_layers=3)
        self.fusion_block = mixer
        self.lateral_conv = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GroupNorm(32, dim))
        self.out_conv = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(32, dim), nn.ReLU(True))
        self.fpn = SimpleFPN(dim=dim)
        self.attn_fc = _mask_convs(dim, num_classes, scale_factor, mask_widths)
        self.fc = _mask_convs(dim, num_classes, scale_factor, mask_widths)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, feats: Sequence[Tensor], audio: Tensor, return_intermediate: bool = False) -> dict[str, Tensor | list[Tensor]]:
        """
        Args:
            feats: four maps at strides 4, 8, 16, 32: ``[N, C_i, H/s, W/s]``.
            audio: ``[N, 1, dim]`` the projected audio feature of each frame.
            return_intermediate: also compute the per-decoder-layer masks.

        Returns a dict:
            ``pred_masks``: ``[N, K, H, W]`` logits (H, W = 4 x the stride-4 map),
            ``mask_feature``: ``[N, dim, H/4, W/4]`` the mixed mask feature,
            ``queries``: ``[N, Q, dim]`` the last decoder layer's queries,
            ``intermediate_masks`` (on request): one ``[N, K, H, W]`` per decoder layer.
        """
        shapes, outputs, attns, mask_feature = self.decode(feats, audio, return_intermediate)
        out: dict[str, Tensor | list[Tensor]] = {"pred_masks": self.predict(outputs[-1], mask_feature),
                                                 "mask_feature": mask_feature, "queries": outputs[-1]}
        if return_intermediate:
            out["intermediate_masks"] = [self.intermediate_mask(q, a, shapes) for q, a in zip(outputs, attns)]
        return out

    def decode(self, feats: Sequence[Tensor], audio: Tensor, need_attn: bool = False
               ) -> tuple[list[tuple[int, int]], list[Tensor], list[Tensor | None], Tensor]:
        """Encoder, audio queries, decoder and mixer (arguments as in :meth:`forward`). Returns the level shapes
        ``(h, w)`` at strides 8, 16, 32, every decoder layer's queries ``[N, Q, C]`` and cross-attention map
        ``[N, Q, S]`` (None unless ``need_attn``), and the mask feature ``[N, C, H/4, W/4]``."""
        srcs = [self.in_proj[i + 1](feats[i + 1]) for i in range(self.num_levels)]
        shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # [N, S, C]
        pos_flat = torch.cat(
            [
                self.positional_encoding(h, w, s.device).to(s.dtype).flatten(2).transpose(1, 2) + self.level_embed[lvl][None, None]
                for lvl, ((h, w), s) in enumerate(zip(shapes, srcs))
            ],
            1,
        )  # [1, S, C]

        query = self.query_generator(audio) + self.learnable_query.weight[None]  # [N, Q, C]
        memory = self.transformer.encoder(src_flat, pos_flat, shapes)  # [N, S, C]
        outputs, attns = self.transformer.decoder(query, memory, need_attn=need_attn)

        levels = self._split_levels(memory.transpose(1, 2), shapes)  # each [N, C, h, w]
        lateral = self.lateral_conv(self.in_proj[0](feats[0]))
        mask_feature = lateral + F.interpolate(levels[0], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        mask_feature = self.fusion_block(self.out_conv(mask_feature), audio)  # [N, C, H/4, W/4]
        return shapes, outputs, attns, mask_feature

    def predict(self, queries: Tensor, mask_feature: Tensor) -> Tensor:
        """Logits ``[N, K, H, W]`` of the last queries ``[N, Q, C]`` on the mask feature ``[N, C, H/4, W/4]``: the
        query product ``[N, Q, H/4, W/4]``, the query MLP back to ``C`` channels, the residual, the output convs."""
        pred = torch.einsum("bqc,bchw->bqhw", queries, mask_feature)  # [N, Q, H/4, W/4]
        return run_mask_convs(self.fc, mask_feature + self.mlp(pred))  # [N, K, H, W]

    def predict_fast(self, queries: Tensor, mask_feature: Tensor) -> Tensor:
        """:meth:`predict` (same shapes) with the query product folded into the MLP (:meth:`QueryMLP.forward_folded`)
        and the upsampling fused into the convolution after it."""
        return run_mask_convs(self.fc, self.mlp.forward_folded(queries, mask_feature), fast=True)

    def intermediate_mask(self, queries: Tensor, attn: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
        """The paper's per-layer mask: queries ``[N, Q, C]`` weighted by their cross-attention map ``[N, Q, S]``,
        split back into the three levels, through the FPN and the output convolutions: ``[N, K, H, W]``."""
        return run_mask_convs(self.attn_fc, self._attention_feature(queries, attn, shapes))

    def intermediate_mask_fast(self, queries: Tensor, attn: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
        """:meth:`intermediate_mask` (same shapes) with the upsampling fused into the convolution after it."""
        return run_mask_convs(self.attn_fc, self._attention_feature(queries, attn, shapes), fast=True)

    def _attention_feature(self, queries: Tensor, attn: Tensor, shapes: Sequence[tuple[int, int]]) -> Tensor:
        """``[N, C, H/4, W/4]``: queries ``[N, Q, C]`` weighted by ``attn`` ``[N, Q, S]``, through the FPN."""
        maps = torch.einsum("bqc,bqs->bcs", queries, attn)  # [N, C, S]
        return self.fpn(self._split_levels(maps, shapes))

    @staticmethod
    def _split_levels(x: Tensor, shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """``[N, C, S]`` -> one ``[N, C, h, w]`` per level."""
        parts = x.split([h * w for h, w in shapes], dim=2)
        return [p.reshape(x.shape[0], x.shape[1], h, w) for p, (h, w) in zip(parts, shapes)]
