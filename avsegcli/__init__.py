"""avseg: find and segment the objects that make sound in a video (AVSegFormer)."""

__version__ = "0.1.0"
