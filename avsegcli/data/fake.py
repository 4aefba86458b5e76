"""Tiny AVSBench-layout folders with random content, for tests and demos (deterministic by seed).

``write_fake_avsbench(root, task)`` writes exactly the distributed layout (see ``avsegcli/data/avsbench.py`` and
``avss.py``): metadata csv, PNG (S4/MS3) or JPEG (AVSS) frames, binary 0/255 or VOC-colour masks, pickled
``[5,1,96,64]`` log-mel tensors (S4/MS3, written with ``pickle.dump`` as the benchmark did) and 16-bit 16 kHz
mono wav files. Frame 2 of the first val/test clip of S4/MS3 has an empty mask.
"""

from __future__ import annotations

import csv
import json
import pickle
import wave
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avsegcli.palette import AVSS_CLASS_NAMES, voc_palette
from avsegcli.tasks import S4, TASK_NAMES, Task, task_of

SPLITS = ("train", "val", "test")
S4_CATEGORIES = ("dog_barking", "baby_laughter", "lawn_mowing")
SAMPLE_RATE = 16000


def _write_wav(path: Path, rng: np.random.Generator, seconds: float) -> None:
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    sig = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(n)
    pcm = np.clip(sig * 32767, -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def _write_image(path: Path, rng: np.random.Generator, hw: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)


def _rect(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    y1, x1 = int(rng.integers(y0 + 2, h + 1)), int(rng.integers(x0 + 2, w + 1))
    m = np.zeros(hw, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _write_binary_mask(path: Path, rng: np.random.Generator, hw: tuple[int, int], empty: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(hw, dtype=bool) if empty else _rect(rng, hw)
    Image.fromarray(m.astype(np.uint8) * 255).save(path)  # mode 'L', values 0/255


def _write_log_mel(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(rng.standard_normal((5, 1, 96, 64)).astype(np.float32))
    with open(path, "wb") as f:
        pickle.dump(x, f)


def _write_object(root: Path, task: Task, n: int, rng: np.random.Generator, hw: tuple[int, int]) -> None:
    s4 = task == S4
    base = root / ("Single-source" if s4 else "Multi-sources")
    data = base / ("s4_data" if s4 else "ms3_data")
    rows = []
    for split in SPLITS:
        for k in range(n):
            name = f"fake{task}_{split}_{k:02d}"
            cat = S4_CATEGORIES[k % len(S4_CATEGORIES)]
            rows.append([name, f"{k:05d}", cat, split] if s4 else [name, f"{k:05d}", split])
            sub = Path(split, cat) if s4 else Path(split)
            fdir = data / "visual_frames" / sub / name if s4 else data / "visual_frames" / name
            for i in range(1, 6):
                _write_image(fdir / (f"{name}_{i}.png" if s4 else f"{name}.mp4_{i}.png"), rng, hw)
            n_masks = 1 if (s4 and split == "train") else 5
            for i in range(1, n_masks + 1):
                empty = split != "train" and k == 0 and i == 3
                _write_binary_mask(data / "gt_masks" / sub / name / f"{name}_{i}.png", rng, hw, empty)
            _write_log_mel(data / "audio_log_mel" / sub / f"{name}.pkl", rng)
            _write_wav(data / "audio_wav" / sub / f"{name}.wav", rng, 5.0)
    header = ["name", "video_id", "category", "split"] if s4 else ["video_id", "uid", "split"]
    with open(base / f"{task}_meta_data.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def _write_colour_mask(path: Path, rng: np.random.Generator, hw: tuple[int, int], pal: np.ndarray) -> None:
    ids = np.zeros(hw, dtype=np.int64)
    for cls in rng.integers(1, len(pal), size=2):
        ids[_rect(rng, hw)] = cls
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pal[ids]).save(path)  # RGB colours, as distributed


def _write_avss(root: Path, n: int, rng: np.random.Generator, hw: tuple[int, int]) -> None:
    base = root / "AVSS"
    base.mkdir(parents=True, exist_ok=True)
    pal = voc_palette(len(AVSS_CLASS_NAMES))
    rows = []
    for split in SPLITS:
        for subset, frames in (("v1s", 5), ("v1m", 5), ("v2", 10)):
            for k in range(n):
                uid = f"fake{subset}_{split}_{k:02d}"
                rows.append([f"vid{k}", uid, 0, k, subset, split])
                d = base / subset / uid
                for i in range(frames):
                    path = d / "frames" / f"{i}.jpg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path, quality=90)
                n_labels = 1 if (split == "train" and subset == "v1s") else frames
                for i in range(n_labels):
                    _write_colour_mask(d / "labels_rgb" / f"{i}.png", rng, hw, pal)
                _write_wav(d / "audio.wav", rng, float(frames))
    with open(base / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([["vid", "uid", "s_min", "s_sec", "label", "split"], *rows])
    with open(base / "label2idx.json", "w") as f:
        json.dump({name: i for i, name in enumerate(AVSS_CLASS_NAMES)}, f, indent=1)


def write_fake_avsbench(root: str | Path, task: str | Task = "s4", videos_per_split: int = 2, seed: int = 0,
                        image_hw: tuple[int, int] = (48, 64)) -> Path:
    """Write a tiny dataset for ``task`` ('s4', 'ms3' or 'avss', or its Task) under ``root`` and return ``root``.

    S4/MS3: ``videos_per_split`` clips in each of train/val/test. AVSS: ``videos_per_split`` clips per subset
    (v1s, v1m, v2) in each split. ``image_hw`` is the (height, width) of frames and masks.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    hw = (int(image_hw[0]), int(image_hw[1]))
    if not isinstance(task, Task) and task not in TASK_NAMES:
        raise ValueError(f"task must be 's4', 'ms3' or 'avss', got {task!r}")
    task = task_of(task)
    if task.semantic:
        _write_avss(root, videos_per_split, rng, hw)
    else:
        _write_object(root, task, videos_per_split, rng, hw)
    return root
