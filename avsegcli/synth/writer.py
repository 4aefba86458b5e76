"""Write synthetic clips in the AVSBench layout (S4, MS3, AVSS) plus one mp4 per clip.

Layouts are those of the real benchmark (see ``avsegcli/data/avsbench.py`` and ``avss.py``), so every reader,
training and evaluation path works on a synthetic root unchanged:

* S4: ``Single-source/s4_meta_data.csv`` (``name, video_id, category, split``; category = the source's),
  ``s4_data/{visual_frames,gt_masks}/<split>/<category>/<name>/<name>_<i>.png`` (masks 0/255; train: i = 1 only),
  ``s4_data/audio_wav/<split>/<category>/<name>.wav``, ``s4_data/audio_log_mel/<split>/<category>/<name>.pkl``.
* MS3: ``Multi-sources/ms3_meta_data.csv`` (``video_id, uid, split``),
  ``ms3_data/visual_frames/<name>/<name>.mp4_<i>.png``, ``ms3_data/gt_masks/<split>/<name>/<name>_<i>.png``,
  ``ms3_data/audio_wav/<split>/<name>.wav``, ``ms3_data/audio_log_mel/<split>/<name>.pkl``.
* AVSS: ``AVSS/metadata.csv`` (``vid, uid, s_min, s_sec, label, split``), ``AVSS/label2idx.json``,
  ``AVSS/<subset>/<uid>/frames/<i>.jpg``, ``labels_rgb/<i>.png`` (VOC colours; train v1s: i = 0 only),
  ``audio.wav``. Subsets: v1s (single source, 5 s), v1m (multi, 5 s), v2 (0-2 sources, 10 s).
* Always: ``videos/<split>/<name>.mp4`` (unless ``mp4=False``) and ``synth_<task>.json`` (settings, seeds,
  categories and every clip's objects and per-second sounding categories).

Log-mels are the benchmark's VGGish framing of the clip's 16-bit wav (:func:`avsegcli.media.vggish_examples`),
so example ``k`` covers 0.96 k .. 0.96 k + 0.975 s, exactly as in the real ``.pkl`` files.

Seeds. The clips of a split come from that split's seed: ``split_seed(seed, split)`` (a SeedSequence of
``[seed, crc32(split)]``, so train, val and test never share a seed) unless ``split_seeds`` gives it. Clip ``k``
uses ``PCG64(SeedSequence([split_seed, task code, subset code, k]))``: adding clips or splits leaves existing
clips unchanged, and the same arguments give byte-identical files.
"""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from avsegcli.media.audio import vggish_examples
from avsegcli.palette import AVSS_CLASS_NAMES, voc_palette
from avsegcli.synth import sound
from avsegcli.synth.categories import CATEGORIES, Category
from avsegcli.synth.clip import SynthClip, render_clip
from avsegcli.synth.media_out import Mp4Job, dump_tensor_pickle, save_jpeg, save_png
from avsegcli.tasks import MS3, S4, TASK_NAMES, Task, task_of

TASKS = TASK_NAMES
SPLITS = ("train", "val", "test")
AVSS_SUBSETS = ("v1s", "v1m", "v2")
#: (mode, seconds) of each kind of clip
CLIP_KINDS = {"s4": ("single", 5), "ms3": ("multi", 5), "v1s": ("single", 5), "v1m": ("multi", 5),
              "v2": ("mixed", 10)}
_TASK_CODES = {"s4": 1, "ms3": 2, "avss": 3}
#: each task's metadata csv, relative to the dataset root
CSV_PATHS = {"s4": "Single-source/s4_meta_data.csv", "ms3": "Multi-sources/ms3_meta_data.csv", "avss": "AVSS/metadata.csv"}
_SUBSET_CODES = {"": 0, "v1s": 1, "v1m": 2, "v2": 3}
FORMAT_VERSION = 1


def split_seed(seed: int, split: str) -> int:
    """The seed of ``split`` derived from the dataset seed: 64 bits of ``SeedSequence([seed, crc32(split)])``."""
    if seed < 0:
        raise ValueError("seed must be >= 0")
    ss = np.random.SeedSequence([int(seed), zlib.crc32(split.encode())])
    return int(ss.generate_state(1, np.uint64)[0])


def clip_rng(split_seed_value: int, task: str | Task, subset: str, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of a split: ``PCG64(SeedSequence([split seed, task, subset, index]))``."""
    ss = np.random.SeedSequence([int(split_seed_value), _TASK_CODES[task_of(task).name], _SUBSET_CODES[subset], int(index)])
    return np.random.Generator(np.random.PCG64(ss))


def clip_name(task: str | Task, split: str, index: int, subset: str = "") -> str:
    """``s4_train_00003``, ``ms3_val_00000``, ``avss_v2_test_00001``."""
    return f"{task}_{subset + '_' if subset else ''}{split}_{index:05d}"


def _log_mel(pcm: np.ndarray):
    return vggish_examples(pcm, sample_rate=sound.SAMPLE_RATE)


def _write_object_clip(root: Path, task: Task, split: str, name: str, clip: SynthClip) -> list[str]:
    """S4 / MS3 files of one clip (frames, masks, pkl; the wav is already there); returns its csv row."""
    masks = clip.masks()
    if task == S4:
        cat = clip.main_category
        data, sub = root / "Single-source" / "s4_data", Path(split, cat)
        frame_dir = data / "visual_frames" / sub / name
        frame_names = [f"{name}_{i}.png" for i in range(1, 6)]
        n_masks = 5  # the benchmark annotates only frame 1 in train; we write all five (readers choose)
        row = [name, name, cat, split]
    else:
        data, sub = root / "Multi-sources" / "ms3_data", Path(split)
        frame_dir = data / "visual_frames" / name
        frame_names = [f"{name}.mp4_{i}.png" for i in range(1, 6)]
        n_masks = 5
        row = [name, name, split]
    for frame, fname in zip(clip.gt_frames, frame_names):
        save_png(frame_dir / fname, frame)
    for i in range(n_masks):
        save_png(data / "gt_masks" / sub / name / f"{name}_{i + 1}.png", masks[i].astype(np.uint8) * 255)
    dump_tensor_pickle(data / "audio_log_mel" / sub / f"{name}.pkl", _log_mel(clip.audio))
    return row


def _write_avss_clip(root: Path, split: str, subset: str, name: str, clip: SynthClip) -> list[Any]:
    """AVSS files of one clip (jpg frames, colour masks; audio.wav is already there); returns its csv row."""
    d = root / "AVSS" / subset / name
    pal = voc_palette(256)
    ids = clip.class_masks()
    for i, frame in enumerate(clip.gt_frames):
        save_jpeg(d / "frames" / f"{i}.jpg", frame)
    n_labels = 1 if (split == "train" and subset == "v1s") else clip.seconds
    for i in range(n_labels):
        save_png(d / "labels_rgb" / f"{i}.png", pal[ids[i]])
    return [name, name, 0, 0, subset, split]


def wav_path(root: Path, task: Task, split: str, name: str, clip: SynthClip, subset: str = "") -> Path:
    """Where :func:`make_clip` writes a clip's wav."""
    if task == S4:
        return root / "Single-source" / "s4_data" / "audio_wav" / split / clip.main_category / f"{name}.wav"
    if task == MS3:
        return root / "Multi-sources" / "ms3_data" / "audio_wav" / split / f"{name}.wav"
    return root / "AVSS" / subset / name / "audio.wav"


def make_clip(root: str | Path, task: str | Task, split: str, index: int, split_seed_value: int, subset: str = "",
              mp4: bool = True, image_size: int = 224, fps: int = 16,
              categories: tuple[Category, ...] = CATEGORIES, crf: int = 16) -> dict[str, Any]:
    """Render clip ``index`` of ``split`` and write its files; returns ``{"row", "name", "split", ...}``."""
    root, task = Path(root), task_of(task)
    mode, seconds = CLIP_KINDS[subset or task.name]
    name = clip_name(task, split, index, subset)
    clip = render_clip(clip_rng(split_seed_value, task, subset, index), mode=mode, seconds=seconds,
                       image_size=image_size, fps=fps, categories=categories, video=mp4)
    job = None
    # the wav first (ffmpeg reads it), then encode in the background while the rest is written
    wav = sound.write_wav(wav_path(root, task, split, name, clip, subset), clip.audio)
    if mp4:
        assert clip.video is not None
        job = Mp4Job(root / "videos" / split / f"{name}.mp4", clip.video, wav, fps, crf)
    try:
        if task.semantic:
            row = _write_avss_clip(root, split, subset, name, clip)
        else:
            row = _write_object_clip(root, task, split, name, clip)
    finally:
        if job is not None:
            job.wait()
    info = clip.describe()
    info.update(name=name, split=split, subset=subset, index=index,
                sounding_seconds=int(clip.activity.any(1).sum()))
    return {"row": row, "info": info}


def write_tables(root: Path, task: Task, rows: list[list[Any]]) -> Path:
    """The task's metadata csv (and AVSS ``label2idx.json``); returns the csv path."""
    path = root / CSV_PATHS[task.name]
    if task == S4:
        header = ["name", "video_id", "category", "split"]
    elif task == MS3:
        header = ["video_id", "uid", "split"]
    else:
        header = ["vid", "uid", "s_min", "s_sec", "label", "split"]
        labels = {n: i for i, n in enumerate(AVSS_CLASS_NAMES)}
        (root / "AVSS" / "label2idx.json").write_text(json.dumps(labels, indent=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    return path


def write_manifest(root: Path, task: Task, manifest: dict[str, Any]) -> Path:
    """``root/synth_<task>.json`` (sorted keys, no timestamps: reproducible)."""
    path = root / f"synth_{task}.json"
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path
