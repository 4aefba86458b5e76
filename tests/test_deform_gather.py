"""The fast path's embedding-bag sampler against the reference grid_sample sampler: values, gradients, edges."""

from __future__ import annotations

import copy

import pytest
import torch

import avsegcli.modeling.deform_gather as dg
from avsegcli.modeling.deform_attn import MSDeformAttn, ms_deform_attn
from avsegcli.modeling.deform_gather import framed_value_table, ms_deform_attn_gather, softmax_rows

SHAPES = [(6, 5), (3, 3), (2, 1)]


def _inputs(seed: int, dtype=torch.float64, lq: int = 7):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(2, s, 4, 3, generator=g, dtype=dtype)
    loc = torch.rand(2, lq, 4, len(SHAPES), 2, 2, generator=g, dtype=dtype) * 1.4 - 0.2  # some points outside the map
    weights = torch.rand(2, lq, 4, len(SHAPES), 2, generator=g, dtype=dtype)
    return value, loc, weights


def test_values_and_gradients_equal_the_reference():
    value, loc, weights = (t.requires_grad_() for t in _inputs(0))
    ref = ms_deform_attn(value, SHAPES, loc, weights)
    got = ms_deform_attn_gather(value, SHAPES, loc, weights)
    assert got.shape == ref.shape == (2, 7, 12) and got.dtype == torch.float64
    assert (got - ref).abs().max() < 1e-13  # measured 1.2e-15
    cot = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((ref * cot).sum(), (value, loc, weights)),
                    torch.autograd.grad((got * cot).sum(), (value, loc, weights))):
        assert a.abs().sum() > 0 and (a - b).abs().max() < 1e-12  # measured 1.6e-14


def test_edges_of_the_maps_read_zeros_as_grid_sample_does():
    """Points on the borders (0 and 1), on pixel centres, on the centre of the pixel outside, and far outside."""
    value, _, weights = _inputs(1, lq=6)
    loc = torch.empty(2, 6, 4, len(SHAPES), 2, 2, dtype=torch.float64)
    for lvl, (h, w) in enumerate(SHAPES):
        xs = torch.tensor([0.0, 1.0, 0.5 / w, 1 - 0.5 / w, -0.5 / w, 7.0], dtype=torch.float64)
        ys = torch.tensor([1.0, 0.0, 0.5 / h, -3.0, 1 + 0.5 / h, 0.5], dtype=torch.float64)
        loc[:, :, :, lvl, :, 0] = xs.view(1, 6, 1, 1)
        loc[:, :, :, lvl, :, 1] = ys.view(1, 6, 1, 1)
    ref = ms_deform_attn(value, SHAPES, loc, weights)
    got = ms_deform_attn_gather(value, SHAPES, loc, weights)
    assert (got - ref).abs().max() < 1e-13
    assert ref[:, 3:].abs().max() == 0  # a pixel centre outside the map, or farther: zeros
    assert (ref[:, :3].abs() > 0).all()  # the borders and the centres read the map


def test_reduced_precision_values_are_sampled_in_float32():
    value, loc, weights = _inputs(2, dtype=torch.float32)
    got = ms_deform_attn_gather(value.bfloat16(), SHAPES, loc, weights)
    assert got.dtype == torch.float32
    assert torch.equal(got, ms_deform_attn_gather(value.bfloat16().float(), SHAPES, loc, weights))
    assert framed_value_table(value.half(), SHAPES, torch.float32).dtype == torch.float32


def test_row_numbers_past_float32_exactness_are_computed_in_float64(monkeypatch):
    value, loc, weights = _inputs(3, dtype=torch.float32)
    want = ms_deform_attn(value, SHAPES, loc, weights)
    monkeypatch.setattr(dg, "FLOAT32_EXACT", 0)
    got = ms_deform_attn_gather(value, SHAPES, loc, weights)
    assert (got - want).abs().max() < 1e-5


def test_nan_location_gives_nan_where_the_reference_does_and_nothing_else():
    value, loc, weights = _inputs(4, dtype=torch.float32)
    loc[0, 2, 1, 0, 0, 0] = float("nan")
    loc[1, 3, 0, 2, 1, 1] = float("inf")
    ref = ms_deform_attn(value, SHAPES, loc, weights)
    got = ms_deform_attn_gather(value, SHAPES, loc, weights)
    assert torch.equal(got.isnan(), ref.isnan()) and got[0, 2, 3:6].isnan().all()
    finite = ~ref.isnan()
    assert (got[finite] - ref[finite]).abs().max() < 1e-5


def test_softmax_rows_equals_softmax_and_is_stable():
    x = torch.randn(50, 12, dtype=torch.float64, requires_grad=True)
    got, ref = softmax_rows(x), torch.softmax(x, -1)
    assert got.dtype == torch.float64 and (got - ref).abs().max() < 1e-15
    cot = torch.randn_like(ref)
    assert (torch.autograd.grad((got * cot).sum(), x)[0] - torch.autograd.grad((ref * cot).sum(), x)[0]).abs().max() < 1e-14
    big = torch.tensor([[1e4, 0.0, -1e4], [3e38, 3e38, 0.0]]).bfloat16()
    out = softmax_rows(big)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.allclose(out, torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_module_fast_path_equals_reference(dtype):
    """MSDeformAttn.forward_fast (pixel coordinates straight from reference points and pixel offsets) against
    forward, with random weights (offsets of a few pixels, some leaving the map): values and gradients."""
    torch.manual_seed(0)
    ref = MSDeformAttn(dim=16, num_levels=3, num_heads=4, num_points=2).to(dtype)
    with torch.no_grad():
        for prm in ref.parameters():
            prm.copy_(torch.randn_like(prm) * 0.5)
        ref.sampling_offsets.bias.mul_(4)
    fast = copy.deepcopy(ref)
    fast.forward = fast.forward_fast
    s = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(2, 5, 16, dtype=dtype), torch.randn(2, s, 16, dtype=dtype)
    points = torch.rand(2, 5, 3, 2, dtype=dtype)
    want, got = ref(query, points, value, SHAPES), fast(query, points, value, SHAPES)
    # the reference computes its locations in float32 whatever the input dtype (measured 3.3e-6 for float64)
    assert got.dtype == dtype and (got - want).abs().max() < 1e-5
    want.square().sum().backward()
    got.square().sum().backward()
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        assert (a.grad - b.grad).abs().max() <= 1e-3 * max(1.0, a.grad.abs().max()), name
