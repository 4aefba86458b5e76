"""``conv3x3(bilinear_upsample(x, s))`` computed at the input's resolution (the fast path of the output convs).

Bilinear upsampling by an integer factor ``s`` (``align_corners=False``) is linear and per channel, and the 3x3
convolution after it is linear, so each of the ``s*s`` output phases (row ``s*i + a``, column ``s*j + b``) is a
3x3 convolution of the input with its own kernel. One convolution with ``s*s*C_out`` output channels over the
input padded by replication (the upsampler's edge clamp is exactly a replicated border), then a pixel shuffle,
gives every output pixel; only the outermost output rows and columns, where the original convolution's zero
padding cuts a tap, are recomputed the original way on thin strips. Same function, ``s*s`` times fewer pixels
through the convolution's memory-bound loops (released head: 0.9 s -> 0.2 s per 512x512 frame on one CPU thread).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsegcli.modeling.cache import module_cache


def _phase_taps(scale: int) -> torch.Tensor:
    """``[s, 3, 3]`` float64: upsampled row ``s*i + a + d`` (d = -1, 0, 1) as weights over input rows ``i + k``
    (k = -1, 0, 1) of the replicate-padded input, from PyTorch's bilinear rule (src = (dst + 0.5) / s - 0.5)."""
    taps = torch.zeros(scale, 3, 3, dtype=torch.float64)
    for a in range(scale):
        for d in (-1, 0, 1):
            u = a + d  # upsampled row relative to s*i
            src = (u + 0.5) / scale - 0.5  # source position relative to row i
            i0 = math.floor(src)
            lam = src - i0
            taps[a, d + 1, i0 + 1] += 1.0 - lam
            if lam:
                taps[a, d + 1, i0 + 2] += lam
    return taps


def _version(t: Tensor) -> int:
    """The in-place version counter (-1 for an inference tensor, which has none: weights loaded under
    ``torch.inference_mode``)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def _phase_kernel(conv: nn.Conv2d, scale: int) -> tuple[Tensor, Tensor | None]:
    """The ``[s*s*O, C, 3, 3]`` kernel (channel ``o*s*s + a*s + b``, the pixel-shuffle order) and bias, kept in
    ``conv``'s own cache per scale, weight version, dtype and device."""
    w = conv.weight
    trains = torch.is_grad_enabled() and w.requires_grad  # then built from the weight each call, differentiably
    key = ("phase", scale, _version(w), w.dtype, w.device)
    cache = module_cache(conv)
    hit = None if trains else cache.get(key)
    if hit is None:
        taps = _phase_taps(scale).to(w.device)
        # E[o, a, b, c, ky, kx] = sum_{dy,dx} W[o, c, dy, dx] taps[a, dy, ky] taps[b, dx, kx]
        e = torch.einsum("ocyx,ayk,bxl->oabckl", w.double(), taps, taps)
        kernel = e.reshape(-1, w.shape[1], 3, 3).to(w.dtype).contiguous(memory_format=torch.channels_last)
        bias = None if conv.bias is None else conv.bias.repeat_interleave(scale * scale)
        hit = (kernel, bias)
        if not trains:
            with torch.inference_mode(False):
                hit = (kernel.detach().clone(), None if bias is None else bias.detach().clone())
            cache.clear()  # one entry: the weights as they are now
            cache[key] = hit
    return hit


def upsample_conv3x3(x: Tensor, conv: nn.Conv2d, scale: int) -> Tensor:
    """``conv(F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False))`` for a 3x3, stride 1,
    padding 1 convolution, computed by phases.

    Args:
        x: ``[N, C, H, W]`` with H, W >= 3; conv: 3x3 ``C -> O``; scale: integer >= 2.
    Returns ``[N, O, s*H, s*W]``.
    """
    h, w = x.shape[-2:]
    kernel, bias = _phase_kernel(conv, scale)
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    out = F.pixel_shuffle(F.conv2d(padded, kernel, bias), scale)  # [N, O, sH, sW]

    def direct(strip: Tensor) -> Tensor:
        return conv(F.interpolate(strip, scale_factor=scale, mode="bilinear", align_corners=False))

    # border rows/columns: the original convolution's zero padding; strips of 3 input rows give 2*s exact rows
    out[:, :, :1] = direct(x[:, :, :3])[:, :, :1]
    out[:, :, -1:] = direct(x[:, :, h - 3:])[:, :, -1:]
    out[:, :, :, :1] = direct(x[:, :, :, :3])[:, :, :, :1]
    out[:, :, :, -1:] = direct(x[:, :, :, w - 3:])[:, :, :, -1:]
    return out


def can_use(x: Tensor, conv: nn.Module, scale: float) -> bool:
    """Whether :func:`upsample_conv3x3` applies (a plain 3x3 convolution, an integer scale >= 2, a map >= 3x3)."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and float(scale).is_integer() and scale >= 2 and min(x.shape[-2:]) >= 3)
