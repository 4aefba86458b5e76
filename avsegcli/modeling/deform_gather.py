"""The fast path's deformable-attention sampler: bilinear taps as rows of a value table, summed by one embedding bag.

:func:`ms_deform_attn_gather` is :func:`~avsegcli.modeling.deform_attn.ms_deform_attn` (same arguments, the same
function within float rounding; ``tests/test_deform_gather.py`` checks values and gradients in float64 against it).
Every sampling point has four bilinear taps (grid_sample's, ``align_corners=False``). Each tap is a row of a
float32 value table whose levels are framed with zeros (:func:`framed_value_table`), weighted by its bilinear factor
times the point's attention weight; one ``F.embedding_bag(mode="sum")`` gathers and sums the ``L * P * 4`` rows of
every (sample, query, head) into its ``D`` channels, already in the ``[N, Lq, M * D]`` order. Compared with
grid_sample there is no per-level transposed copy of the values, no ``[N*M, D, P, Lq]`` sample tensor and no
output transpose. Pure PyTorch: CPU and GPU, any working dtype, autograd; no host synchronisation.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: Row numbers are computed in float32 while every row number is exact in it (below 2**24), else in float64.
FLOAT32_EXACT = 2**24


def softmax_rows(x: Tensor) -> Tensor:
    """Softmax over the last axis in float32 (float64 stays float64), as elementwise ops and two short reductions:
    ``torch.softmax`` is slow on short rows (the 12 levels x points of a head: 11.4 vs 4.2 ms for 86016 rows on
    2 threads)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    e = (x - x.amax(-1, keepdim=True)).exp_()
    return e / e.sum(-1, keepdim=True)


def framed_value_table(value: Tensor, spatial_shapes: Sequence[tuple[int, int]], dtype: torch.dtype) -> Tensor:
    """``[N, S, M, D]`` -> ``[N * S' * M, D]`` in ``dtype``: each level framed by one pixel of zeros on every side
    (``S' = sum (H_l + 2) (W_l + 2)``), rows ordered (sample, framed pixel, head). A tap outside a map, clamped to
    the frame, reads zero: grid_sample's ``padding_mode="zeros"`` without a bounds test."""
    n, _, m, d = value.shape
    sizes = [(h + 2) * (w + 2) for h, w in spatial_shapes]
    table = value.new_zeros(n, sum(sizes), m * d, dtype=dtype)
    start = first = 0
    for (h, w), size in zip(spatial_shapes, sizes):  # narrow, not split: autograd allows writing into these views
        dst = table.narrow(1, start, size).view(n, h + 2, w + 2, m * d)
        dst[:, 1:-1, 1:-1] = value.narrow(1, first, h * w).reshape(n, h, w, m * d)
        start, first = start + size, first + h * w
    return table.view(-1, d)


def gather_bilinear(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    coords: Sequence[tuple[Tensor, Tensor]],
    attention_weights: Tensor,
) -> Tensor:
    """Sample every level bilinearly at ``coords`` and sum with the attention weights.

    Args:
        value: ``[N, S, M, D]`` in any float dtype (the table is float32, float64 for float64 coordinates).
        spatial_shapes: ``L`` pairs ``(H_l, W_l)``.
        coords: per level ``(x, y)``, each ``[N, Lq, M, P]``, in framed pixels: the centre of pixel ``(i, j)`` of
            the level is at ``x = j + 1, y = i + 1`` (grid_sample's ``x * W - 0.5``, plus the frame's 1).
        attention_weights: ``[N, Lq, M, L, P]``.

    Returns ``[N, Lq, M * D]``. A NaN coordinate gives NaN, not an out-of-range row.
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points = attention_weights.shape
    dtype = torch.promote_types(torch.promote_types(value.dtype, coords[0][0].dtype), torch.float32)
    table = framed_value_table(value, spatial_shapes, dtype)
    exact = dtype if dtype == torch.float64 or table.shape[0] < FLOAT32_EXACT else torch.float64
    dev = value.device
    # a bag of L * 2 * 2 * P taps per (sample, query, head); P innermost, so each write below is runs of P
    rows = torch.empty(n, lq, m, num_levels, 2, 2, num_points, dtype=exact, device=dev)  # taps (y0, y1) x (x0, x1)
    taps = torch.empty(n, lq, m, num_levels, 2, 2, num_points, dtype=dtype, device=dev)
    write_taps = not torch.is_grad_enabled()  # out= has no autograd: with it, slices are assigned instead
    with torch.no_grad():  # [N, 1, M, 1]: the row of each (sample, head) at framed pixel 0
        first = (torch.arange(n, dtype=exact, device=dev).view(n, 1, 1, 1) * (table.shape[0] // n)
                 + torch.arange(m, dtype=exact, device=dev).view(1, 1, m, 1))
    start = 0  # the level's first framed pixel
    for lvl, ((h, w), (x, y)) in enumerate(zip(spatial_shapes, coords)):
        x, y = x.to(dtype), y.to(dtype)
        x0, y0 = x.detach().floor(), y.detach().floor()
        fx, fy = x - x0, y - y0  # the weights of the right and the lower taps
        with torch.no_grad():
            x0, y0, level_first = x0.to(exact), y0.to(exact), first + start * m
            cx = (x0.clamp(0, w + 1).mul_(m), (x0 + 1).clamp_(0, w + 1).mul_(m))
            cy = (torch.add(level_first, y0.clamp(0, h + 1), alpha=(w + 2) * m),
                  torch.add(level_first, (y0 + 1).clamp_(0, h + 1), alpha=(w + 2) * m))
            for i in (0, 1):
                for j in (0, 1):
                    torch.add(cy[i], cx[j], out=rows[:, :, :, lvl, i, j])
        a = attention_weights[:, :, :, lvl].to(dtype)  # [N, Lq, M, P]
        ay1 = a * fy
        ay, gx = (a - ay1, ay1), (1 - fx, fx)
        for i in (0, 1):
            for j in (0, 1):
                if write_taps:
                    torch.mul(ay[i], gx[j], out=taps[:, :, :, lvl, i, j])
                else:
                    taps[:, :, :, lvl, i, j] = ay[i] * gx[j]
        start += (h + 2) * (w + 2)
    index = rows.nan_to_num_(0.0).view(n * lq * m, -1).to(torch.int32 if table.shape[0] < 2**31 else torch.int64)
    out = F.embedding_bag(index, table, per_sample_weights=taps.view(n * lq * m, -1), mode="sum")
    return out.view(n, lq, m * d)


def ms_deform_attn_gather(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """:func:`~avsegcli.modeling.deform_attn.ms_deform_attn` (same arguments: locations ``[N, Lq, M, L, P, 2]``
    (x, y) in [0, 1]; the same result within float rounding) through :func:`gather_bilinear`."""
    coords = [tuple(sampling_locations[:, :, :, lvl, :, i] * size + 0.5 for i, size in enumerate((w, h)))
              for lvl, (h, w) in enumerate(spatial_shapes)]
    return gather_bilinear(value, spatial_shapes, coords, attention_weights)
