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


def test_module_matches_explicit_loops():
    """MSDeformAttn as a whole (value projection, offsets in pixels of each level normalised by (W_l, H_l) and added
    to the reference points, softmax over levels x points per head, output projection) against the same maths
    written as loops in float64, with random weights so that offsets and weights are not their initial values."""
    from avsegcli.modeling.deform_attn import MSDeformAttn

    torch.manual_seed(0)
    dim, heads, levels, points = 8, 2, 2, 3
    mod = MSDeformAttn(dim=dim, num_levels=levels, num_heads=heads, num_points=points)
    with torch.no_grad():
        for prm in mod.parameters():
            prm.copy_(torch.randn_like(prm) * 0.5)
        mod.sampling_offsets.bias.mul_(4)  # offsets of a few pixels, some leaving the map
    s = sum(h * w for h, w in SHAPES)
    n, lq = 2, 4
    query, value = torch.randn(n, lq, dim), torch.randn(n, s, dim)
    ref = torch.rand(n, lq, levels, 2)
    out = mod(query, ref, value, SHAPES)
    assert out.shape == (n, lq, dim) and out.dtype == torch.float32

    P = {k: v.double() for k, v in mod.state_dict().items()}
    q64, v64, r64 = query.double(), value.double(), ref.double()
    hd = dim // heads
    want = torch.zeros(n, lq, dim, dtype=torch.float64)
    starts = [0, SHAPES[0][0] * SHAPES[0][1]]
    for b in range(n):
        vproj = v64[b] @ P["value_proj.weight"].T + P["value_proj.bias"]  # [S, dim]
        for q in range(lq):
            off = (P["sampling_offsets.weight"] @ q64[b, q] + P["sampling_offsets.bias"]).view(heads, levels, points, 2)
            logit = (P["attention_weights.weight"] @ q64[b, q] + P["attention_weights.bias"]).view(heads, levels * points)
            cat = []
            for m in range(heads):
                w = torch.exp(logit[m]) / torch.exp(logit[m]).sum()  # softmax over levels x points, per head
                acc = torch.zeros(hd, dtype=torch.float64)
                for lvl, (h, wd) in enumerate(SHAPES):
                    img = vproj[starts[lvl]:starts[lvl] + h * wd, m * hd:(m + 1) * hd].T.reshape(hd, h, wd)
                    for pt in range(points):
                        x = r64[b, q, lvl, 0] + off[m, lvl, pt, 0] / wd  # offsets are in pixels of this level
                        y = r64[b, q, lvl, 1] + off[m, lvl, pt, 1] / h
                        acc = acc + w[lvl * points + pt] * _bilinear(img, x, y)
                cat.append(acc)
            want[b, q] = P["output_proj.weight"] @ torch.cat(cat) + P["output_proj.bias"]
    err = float((out.detach().double() - want).abs().max())
    print(f"module vs loops: max abs difference {err:.2e}")
    assert err < 2e-6, err  # float32 module against float64 loops: measured 2.0e-7
