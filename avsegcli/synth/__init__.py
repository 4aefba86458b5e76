"""Procedural audio-visual benchmark: bouncing shapes that make category sounds, in the AVSBench layout.

    from avsegcli.synth import generate, render_clip
    summary = generate("s4", "data/synth", videos_per_split=100, seed=0)   # train/val/test + mp4s
    ds = avsegcli.data.make_dataset("s4", "data/synth", "test")            # read back like AVSBench

    clip = render_clip(seed=7, mode="single")          # one clip in memory (SynthClip)
    clip.gt_frames, clip.masks(), clip.audio, clip.video

Modules: :mod:`~avsegcli.synth.categories` (the 8 categories: look + sound), :mod:`~avsegcli.synth.scene`
(shapes, backgrounds, motion, rendering), :mod:`~avsegcli.synth.sound` (category sounds, gating, mixing),
:mod:`~avsegcli.synth.clip` (one clip: who sounds when), :mod:`~avsegcli.synth.writer` (files, seeds),
:mod:`~avsegcli.synth.media_out` (reproducible PNG/pkl/mp4), :mod:`~avsegcli.synth.generate` (a dataset).
"""

from __future__ import annotations

from pathlib import Path

from avsegcli.synth.categories import CATEGORIES, Category, SoundSpec, category_names
from avsegcli.synth.clip import MODES, SynthClip, render_clip
from avsegcli.synth.generate import generate
from avsegcli.synth.media_out import Mp4Job, dump_tensor_pickle
from avsegcli.synth.sound import category_sound, write_wav
from avsegcli.synth.writer import AVSS_SUBSETS, CLIP_KINDS, TASKS, clip_name, clip_rng, make_clip, split_seed


def write_clip_mp4(clip: SynthClip, out: str | Path, wav: str | Path | None = None, crf: int = 16) -> Path:
    """Encode one rendered clip (``render_clip(..., video=True)``) as an H.264 + AAC mp4; returns the path.

    The wav is written beside the mp4 (``<out>.wav``) unless ``wav`` names where to put it.
    """
    if clip.video is None:
        raise ValueError("the clip was rendered with video=False")
    wav_path = write_wav(Path(wav) if wav else Path(str(out) + ".wav"), clip.audio)
    return Mp4Job(Path(out), clip.video, wav_path, clip.fps, crf).wait()


__all__ = [
    "AVSS_SUBSETS", "CATEGORIES", "CLIP_KINDS", "Category", "MODES", "Mp4Job", "SoundSpec", "SynthClip", "TASKS",
    "category_names", "category_sound", "clip_name", "clip_rng", "dump_tensor_pickle", "generate", "make_clip",
    "render_clip", "split_seed", "write_clip_mp4",
]
