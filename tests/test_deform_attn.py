"""The grid_sample deformable attention against explicit bilinear sampling loops: values and gradients."""

from __future__ import annotations

import math

import torch

from avsegcli.modeling.deform_attn import ms_deform_attn

SHAPES = [(3, 4), (2, 5)]


def _bilinear(img: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """img [D, H, W]; (x, y) normalised in [0, 1]; zero outside; pixel centres at (i + 0.5) / size."""
    d, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px.item()), math.floor(py.item())
    out = img.new_zeros(d)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                wgt = (1 - (px - xx).abs()) * (1 - (py - yy).abs())
                out = out + wgt * img[:, yy, xx]
    return out


def _reference(value, shapes, loc, attn):
    n, _, m, d = value.shape
    _, lq, _, nl, npnt, _ = loc.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = []
    for b in range(n):
        rows = []
        for q in range(lq):
            heads = []
            for head in range(m):
                acc = value.new_zeros(d)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl]:starts[lvl + 1], head].T.reshape(d, h, w)
                    for p in range(npnt):
                        x, y = loc[b, q, head, lvl, p]
                        acc = acc + attn[b, q, head, lvl, p] * _bilinear(img, x, y)
                heads.append(acc)
            rows.append(torch.cat(heads))
        out.append(torch.stack(rows))
    return torch.stack(out)


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    n, lq, m, d, npnt = 2, 3, 2, 4, 3
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64, requires_grad=True)
    # some locations fall outside [0, 1] to exercise the zero padding
    loc = (torch.rand(n, lq, m, len(SHAPES), npnt, 2, generator=g, dtype=torch.float64) * 1.3 - 0.15).requires_grad_()
    attn = torch.rand(n, lq, m, len(SHAPES), npnt, generator=g, dtype=torch.float64)
    attn = (attn / attn.sum((-1, -2), keepdim=True)).requires_grad_()
    return value, loc, attn


def test_values_match_explicit_loops():
    for seed in range(3):
        value, loc, attn = _inputs(seed)
        fast = ms_deform_attn(value, SHAPES, loc, attn)
        slow = _reference(value, SHAPES, loc, attn)
        assert fast.shape == (2, 3, 8)
        torch.testing.assert_close(fast, slow, atol=1e-10, rtol=1e-10)


def test_gradients_match_explicit_loops():
    value, loc, attn = _inputs(7)
    weights = torch.randn(2, 3, 8, dtype=torch.float64)
    g_fast = torch.autograd.grad((ms_deform_attn(value, SHAPES, loc, attn) * weights).sum(), (value, loc, attn))
    g_slow = torch.autograd.grad((_reference(value, SHAPES, loc, attn) * weights).sum(), (value, loc, attn))
    for a, b in zip(g_fast, g_slow):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_float32_and_module_shapes():
    from avsegcli.modeling.deform_attn import MSDeformAttn

    attn = MSDeformAttn(dim=16, num_levels=2, num_heads=2, num_points=3)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(2, s, 16)
    ref = torch.rand(2, s, 2, 2)
    out = attn(value, ref, value, SHAPES)
    assert out.shape == (2, s, 16) and out.dtype == torch.float32
