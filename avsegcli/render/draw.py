"""Drawing one overlay frame: alpha-blended fill, a contour, a class legend, a timestamp and an audio bar.

Everything works on ``[H, W, 3]`` uint8 RGB arrays. A mask is turned once into a :class:`MaskLayer`
(colour per pixel, fill and contour pixels, classes present), which is then blended onto every source
frame that shows that mask, so a mask held for a whole second is prepared once.

Colours: semantic masks use the AVSS (PASCAL VOC) palette of :func:`avsegcli.palette.voc_palette`,
class ``c`` in ``voc_palette()[c]``; binary masks use :data:`BINARY_COLOUR`. The fill is
``(1 - alpha) * frame + alpha * colour`` (alpha in 1/256 steps, integer maths, within 1 of the exact value);
the contour (the mask's boundary pixels, 1 px, 2 px from a 360 px short side up) is drawn in the full
colour. The legend lists the classes present **in the current frame's mask** (not in the whole video),
ordered by class id, at the top left; the timestamp goes top right, the audio bar bottom left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from avsegcli.palette import AVSS_CLASS_NAMES, voc_palette

#: the colour of binary (sounding / not sounding) masks: a bright pink that natural scenes rarely have
BINARY_COLOUR: tuple[int, int, int] = (255, 32, 176)
#: the audio bar maps RMS levels from this many dB below full scale (empty bar) up to 0 dBFS (full bar)
AUDIO_FLOOR_DB = 60.0

_PALETTE = voc_palette(256)


@dataclass
class MaskLayer:
    """One mask, ready to blend onto frames of ``shape (H, W)``.

    ``box = (y0, y1, x0, x1)`` bounds the mask's pixels; ``colour [y1-y0, x1-x0, 3]`` int16 and ``fill`` bool
    are cropped to it. ``edge_idx`` are the flat indices of contour pixels, ``edge_colour [K, 3]`` uint8 their
    colours. ``classes`` are the ids present (background excluded, ascending), ``names`` their legend names.
    """

    shape: tuple[int, int]
    box: tuple[int, int, int, int] | None
    colour: np.ndarray
    fill: np.ndarray
    edge_idx: np.ndarray
    edge_colour: np.ndarray
    classes: list[int]
    names: list[str]
    _weights: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def weight(self, alpha: float) -> np.ndarray:
        """``[h, w, 1]`` int16: ``round(alpha * 256)`` on the fill, 0 elsewhere (cached per alpha)."""
        a = int(round(float(alpha) * 256))
        if a not in self._weights:
            self._weights[a] = (self.fill.astype(np.int16) * a)[..., None]
        return self._weights[a]


def class_name(class_id: int, class_names: Sequence[str] = AVSS_CLASS_NAMES) -> str:
    """Legend name of a class id (``"class 97"`` for an id the name list does not cover)."""
    return class_names[class_id] if 0 <= class_id < len(class_names) else f"class {class_id}"


def contour_width(height: int, width: int) -> int:
    """Contour thickness in pixels: 1, or 2 for frames whose short side is at least 360 px."""
    return 2 if min(height, width) >= 360 else 1


def boundary(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """``[H, W]`` bool: non-zero pixels with a 4-neighbour of another label (the frame edge does not count),
    grown ``width - 1`` px inwards."""
    inside = labels != 0
    pad = np.pad(labels, 1, mode="edge")
    centre = pad[1:-1, 1:-1]
    differs = ((pad[:-2, 1:-1] != centre) | (pad[2:, 1:-1] != centre)
               | (pad[1:-1, :-2] != centre) | (pad[1:-1, 2:] != centre))
    edge = inside & differs
    for _ in range(max(0, width - 1)):
        p = np.pad(edge, 1)
        edge = inside & (edge | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:])
    return edge


def prepare_mask(mask: np.ndarray, *, semantic: bool, contour: bool = True,
                 class_names: Sequence[str] = AVSS_CLASS_NAMES) -> MaskLayer:
    """Colours, fill and contour pixels of one ``[H, W]`` mask (0/1, or class ids when ``semantic``)."""
    mask = np.asarray(mask)
    labels = mask.astype(np.uint8) if semantic else (mask > 0).astype(np.uint8)
    rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
    if rows.size == 0:
        empty = np.zeros(0, np.int64)
        return MaskLayer(labels.shape, None, np.zeros((0, 0, 3), np.int16), np.zeros((0, 0), bool), empty,
                         np.zeros((0, 3), np.uint8), [], [])
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = labels[y0:y1, x0:x1]
    if semantic:
        colour = _PALETTE[crop]
        classes = sorted(int(c) for c in np.unique(crop) if c != 0)
        names = [class_name(c, class_names) for c in classes]
    else:
        colour = np.empty((*crop.shape, 3), dtype=np.uint8)
        colour[...] = BINARY_COLOUR
        classes, names = [1], []
    if contour:
        edge = boundary(labels, contour_width(*labels.shape))
        edge_idx = np.flatnonzero(edge)
        ey, ex = np.divmod(edge_idx, labels.shape[1])
        edge_colour = colour[ey - y0, ex - x0]
    else:
        edge_idx, edge_colour = np.zeros(0, np.int64), np.zeros((0, 3), np.uint8)
    return MaskLayer(labels.shape, (y0, y1, x0, x1), colour.astype(np.int16), crop != 0, edge_idx, edge_colour,
                     classes, names)


def blend(frame: np.ndarray, layer: MaskLayer, alpha: float) -> np.ndarray:
    """A new ``[H, W, 3]`` uint8 image: ``frame`` with the layer's fill blended in (``frame + alpha * (colour -
    frame)``, alpha in 1/256 steps, rounded) and its contour drawn in the full colour."""
    out = frame.copy()
    if layer.box is None:
        return out
    y0, y1, x0, x1 = layer.box
    if alpha > 0:
        sub = frame[y0:y1, x0:x1].astype(np.int16)
        diff = layer.colour - sub
        diff *= layer.weight(alpha)
        diff += 128
        diff >>= 8
        sub += diff
        out[y0:y1, x0:x1] = sub
    if layer.edge_idx.size:
        out.reshape(-1, 3)[layer.edge_idx] = layer.edge_colour
    return out


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont:
    """PIL's bundled default font at ``size`` px (a bitmap font when FreeType is missing)."""
    try:
        return ImageFont.load_default(size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def text_size(height: int, width: int) -> int:
    """Text height in pixels for a frame: 10 px for thumbnails, about 1/30 of the short side above that."""
    return max(10, min(height, width) // 30)


def _paint(img: np.ndarray, box: tuple[int, int, int, int], paint, keep: float = 0.35) -> None:
    """Darken ``box = (x0, y0, x1, y1)`` of ``img`` in place (a readable backdrop), then call
    ``paint(draw, x0, y0)`` to draw on that region only (``draw`` uses region coordinates)."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
    if x1 <= x0 or y1 <= y0:
        return
    region = Image.fromarray((img[y0:y1, x0:x1].astype(np.float32) * keep).astype(np.uint8))
    paint(ImageDraw.Draw(region), x0, y0)
    img[y0:y1, x0:x1] = np.asarray(region)


def _text_width(text: str, fnt) -> int:
    return int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=fnt))


def draw_legend(img: np.ndarray, classes: Sequence[int], names: Sequence[str]) -> np.ndarray:
    """Draw a legend (colour swatch + name per class) at the top left of ``img``, in place; returns ``img``.

    Rows that do not fit the frame height are summarised as ``+N more``.
    """
    if not names:
        return img
    h, w = img.shape[:2]
    size = text_size(h, w)
    fnt, pad = font(size), max(2, size // 4)
    row = size + pad
    fit = max(1, (h - 2 * pad) // row)
    shown = list(zip(classes, names))
    if len(shown) > fit:
        shown, more = shown[: fit - 1], len(shown) - (fit - 1)
    else:
        more = 0
    labels = [n for _, n in shown] + ([f"+{more} more"] if more else [])
    box_w = pad * 3 + size + max(_text_width(t, fnt) for t in labels)

    def paint(draw: ImageDraw.ImageDraw, ox: int, oy: int) -> None:
        for i, text in enumerate(labels):
            y = pad + i * row - oy
            if i < len(shown):
                r, g, b = (int(v) for v in _PALETTE[shown[i][0]])
                draw.rectangle([pad - ox, y, pad + size - 1 - ox, y + size - 1], fill=(r, g, b), outline=(255, 255, 255))
            draw.text((2 * pad + size - ox, y + size // 2), text, font=fnt, fill=(255, 255, 255), anchor="lm")

    _paint(img, (0, 0, box_w, pad + row * len(labels)), paint)
    return img


def format_time(seconds: float) -> str:
    """``mm:ss.ss`` (``h:mm:ss.ss`` from one hour)."""
    seconds = max(0.0, float(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h)}:{int(m):02d}:{s:05.2f}" if h >= 1 else f"{int(m):02d}:{s:05.2f}"


def draw_timestamp(img: np.ndarray, seconds: float) -> np.ndarray:
    """Draw the time ``mm:ss.ss`` at the top right of ``img``, in place; returns ``img``."""
    h, w = img.shape[:2]
    size = text_size(h, w)
    fnt, pad = font(size), max(2, size // 4)
    text = format_time(seconds)

    def paint(draw: ImageDraw.ImageDraw, ox: int, oy: int) -> None:
        draw.text((w - pad - ox, pad + size // 2 - oy), text, font=fnt, fill=(255, 255, 255), anchor="rm")

    _paint(img, (w - _text_width(text, fnt) - 2 * pad, 0, w, size + 2 * pad), paint)
    return img


def level_fraction(rms: float) -> float:
    """Bar fill in [0, 1] for an RMS level: dB relative to a full-scale sine, mapped from -60 dB (0) to 0 dB (1)."""
    if rms <= 0:
        return 0.0
    db = 20.0 * np.log10(rms * np.sqrt(2.0))
    return float(np.clip((db + AUDIO_FLOOR_DB) / AUDIO_FLOOR_DB, 0.0, 1.0))


def audio_bar_box(height: int, width: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the audio bar's inside (bottom left, a quarter of the width)."""
    size = text_size(height, width)
    pad, bar_h = max(2, size // 4), max(4, size // 2)
    x0, y1 = pad + 1, height - pad - 1
    return x0, y1 - bar_h, x0 + max(8, width // 4), y1


def draw_audio_bar(img: np.ndarray, rms: float) -> np.ndarray:
    """Draw a horizontal level bar for ``rms`` (see :func:`level_fraction`) at the bottom left, in place."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = audio_bar_box(h, w)
    fill = int(round(level_fraction(rms) * (x1 - x0)))

    def paint(draw: ImageDraw.ImageDraw, ox: int, oy: int) -> None:
        for x in range(fill):  # green -> amber ramp
            t = x / max(1, x1 - x0 - 1)
            draw.line([(x0 + x - ox, y0 - oy), (x0 + x - ox, y1 - 1 - oy)],
                      fill=(int(80 + 175 * t), int(230 - 60 * t), int(80 - 40 * t)))
        draw.rectangle([x0 - 1 - ox, y0 - 1 - oy, x1 - ox, y1 - oy], outline=(255, 255, 255))

    _paint(img, (x0 - 1, y0 - 1, x1 + 1, y1 + 1), paint, keep=0.25)
    return img


def draw_overlay(frame: np.ndarray, mask: np.ndarray | MaskLayer | None, *, semantic: bool = False, alpha: float = 0.5,
                 contour: bool = True, legend: bool = True, side_by_side: bool = False,
                 timestamp: float | None = None, audio_rms: float | None = None,
                 class_names: Sequence[str] = AVSS_CLASS_NAMES) -> tuple[np.ndarray, list[str]]:
    """One rendered frame: ``(image [H, W(*2), 3] uint8, legend_names)``.

    ``mask`` is ``[H, W]`` (0/1, or class ids when ``semantic``), a prepared :class:`MaskLayer`, or None (no
    overlay). ``legend_names`` are the classes the legend lists: those present in this mask (semantic only;
    binary masks have no legend). With ``side_by_side`` the original frame is on the left, the overlay (with
    legend, timestamp and audio bar) on the right.
    """
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    if mask is None:
        layer = None
    elif isinstance(mask, MaskLayer):
        layer = mask
    else:
        layer = prepare_mask(mask, semantic=semantic, contour=contour, class_names=class_names)
    if layer is not None and tuple(layer.shape) != frame.shape[:2]:
        raise ValueError(f"mask {tuple(layer.shape)} and frame {frame.shape[:2]} differ in size")
    out = blend(frame, layer, alpha) if layer is not None else frame.copy()
    names = list(layer.names) if layer is not None else []
    if legend and names:
        out = draw_legend(out, layer.classes, names)
    if timestamp is not None:
        out = draw_timestamp(out, timestamp)
    if audio_rms is not None:
        out = draw_audio_bar(out, audio_rms)
    if side_by_side:
        out = np.concatenate([frame, out], axis=1)
    return out, names
