"""Pictures of a synthetic clip: shapes, textures, backgrounds, bouncing motion and frame rendering.

Everything is drawn with hard edges (no anti-aliasing), so an object's ground-truth mask is exactly the set of
pixels its sprite covers after the objects drawn later (on top) have covered theirs. Sprites are rasterised once
per clip (PIL polygons) and pasted with numpy slicing for every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from avsegcli.synth.categories import Category

BACKGROUNDS = ("gradient", "noise", "stripes", "checker")


def _polygon(shape: str) -> list[tuple[float, float]] | None:
    """Unit-circle vertices of a polygonal shape (None for the round ones)."""
    def ring_points(n: int, radius: float = 1.0, start: float = -90.0) -> list[tuple[float, float]]:
        return [(radius * math.cos(math.radians(start + k * 360.0 / n)),
                 radius * math.sin(math.radians(start + k * 360.0 / n))) for k in range(n)]

    if shape == "square":
        return ring_points(4, start=45.0)
    if shape == "triangle":
        return ring_points(3)
    if shape == "hexagon":
        return ring_points(6, start=0.0)
    if shape == "diamond":
        return [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]
    if shape == "star":
        outer, inner = ring_points(5), ring_points(5, 0.45, -54.0)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, b = 0.2, 0.95
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a),
                (-a, -a)]
    return None


def shape_mask(shape: str, size: int, angle_deg: float = 0.0) -> np.ndarray:
    """``[size, size]`` bool mask of ``shape`` filling the square, rotated by ``angle_deg`` (hard edges)."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    c, r = (size - 1) / 2.0, size / 2.0 - 0.5
    if shape in ("circle", "ring"):
        draw.ellipse((0, 0, size - 1, size - 1), fill=255)
        if shape == "ring":
            k = 0.3 * size
            draw.ellipse((k, k, size - 1 - k, size - 1 - k), fill=0)
    else:
        pts = _polygon(shape)
        if pts is None:
            raise ValueError(f"unknown shape {shape!r}")
        ca, sa = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
        draw.polygon([(c + r * (x * ca - y * sa), c + r * (x * sa + y * ca)) for x, y in pts], fill=255)
    return np.asarray(img) > 127


def texture(kind: str, colour: tuple[int, int, int], size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8 paint of a sprite: solid, diagonal stripes or a dot grid."""
    base = np.asarray(colour, dtype=np.float32)
    luminance = float(base @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    contrast = base * 0.5 if luminance > 150 else base + (255.0 - base) * 0.6
    out = np.broadcast_to(base, (size, size, 3)).copy()
    y, x = np.mgrid[0:size, 0:size]
    if kind == "striped":
        period = max(4, size // 5)
        out[((x + y) // max(2, period // 2)) % 2 == 1] = contrast
    elif kind == "dotted":
        period = max(5, size // 4)
        dy, dx = (y % period) - period / 2.0, (x % period) - period / 2.0
        out[dy * dy + dx * dx <= (0.3 * period) ** 2] = contrast
    elif kind != "solid":
        raise ValueError(f"unknown texture {kind!r}")
    return np.clip(out, 0, 255).astype(np.uint8)


def make_sprite(category: Category, size: int, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb [s,s,3] uint8, alpha [s,s] bool)`` of one object, with a dark one-pixel outline."""
    alpha = shape_mask(category.shape, size, angle_deg)
    rgb = texture(category.texture, category.colour, size)
    inside = np.pad(alpha, 1)
    edge = alpha & ~(inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:])
    rgb[edge] = (rgb[edge].astype(np.float32) * 0.35).astype(np.uint8)
    return rgb, alpha


def background(rng: np.random.Generator, size: int, kind: str | None = None) -> tuple[np.ndarray, str]:
    """A random static background ``[size, size, 3]`` uint8 and its kind (one of :data:`BACKGROUNDS`)."""
    kind = kind or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    c1, c2 = rng.uniform(25, 200, 3), rng.uniform(25, 200, 3)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    along = x * math.cos(theta) + y * math.sin(theta)
    if kind == "gradient":
        v = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    elif kind == "noise":
        k = int(rng.integers(3, 9))
        coarse = rng.uniform(0, 1, (k, k)).astype(np.float32)
        v = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
        v = np.clip(v, 0, 1)
    elif kind == "stripes":
        period = size * rng.uniform(0.06, 0.2)
        phase = (along / period) % 1.0
        v = (phase < 0.5).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * np.sin(2 * math.pi * phase)
    elif kind == "checker":
        cell = size * rng.uniform(0.08, 0.22)
        v = ((np.floor(x / cell) + np.floor(y / cell)) % 2).astype(np.float32)
    else:
        raise ValueError(f"unknown background {kind!r}")
    grain = rng.normal(0, 2.5, (size, size, 1))  # luminance grain (survives 4:2:0 chroma subsampling)
    img = c1 + (c2 - c1) * v[..., None] + grain
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), kind


def bounce_path(rng: np.random.Generator, num_frames: int, fps: float, extent: int, image_size: int,
                speed: tuple[float, float] = (0.05, 0.3)) -> np.ndarray:
    """Top-left corners ``[num_frames, 2]`` int (x, y) of a box bouncing inside ``[0, extent]`` at constant speed.

    The start is uniform, the direction uniform, the speed uniform in ``speed`` image sides per second.
    """
    if extent <= 0:
        return np.zeros((num_frames, 2), dtype=np.int64)
    p0 = rng.uniform(0, extent, 2)
    theta = rng.uniform(0, 2 * math.pi)
    v = rng.uniform(*speed) * image_size * np.array([math.cos(theta), math.sin(theta)])
    t = np.arange(num_frames, dtype=np.float64)[:, None] / fps
    u = np.mod(p0 + v * t, 2.0 * extent)  # unfolded position; reflect at both walls
    return np.rint(extent - np.abs(u - extent)).astype(np.int64)


@dataclass
class SceneObject:
    """One object of a clip: its category (index into the clip's category table), sprite and path."""

    category: int
    size: int
    angle: float
    rgb: np.ndarray  # [s, s, 3] uint8
    alpha: np.ndarray  # [s, s] bool
    path: np.ndarray  # [num_frames, 2] int64 top-left (x, y)


def make_object(rng: np.random.Generator, category: Category, index: int, image_size: int, num_frames: int,
                fps: float, size_range: tuple[float, float] = (0.15, 0.3)) -> SceneObject:
    """A randomly sized, rotated object of ``category`` (index ``index``) bouncing around the frame."""
    size = int(round(rng.uniform(*size_range) * image_size))
    size = max(4, min(size, image_size - 1))
    angle = float(rng.uniform(-25, 25))
    rgb, alpha = make_sprite(category, size, angle)
    path = bounce_path(rng, num_frames, fps, image_size - size, image_size)
    return SceneObject(index, size, angle, rgb, alpha, path)


def id_maps(objects: list[SceneObject], frame_indices: np.ndarray, image_size: int) -> np.ndarray:
    """``[N, H, W]`` uint8: ``j + 1`` where object ``j`` (list order = drawing order) is visible, else 0."""
    out = np.zeros((len(frame_indices), image_size, image_size), dtype=np.uint8)
    for n, f in enumerate(frame_indices):
        for j, ob in enumerate(objects):
            x, y = ob.path[f]
            out[n, y:y + ob.size, x:x + ob.size][ob.alpha] = j + 1
    return out


def render_frames(bg: np.ndarray, objects: list[SceneObject], frame_indices: np.ndarray) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 frames: the background with the objects pasted in list order."""
    out = np.empty((len(frame_indices), *bg.shape), dtype=np.uint8)
    for n, f in enumerate(frame_indices):
        out[n] = bg
        for ob in objects:
            x, y = ob.path[f]
            out[n, y:y + ob.size, x:x + ob.size][ob.alpha] = ob.rgb[ob.alpha]
    return out


def visible_fraction(ids: np.ndarray, objects: list[SceneObject]) -> np.ndarray:
    """``[N, K]``: the share of each object's sprite area that is visible in each id map."""
    counts = np.stack([(ids == j + 1).reshape(len(ids), -1).sum(1) for j in range(len(objects))], axis=1)
    areas = np.array([ob.alpha.sum() for ob in objects], dtype=np.float64)
    return counts / np.maximum(areas, 1.0)
