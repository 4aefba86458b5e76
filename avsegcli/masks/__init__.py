"""Masks of a predicted video: the result type in memory and on disk (:mod:`avsegcli.masks.results`), mask folders
with ``meta.json``, PNGs and ``masks.npz`` (:mod:`avsegcli.masks.io`), COCO RLE (:mod:`avsegcli.masks.rle`)."""
