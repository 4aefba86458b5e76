"""Mask files: PNG folders with ``meta.json`` and ``masks.npz`` (:mod:`avsegcli.masks.io`), COCO RLE
(:mod:`avsegcli.masks.rle`)."""
