"""Multi-scale deformable attention (Deformable DETR), pure PyTorch.

Three samplers, each the same function within float rounding, each pure PyTorch (CPU and GPU, autograd):

* :func:`ms_deform_attn`: the reference, one ``F.grid_sample`` per level, op for op as released;
* :func:`~avsegcli.modeling.deform_gather.ms_deform_attn_gather`: the fast path's (``impl="fast"``): the four
  bilinear taps of every point become rows of a value table framed with zeros, summed with their weights by one
  ``F.embedding_bag`` (:mod:`avsegcli.modeling.deform_gather`);
* :func:`ms_deform_attn_accumulate`: grid_sample again, laid out for accumulation; what the fast path traces for
  ``avseg export`` (:func:`grid_sample_for_export`: ONNX has no embedding-bag operator, GridSample is standard).

No compiled kernel is needed; each is tested against :func:`ms_deform_attn` (``tests/test_deform_attn.py``,
``tests/test_fast_path.py``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsegcli.modeling.cache import module_cache
from avsegcli.modeling.deform_gather import gather_bilinear, softmax_rows


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Sample each level bilinearly at the given locations and sum with the attention weights.

    Args:
        value: ``[N, S, M, D]`` values of all levels flattened (S = sum of H_l * W_l), M heads of D channels.
        spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
        sampling_locations: ``[N, Lq, M, L, P, 2]`` (x, y) in [0, 1], top-left (0, 0), bottom-right (1, 1).
        attention_weights: ``[N, Lq, M, L, P]``, normalised over L * P.

    Returns:
        ``[N, Lq, M * D]``.
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        # [N*M, D, Lq, P]
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [N, Lq, M, L, P] -> [N*M, 1, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # [N*M, D, Lq]
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def ms_deform_attn_accumulate(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """:func:`ms_deform_attn` (same arguments, same result within float rounding), the fast path's choice.

    The sampling points are laid out as rows (``[N*M, D, P, Lq]``, query index innermost) and each point's
    samples are multiplied by its weights and added into one ``[N*M, D, Lq]`` accumulator (``addcmul_``): no
    ``[.., L*P]`` concatenation and no reduction over a 4-wide innermost axis.
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    # [N, Lq, M, L, P, 2] -> [L, N*M, P, Lq, 2];  [N, Lq, M, L, P] -> [L, P, N*M, 1, Lq]
    grids = (2 * sampling_locations - 1).permute(3, 0, 2, 4, 1, 5).reshape(num_levels, n * m, num_points, lq, 2)
    weights = attention_weights.permute(3, 4, 0, 2, 1).reshape(num_levels, num_points, n * m, 1, lq)
    out = value.new_zeros(n * m, d, lq)
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        sampled = F.grid_sample(v, grids[lvl], mode="bilinear", padding_mode="zeros", align_corners=False)  # [N*M, D, P, Lq]
        for p in range(num_points):
            out.addcmul_(sampled[:, :, p], weights[lvl, p])
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


#: True while :func:`grid_sample_for_export` is active: the fast path then samples with grid_sample.
_FOR_EXPORT = False


@contextlib.contextmanager
def grid_sample_for_export():
    """While ``avseg export`` traces the fast path: sample with :func:`ms_deform_attn_accumulate` (grid_sample,
    ONNX's GridSample) instead of the embedding bag, which ONNX lacks. An explicit switch, not
    ``torch.compiler.is_exporting()``, which Dynamo also reads as True under ``torch.compile``."""
    global _FOR_EXPORT
    before, _FOR_EXPORT = _FOR_EXPORT, True
    try:
        yield
    finally:
        _FOR_EXPORT = before


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with learned offsets and weights (state-dict names as released).

    :meth:`forward` samples with :func:`ms_deform_attn` (the reference), :meth:`forward_fast` with
    :func:`~avsegcli.modeling.deform_gather.gather_bilinear` (:mod:`avsegcli.modeling.impl`), or with
    :func:`ms_deform_attn_accumulate` for ``avseg export`` (:func:`grid_sample_for_export`).
    """

    def __init__(self, *, dim: int = 256, num_levels: int = 3, num_heads: int = 8, num_points: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_levels, self.num_heads, self.num_points = dim, num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        for i in range(self.num_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """
        Args:
            query: ``[N, Lq, C]`` (positional embedding already added).
            reference_points: ``[N, Lq, L, 2]`` (x, y) in [0, 1].
            value: ``[N, S, C]`` the flattened levels.
            spatial_shapes: ``L`` pairs ``(H_l, W_l)`` with sum of H_l * W_l == S.

        Returns:
            ``[N, Lq, C]``.
        """
        v, locations, weights = self._sampling(query, reference_points, value, spatial_shapes)
        return self.output_proj(ms_deform_attn(v.float(), spatial_shapes, locations, weights).to(query.dtype))

    def forward_fast(self, query: Tensor, reference_points: Tensor, value: Tensor,
                     spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """:meth:`forward` (same arguments and shapes, the same function within float rounding), sampling with
        :func:`~avsegcli.modeling.deform_gather.gather_bilinear` at pixel coordinates made straight from the
        reference points and the offsets (which are in pixels: no normalising by ``(W_l, H_l)`` and back), with
        the weights' softmax as elementwise ops (:func:`~avsegcli.modeling.deform_gather.softmax_rows`).
        Coordinates, weights and samples are float32 whatever the working dtype. Under
        :func:`grid_sample_for_export`: :meth:`_sampling` and :func:`ms_deform_attn_accumulate`."""
        if _FOR_EXPORT:
            v, locations, weights = self._sampling(query, reference_points, value, spatial_shapes)
            return self.output_proj(ms_deform_attn_accumulate(v.float(), spatial_shapes, locations, weights).to(query.dtype))
        n, lq, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value).view(n, value.shape[1], m, self.dim // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        weights = softmax_rows(self.attention_weights(query).view(n, lq, m, lv * p)).view(n, lq, m, lv, p)
        ref = reference_points.float()
        coords = []  # per level: x = ref_x * W_l - 0.5 + offset_x, + 1 for the table's frame (y likewise)
        for lvl, (h, w) in enumerate(spatial_shapes):
            start = [(ref[:, :, lvl, i] * size + 0.5)[:, :, None, None] for i, size in enumerate((w, h))]  # [N, Lq, 1, 1]
            coords.append(tuple(torch.add(offsets[:, :, :, lvl, :, i], start[i]) for i in (0, 1)))  # float32 [N, Lq, M, P]
        return self.output_proj(gather_bilinear(v, spatial_shapes, coords, weights).to(query.dtype))

    def _sampling(self, query: Tensor, reference_points: Tensor, value: Tensor,
                  spatial_shapes: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """The sampler's arguments: values ``[N, S, M, D]`` in the working dtype (each sampler computes in
        float32), and in float32 the locations ``[N, Lq, M, L, P, 2]`` and weights ``[N, Lq, M, L, P]``
        (arguments as in :meth:`forward`)."""
        n, lq, _ = query.shape
        s = value.shape[1]
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value).view(n, s, m, self.dim // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, lv * p).float().softmax(-1).view(n, lq, m, lv, p)
        # offsets are in pixels of each level: normalise by (W_l, H_l). The locations and the bilinear sampling are
        # computed in float32 whatever the working dtype (a bf16 location is off by up to a quarter pixel at 64 px).
        normalizer = self._level_normalizer(tuple(spatial_shapes), offsets.device)
        locations = reference_points.float()[:, :, None, :, None, :] + offsets.float() / normalizer[None, None, None, :, None, :]
        return v, locations, weights

    def _level_normalizer(self, spatial_shapes: tuple[tuple[int, int], ...], device: torch.device) -> Tensor:
        """``[L, 2]`` float32 (W_l, H_l), built once per shape and device and kept in this module's cache (no
        host-to-device copy per layer)."""
        key = ("normalizer", tuple((int(h), int(w)) for h, w in spatial_shapes), device)
        cache = module_cache(self)
        norm = cache.get(key)
        if norm is None:
            with torch.inference_mode(False):  # a normal tensor: usable by autograd after an inference-mode call
                norm = torch.tensor([[w, h] for h, w in key[1]], dtype=torch.float32, device=device)
            cache[key] = norm
        return norm
