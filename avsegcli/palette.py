"""AVSBench-semantic classes and their colours (the PASCAL VOC colour map, as the benchmark draws masks)."""

from __future__ import annotations

import numpy as np

NUM_AVSS_CLASSES = 71

# Index order of AVSBench-semantic's label2idx.json (0 is background).
AVSS_CLASS_NAMES: tuple[str, ...] = (
    "background", "accordion", "airplane", "axe", "baby", "bassoon", "bell", "bird", "boat", "boy",
    "bus", "car", "cat", "cello", "clarinet", "clipper", "clock", "dog", "donkey", "drum",
    "duck", "elephant", "emergency-car", "erhu", "flute", "frying-food", "girl", "goose", "guitar", "gun",
    "guzheng", "hair-dryer", "handpan", "harmonica", "harp", "helicopter", "hen", "horse", "keyboard", "leopard",
    "lion", "man", "marimba", "missile-rocket", "motorcycle", "mower", "parrot", "piano", "pig", "pipa",
    "saw", "saxophone", "sheep", "sitar", "sorna", "squirrel", "tabla", "tank", "tiger", "tractor",
    "train", "trombone", "truck", "trumpet", "tuba", "ukulele", "utv", "vacuum-cleaner", "violin", "wolf",
    "woman",
)
assert len(AVSS_CLASS_NAMES) == NUM_AVSS_CLASSES


def voc_palette(num_classes: int = 256) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours: bits of the class index spread over R, G, B from the high bit down."""
    out = np.zeros((num_classes, 3), dtype=np.uint8)
    for j in range(num_classes):
        lab, r, g, b, shift = j, 0, 0, 0, 7
        while lab:
            r |= (lab & 1) << shift
            g |= ((lab >> 1) & 1) << shift
            b |= ((lab >> 2) & 1) << shift
            lab >>= 3
            shift -= 1
        out[j] = (r, g, b)
    return out


def colours_to_classes(rgb: np.ndarray, num_classes: int = NUM_AVSS_CLASSES) -> np.ndarray:
    """Map an ``[H, W, 3]`` uint8 colour mask to ``[H, W]`` int64 class ids; unknown colours become 0."""
    pal = voc_palette(num_classes).astype(np.int64)
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    pal_key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(k): i for i, k in reversed(list(enumerate(pal_key)))}
    out = np.zeros(key.shape, dtype=np.int64)
    for k, idx in lut.items():
        if idx:
            out[key == k] = idx
    return out
