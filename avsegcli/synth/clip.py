"""One synthetic audio-visual clip: objects, who sounds when, frames, ground truth and audio.

:func:`render_clip` draws everything from one ``numpy.random.Generator`` (so a seed fixes the clip):

1. 2-4 objects of distinct categories, random sizes (15-30 % of the side), rotations, bouncing paths, a random
   drawing order, over a random background. Paths are redrawn (up to 20 times) until every object shows at least
   half of its area on every ground-truth frame, so a sounding object is never hidden.
2. A schedule ``activity[l, k]`` (object ``k`` sounds in second ``l``) by ``mode``:
   ``single`` (S4, AVSS v1s): one source object per clip; it sounds in second 0 and in each later second with
   probability ``1 - silent_prob`` (about 16 % silent seconds by default); the other objects never sound.
   ``multi`` (MS3, AVSS v1m): one or two objects sound in every second. ``mixed`` (AVSS v2): zero, one or two
   (probabilities 0.15 / 0.5 / 0.35). In ``multi``/``mixed`` the previous second's set is kept with probability
   one half, so sources persist. Which objects sound is independent of their look: categories sound in one clip
   and stay silent in another.
3. Frames at ``fps``: frame ``i`` shows time ``i / fps``. The ground-truth frame of second ``l`` is the
   benchmark's frame ``int(l*F + 15/16*F)`` (``F = fps``; ``l*16 + 15`` at 16 fps); its mask is the visible
   pixels of the objects sounding in second ``l``.
4. Audio (16 kHz): the sounding objects' category sounds, gated per second, plus low background noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avsegcli.media.sampling import benchmark_indices
from avsegcli.synth import scene, sound
from avsegcli.synth.categories import CATEGORIES, Category

MODES = ("single", "multi", "mixed")
MIN_VISIBLE = 0.5
_MIXED_COUNTS = (0.15, 0.5, 0.35)


@dataclass
class SynthClip:
    """A rendered clip. ``T`` seconds, ``K`` objects (drawing order), ``S`` image side.

    ``activity`` ``[T, K]`` bool (object ``k`` sounds in second ``l``); ``gt_indices`` ``[T]`` video frame index
    of each second's ground-truth frame; ``gt_frames`` ``[T, S, S, 3]`` uint8; ``gt_ids`` ``[T, S, S]`` uint8
    (``k + 1`` where object ``k`` is visible); ``video`` ``[T * fps, S, S, 3]`` uint8 or None (not rendered);
    ``audio`` ``[T * 16000]`` int16; ``source`` the source object of a ``single`` clip (else None).
    """

    mode: str
    seconds: int
    fps: int
    image_size: int
    categories: tuple[Category, ...]
    objects: list[scene.SceneObject]
    background: str
    activity: np.ndarray
    gt_indices: np.ndarray
    gt_frames: np.ndarray
    gt_ids: np.ndarray
    video: np.ndarray | None
    audio: np.ndarray
    source: int | None = None

    def object_category(self, k: int) -> Category:
        return self.categories[self.objects[k].category]

    def masks(self) -> np.ndarray:
        """``[T, S, S]`` bool: the visible pixels of the objects sounding in each second."""
        out = np.zeros(self.gt_ids.shape, dtype=bool)
        for l in range(self.seconds):
            for k in np.flatnonzero(self.activity[l]):
                out[l] |= self.gt_ids[l] == k + 1
        return out

    def class_masks(self) -> np.ndarray:
        """``[T, S, S]`` uint8 AVSS class ids of the sounding objects (0 elsewhere)."""
        lut = np.array([0] + [self.object_category(k).avss_id for k in range(len(self.objects))], dtype=np.uint8)
        ids = lut[self.gt_ids]
        ids[~self.masks()] = 0
        return ids

    def sounding(self, second: int) -> list[str]:
        """Category names of the objects sounding in ``second``."""
        return [self.object_category(k).name for k in np.flatnonzero(self.activity[second])]

    @property
    def main_category(self) -> str:
        """The source's category (``single``), else the category that sounds in the most seconds."""
        k = self.source if self.source is not None else int(np.argmax(self.activity.sum(0)))
        return self.object_category(k).name

    def describe(self) -> dict:
        """JSON-able summary: objects (category, size, angle, drawing order), background, per-second sounds."""
        return {
            "mode": self.mode, "seconds": self.seconds, "background": self.background,
            "objects": [{"category": self.object_category(k).name, "size": ob.size, "angle": round(ob.angle, 3)}
                        for k, ob in enumerate(self.objects)],
            "source": None if self.source is None else self.object_category(self.source).name,
            "sounding": [self.sounding(l) for l in range(self.seconds)],
        }


def _schedule(rng: np.random.Generator, mode: str, allowed: np.ndarray, silent_prob: float) -> tuple[np.ndarray, int | None]:
    """``activity [T, K]`` and the source (``single``) from ``allowed [T, K]`` (visible enough)."""
    t, k = allowed.shape
    act = np.zeros((t, k), dtype=bool)
    if mode == "single":
        src = int(rng.integers(k))
        on = rng.random(t) >= silent_prob
        on[0] = True
        act[:, src] = on & allowed[:, src]
        return act, src
    prev: np.ndarray | None = None
    for l in range(t):
        keep = rng.random() < 0.5
        if mode == "multi":
            n = 1 + int(rng.random() < 0.5)
        else:
            n = int(rng.choice(3, p=_MIXED_COUNTS))
        cand = np.flatnonzero(allowed[l])
        if keep and prev is not None and allowed[l, prev].all() and (mode == "mixed" or prev.size):
            chosen = prev
        else:
            chosen = np.sort(rng.choice(cand, size=min(n, cand.size), replace=False)) if cand.size else cand
        act[l, chosen] = True
        prev = chosen
    return act, None


def render_clip(seed: int | np.random.Generator, mode: str = "single", seconds: int = 5, image_size: int = 224,
                fps: int = 16, categories: tuple[Category, ...] = CATEGORIES, num_objects: tuple[int, int] = (2, 4),
                silent_prob: float = 0.2, video: bool = True) -> SynthClip:
    """Render one clip (see the module docstring). ``seed`` is an int (PCG64) or a Generator.

    ``video=False`` renders only the ground-truth frames (no ``video`` array; faster when no mp4 is wanted).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    lo, hi = num_objects
    if not 2 <= lo <= hi <= len(categories):
        raise ValueError(f"num_objects must satisfy 2 <= min <= max <= {len(categories)}, got {num_objects}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.Generator(np.random.PCG64(seed))
    fps, seconds, size = int(fps), int(seconds), int(image_size)
    num_frames = seconds * fps
    gt_idx = benchmark_indices(num_frames, fps)
    count = int(rng.integers(lo, hi + 1))
    cats = rng.choice(len(categories), size=count, replace=False)
    bg, bg_kind = scene.background(rng, size)
    for _ in range(20):
        objects = [scene.make_object(rng, categories[c], int(c), size, num_frames, fps) for c in cats]
        ids = scene.id_maps(objects, gt_idx, size)
        vis = scene.visible_fraction(ids, objects)
        if vis.min() >= MIN_VISIBLE:
            break
    activity, source = _schedule(rng, mode, vis >= MIN_VISIBLE, silent_prob)
    sources = np.stack([sound.category_sound(categories[c].sound, seconds, rng) for c in cats])
    levels = 0.1 * rng.uniform(0.7, 1.3, count)
    wave = sound.mix(sources, activity, levels, float(rng.uniform(0.002, 0.005)), rng)
    gt_frames = scene.render_frames(bg, objects, gt_idx)
    full = scene.render_frames(bg, objects, np.arange(num_frames)) if video else None
    return SynthClip(mode, seconds, fps, size, tuple(categories), objects, bg_kind, activity, gt_idx, gt_frames,
                     ids, full, sound.to_pcm16(wave), source)
