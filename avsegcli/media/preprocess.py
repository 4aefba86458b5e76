"""Frames to model input, resized exactly the way the benchmark made and loaded its frames.

S4 / MS3 checkpoints (``image_size=512, via=224``): AVSBench resized every decoded frame to
224x224 with OpenCV (``cv2.resize``, ``INTER_LINEAR``) and saved a PNG; the loader then resized
that PNG to 512x512 with PIL bilinear. We repeat both steps:

1. :func:`resize_like_cv2` -- OpenCV's ``INTER_LINEAR`` for 8-bit images, re-implemented with
   its integer arithmetic: half-pixel source coordinates ``(d + 0.5) * scale - 0.5`` computed in
   float32, clamped at the borders, 11-bit weights (``round(w * 2048)``), a horizontal pass into
   int32 rows, then the vertical pass as OpenCV's SIMD kernel does it:
   ``((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2 >> 2``. No antialiasing. An exact 2x
   shrink is, as in OpenCV, a 2x2 box average ``(a + b + c + d + 2) >> 2``. (OpenCV itself is
   not a dependency; this follows its ``resize.cpp``.)
2. :func:`resize_like_pil` -- PIL's own ``Image.resize(..., BILINEAR)`` (PIL ships with
   torchvision), rounding to uint8 like the PNG round trip.

AVSS checkpoints (``image_size=224, via=None``): the loader resized the source frame straight to
224x224 with PIL bilinear (which antialiases when shrinking). Aspect ratio is never kept.

Then ``/255`` and ImageNet normalisation (mean 0.485/0.456/0.406, std 0.229/0.224/0.225).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: OpenCV's INTER_RESIZE_COEF_BITS: linear weights are integers out of 2048
CV_COEF_BITS = 11
CV_COEF_SCALE = 1 << CV_COEF_BITS


def as_uint8_nhwc(frames) -> torch.Tensor:
    """``[N, H, W, 3]`` (or one ``[H, W, 3]``) uint8 numpy/torch -> contiguous uint8 torch tensor."""
    t = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be [N, H, W, 3], got {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8, got {t.dtype}")
    return t.contiguous()


def _cv_weights(src: int, dst: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output position: (index0, index1, w0, w1, clamped) with OpenCV's float32/rounding rules."""
    scale = 1.0 / (float(dst) / float(src))  # cv: inv_scale = dst/src; scale = 1/inv_scale (double)
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)  # (float)((dx + 0.5) * scale_x - 0.5)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    clamped = (s < 0) | (s >= src - 1)
    f = np.where(clamped, np.float32(0.0), f).astype(np.float32)
    s = np.clip(s, 0, src - 1)
    # saturate_cast<short>(float) rounds half to even, as np.rint does
    w0 = np.rint((np.float32(1.0) - f) * np.float32(CV_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(CV_COEF_SCALE)).astype(np.int64)
    s1 = np.minimum(s + 1, src - 1)
    return (torch.from_numpy(s), torch.from_numpy(s1), torch.from_numpy(w0), torch.from_numpy(w1),
            torch.from_numpy(clamped))


def _cv_rows(src: int, dst: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vertical taps: like x, but OpenCV does not reset the weight at the borders, it clips rows."""
    scale = 1.0 / (float(dst) / float(src))
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    b0 = np.rint((np.float32(1.0) - f) * np.float32(CV_COEF_SCALE)).astype(np.int64)
    b1 = np.rint(f * np.float32(CV_COEF_SCALE)).astype(np.int64)
    r0 = np.clip(s, 0, src - 1)
    r1 = np.clip(s + 1, 0, src - 1)
    return torch.from_numpy(r0), torch.from_numpy(r1), torch.from_numpy(b0), torch.from_numpy(b1)


def resize_like_cv2(frames, size: tuple[int, int]) -> torch.Tensor:
    """OpenCV ``cv2.resize(img, (w, h), interpolation=INTER_LINEAR)`` on uint8 RGB frames.

    ``frames`` ``[N, H, W, 3]`` uint8 -> ``[N, h, w, 3]`` uint8 with ``size = (h, w)``.
    """
    x = as_uint8_nhwc(frames)
    n, h_in, w_in, _ = x.shape
    h_out, w_out = int(size[0]), int(size[1])
    if (h_in, w_in) == (h_out, w_out):
        return x.clone()
    if w_in == 2 * w_out and h_in == 2 * h_out:  # OpenCV switches to the exact 2x2 area average
        s = x.to(torch.int32)
        total = s[:, 0::2, 0::2] + s[:, 0::2, 1::2] + s[:, 1::2, 0::2] + s[:, 1::2, 1::2]
        return ((total + 2) >> 2).to(torch.uint8)
    xs0, xs1, a0, a1, _ = _cv_weights(w_in, w_out)
    s = x.to(torch.int32)
    a0 = a0.to(torch.int32).view(1, 1, -1, 1)
    a1 = a1.to(torch.int32).view(1, 1, -1, 1)
    rows = s[:, :, xs0] * a0 + s[:, :, xs1] * a1  # [N, H_in, w_out, 3], scale 2048
    r0, r1, b0, b1 = _cv_rows(h_in, h_out)
    b0 = b0.to(torch.int32).view(1, -1, 1, 1)
    b1 = b1.to(torch.int32).view(1, -1, 1, 1)
    top = ((rows[:, r0] >> 4) * b0) >> 16
    bottom = ((rows[:, r1] >> 4) * b1) >> 16
    return ((top + bottom + 2) >> 2).clamp(0, 255).to(torch.uint8)


def resize_like_pil(frames, size: tuple[int, int]) -> torch.Tensor:
    """PIL ``Image.resize((w, h), Image.BILINEAR)`` per frame: ``[N, H, W, 3]`` -> ``[N, h, w, 3]`` uint8.

    PIL's bilinear filter widens with the shrink factor, i.e. it antialiases when downscaling.
    """
    x = as_uint8_nhwc(frames)
    h_out, w_out = int(size[0]), int(size[1])
    out = np.empty((x.shape[0], h_out, w_out, 3), dtype=np.uint8)
    arr = x.numpy()
    for i in range(arr.shape[0]):
        out[i] = np.asarray(Image.fromarray(arr[i]).resize((w_out, h_out), Image.BILINEAR))
    return torch.from_numpy(out)


def normalize_stats(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet ``mean`` and ``std`` as ``[1, 3, 1, 1]`` float32 tensors on ``device`` (make them once and pass
    them to :func:`normalize`: no host-to-device copy per batch)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return mean.to(device), std.to(device)


def normalize(frames_uint8, stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``[N, H, W, 3]`` uint8 -> ``[N, 3, H, W]`` float32: ``(x / 255 - mean) / std``, on the frames' device
    (``stats``: :func:`normalize_stats` of that device, made here when not given)."""
    x = as_uint8_nhwc(frames_uint8).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean, std = stats if stats is not None else normalize_stats(x.device)
    return x.sub_(mean).div_(std).contiguous()


def preprocess_frames(frames, image_size: int, via: int | None = None) -> torch.Tensor:
    """Decoded RGB frames ``[N, H, W, 3]`` uint8 (numpy or torch) -> model input ``[N, 3, S, S]``
    float32 with ``S = image_size``, ImageNet-normalised: ``normalize(resize_frames(...))``.

    ``via=None``: source -> ``S x S`` with PIL bilinear (AVSS: ``image_size=224``).
    ``via=V``: source -> ``V x V`` like ``cv2.resize`` INTER_LINEAR (rounded to uint8, as the
    saved PNG was), then -> ``S x S`` with PIL bilinear (S4/MS3: ``image_size=512, via=224``).
    """
    return normalize(resize_frames(frames, image_size, via))


def resize_frames(frames, image_size: int, via: int | None = None) -> torch.Tensor:
    """The resizing half of :func:`preprocess_frames`: ``[N, H, W, 3]`` uint8 -> ``[N, S, S, 3]`` uint8 (both
    resizes round to uint8, so this is exactly what ``normalize`` then sees; ``avseg run`` ships it to the
    device as is and normalises there)."""
    x = as_uint8_nhwc(frames)
    s = int(image_size)
    if s <= 0 or (via is not None and int(via) <= 0):
        raise ValueError(f"image_size and via must be positive, got {image_size}, {via}")
    if via is not None:
        x = resize_like_cv2(x, (int(via), int(via)))
    if tuple(x.shape[1:3]) != (s, s):
        x = resize_like_pil(x, (s, s))
    return x


def _nearest_index(src: int, dst: int) -> torch.Tensor:
    """Source index of each output position with half-pixel centres: ``floor((d + 0.5) * src / dst)``."""
    d = torch.arange(dst, dtype=torch.float64)
    return ((d + 0.5) * (src / dst)).floor().clamp_(0, src - 1).to(torch.int64)


def resize_masks_back(masks, size: tuple[int, int]) -> torch.Tensor:
    """Resize predictions back to the source frame size ``(H, W)``.

    * integer or bool ``masks`` (label maps / binary masks) ``[N, h, w]`` or ``[N, C, h, w]``:
      nearest neighbour (half-pixel centres, ``nearest-exact``), dtype kept;
    * floating ``masks`` (probabilities or logits), same shapes: bilinear, ``align_corners=False``,
      no antialiasing, dtype kept.

    Returns ``[N, H, W]`` or ``[N, C, H, W]`` as given.
    """
    t = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.asarray(masks))
    if t.ndim not in (3, 4):
        raise ValueError(f"masks must be [N, h, w] or [N, C, h, w], got {tuple(t.shape)}")
    squeeze = t.ndim == 3
    x = t.unsqueeze(1) if squeeze else t
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        out = x.clone()
    elif t.is_floating_point():
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    else:  # gather: exact for any dtype
        rows = _nearest_index(x.shape[-2], size[0])
        cols = _nearest_index(x.shape[-1], size[1])
        out = x[..., rows, :][..., cols]
    return out.squeeze(1) if squeeze else out
