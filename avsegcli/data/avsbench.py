"""AVSBench-object readers (S4 ``Single-source/``, MS3 ``Multi-sources/``), shared helpers and binary prediction I/O.

Layout and preprocessing follow the released AVSegFormer loaders (``dataloader/s4_dataset.py``,
``ms3_dataset.py``):

* frames: PIL open -> RGB -> ``transforms.Resize([S, S])`` (PIL bilinear) -> ``ToTensor`` -> ImageNet normalise;
* masks: S4 opened in PIL mode ``'1'``, MS3 in mode ``'P'`` (as the official loaders do; for the distributed 0/255
  greyscale masks both give exactly 0/1), resized to ``[S, S]`` nearest, ``ToTensor`` (so 0/1 float);
* log-mel: the clip's ``.pkl`` (a pickled torch tensor ``[5,1,96,64]``). The official loader calls
  ``pickle.load``; here a restricted unpickler accepts only torch tensor/storage (and numpy array) reconstruction,
  and the storage bytes are read with ``torch.load(weights_only=True)``, so a dataset file cannot run code.

Every item is a dict (see ``S4Dataset``); ``dataset.clip_info(i)`` gives the file paths.
"""

from __future__ import annotations

import csv
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from avsegcli.errors import AvsegError
from avsegcli.tasks import MS3, S4, Task

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
LOG_MEL_SHAPE = (1, 96, 64)


@dataclass
class ClipInfo:
    """Where one clip's files are. ``mask_paths[i]`` is None for frames without ground truth."""

    name: str
    split: str
    task: Task
    category: str = ""
    subset: str = ""
    frame_paths: list[Path] = field(default_factory=list)
    mask_paths: list[Path | None] = field(default_factory=list)
    audio_path: Path | None = None  # .pkl log-mel (S4/MS3) or audio.wav (AVSS)


# ---------------------------------------------------------------------------------------------------- helpers


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise AvsegError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def read_meta_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a metadata csv as dicts keyed by the header, plus positional keys ``'#0'``, ``'#1'``, ..."""
    if not path.is_file():
        raise AvsegError("metadata csv not found (is --data the AVSBench root?)", path=path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise AvsegError("metadata csv is empty", path=path) from None
        if "split" not in header:
            raise AvsegError(f"metadata csv has no 'split' column (columns: {', '.join(header)})", path=path)
        rows = []
        for values in reader:
            if not values:
                continue
            row = dict(zip(header, values))
            row.update({f"#{i}": v for i, v in enumerate(values)})
            rows.append(row)
    return rows


def require_rows(rows: list[Any], split: str, csv_path: Path) -> None:
    if not rows:
        raise AvsegError(f"no clips in split {split!r}", path=csv_path)


def check_files_exist(paths: Sequence[Path], what: str, root: Path, show: int = 3) -> None:
    """Raise one AvsegError naming the first ``show`` missing files and how many are missing."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        first = ", ".join(str(p) for p in missing[:show])
        more = f" (and {len(missing) - show} more)" if len(missing) > show else ""
        raise AvsegError(f"{len(missing)} {what} file(s) missing: {first}{more}", path=root)


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles tensors/arrays only; the legacy storage bytes go through ``torch.load(weights_only=True)``."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
        ("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return lambda b: torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")
        if (module, name) in self._ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_log_mel_pickle(path: Path, frames: int = 5) -> torch.Tensor:
    """Read an AVSBench ``.pkl`` log-mel file -> float32 ``[frames,1,96,64]``."""
    try:
        with open(path, "rb") as f:
            obj = _TensorUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as e:
        raise AvsegError(f"cannot read log-mel pickle: {e}", path=path) from None
    x = torch.as_tensor(np.asarray(obj)) if isinstance(obj, np.ndarray) else obj
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (frames, *LOG_MEL_SHAPE):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(obj).__name__
        raise AvsegError(f"log-mel pickle holds {shape}, expected ({frames}, 1, 96, 64)", path=path)
    return x.detach().float().contiguous()


def normalise(img: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise a ``[3,H,W]`` tensor in [0,1]."""
    return TF.normalize(img, IMAGENET_MEAN, IMAGENET_STD)


def load_frame(path: Path, size: int) -> torch.Tensor:
    """PIL RGB -> bilinear resize to ``[size,size]`` -> ToTensor -> ImageNet normalise: ``[3,S,S]`` float32."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    img = TF.resize(img, [size, size], interpolation=InterpolationMode.BILINEAR)
    return normalise(TF.to_tensor(img))


def load_binary_mask(path: Path, size: int, mode: str = "1") -> torch.Tensor:
    """PIL ``mode`` ('1' for S4, 'P' for MS3) -> nearest resize -> ToTensor: ``[S,S]`` float32 (0/1)."""
    with Image.open(path) as im:
        img = im.convert(mode)
    img = TF.resize(img, [size, size], interpolation=InterpolationMode.NEAREST)
    return TF.to_tensor(img)[0]


# ---------------------------------------------------------------------------------------------------- datasets


class ClipDataset(Dataset):
    """What every AVSBench reader shares: its :class:`~avsegcli.tasks.Task` in ``task`` (set by each reader) and a
    list of :class:`ClipInfo` in ``self.clips``."""

    task: Task
    clips: list[ClipInfo]

    @property
    def frames_per_clip(self) -> int:
        """Frames (seconds) of one clip as the reader gives it: 5 (S4, MS3), 10 (AVSS, padded)."""
        return self.task.frames_per_clip

    def __len__(self) -> int:
        return len(self.clips)

    def clip_info(self, index: int) -> ClipInfo:
        return self.clips[index]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.clips]


class AVSBenchObject(ClipDataset):
    """Base of ``S4Dataset`` / ``MS3Dataset``: 5 frames per clip, binary masks.

    Item (a dict):
        ``frames`` ``[5,3,S,S]`` float32 normalised; ``log_mel`` ``[5,1,96,64]`` float32 (absent when
        ``load_audio=False``); ``masks`` ``[5,S,S]`` float32 0/1 (zeros where there is no ground truth);
        ``mask_valid`` / ``gt_valid`` ``[5]`` bool (S4 train: frame 0 only); ``frame_valid`` ``[5]`` bool (all
        True); ``name``, ``category`` (S4; '' for MS3), ``subset`` (''), ``task`` (its name), ``split`` (str);
        ``index`` (int). ``dataset.task`` is the :class:`~avsegcli.tasks.Task` (set by each subclass).
    """

    mask_mode = "1"
    csv_path: Path  # set by _scan

    def __init__(self, root: str | Path, split: str = "test", image_size: int = 512,
                 load_audio: bool = True, train_masks: str = "first") -> None:
        if train_masks not in ("first", "all"):
            raise ValueError(f"train_masks must be 'first' (the benchmark's S4 train protocol) or 'all', got {train_masks!r}")
        self.train_masks = train_masks
        self.root = Path(root)
        self.split = check_split(split)
        self.image_size = int(image_size)
        self.load_audio = load_audio
        self.clips = self._scan()
        require_rows(self.clips, split, self.csv_path)
        paths: list[Path] = [p for c in self.clips for p in c.frame_paths]
        check_files_exist(paths, "frame", self.root)
        check_files_exist([p for c in self.clips for p in c.mask_paths if p is not None], "mask", self.root)
        if load_audio:
            check_files_exist([c.audio_path for c in self.clips if c.audio_path], "log-mel", self.root)

    def _scan(self) -> list[ClipInfo]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        c = self.clips[index]
        s, t = self.image_size, self.frames_per_clip
        frames = torch.stack([load_frame(p, s) for p in c.frame_paths])
        masks = torch.zeros(t, s, s)
        mask_valid = torch.zeros(t, dtype=torch.bool)
        for i, p in enumerate(c.mask_paths):
            if p is not None:
                masks[i] = load_binary_mask(p, s, self.mask_mode)
                mask_valid[i] = True
        item: dict[str, Any] = {
            "frames": frames, "masks": masks, "mask_valid": mask_valid, "gt_valid": mask_valid.clone(),
            "frame_valid": torch.ones(t, dtype=torch.bool), "name": c.name, "category": c.category,
            "subset": c.subset, "task": str(self.task), "split": self.split, "index": index,
        }
        if self.load_audio:
            assert c.audio_path is not None
            item["log_mel"] = load_log_mel_pickle(c.audio_path, t)
        return item


class S4Dataset(AVSBenchObject):
    """AVSBench single-source: ``root/Single-source/...`` (see ``AVSBenchObject`` for the item)."""

    task = S4
    mask_mode = "1"

    def _scan(self) -> list[ClipInfo]:
        base = self.root / "Single-source"
        self.csv_path = base / "s4_meta_data.csv"
        data = base / "s4_data"
        clips = []
        for row in read_meta_csv(self.csv_path):
            if row["split"] != self.split:
                continue
            name, cat = row["#0"], row["#2"]
            fdir = data / "visual_frames" / self.split / cat / name
            mdir = data / "gt_masks" / self.split / cat / name
            n_masks = 1 if (self.split == "train" and self.train_masks == "first") else 5
            clips.append(ClipInfo(
                name=name, split=self.split, task=self.task, category=cat,
                frame_paths=[fdir / f"{name}_{i}.png" for i in range(1, 6)],
                mask_paths=[mdir / f"{name}_{i}.png" if i <= n_masks else None for i in range(1, 6)],
                audio_path=data / "audio_log_mel" / self.split / cat / f"{name}.pkl"))
        return clips


class MS3Dataset(AVSBenchObject):
    """AVSBench multi-sources: ``root/Multi-sources/...`` (masks for all 5 frames in every split)."""

    task = MS3
    mask_mode = "P"

    def _scan(self) -> list[ClipInfo]:
        base = self.root / "Multi-sources"
        self.csv_path = base / "ms3_meta_data.csv"
        data = base / "ms3_data"
        clips = []
        for row in read_meta_csv(self.csv_path):
            if row["split"] != self.split:
                continue
            name = row["#0"]
            mdir = data / "gt_masks" / self.split / name
            clips.append(ClipInfo(
                name=name, split=self.split, task=self.task,
                frame_paths=[data / "visual_frames" / name / f"{name}.mp4_{i}.png" for i in range(1, 6)],
                mask_paths=[mdir / f"{name}_{i}.png" for i in range(1, 6)],
                audio_path=data / "audio_log_mel" / self.split / f"{name}.pkl"))
        return clips


# ---------------------------------------------------------------------------------------------------- predictions


def binary_prediction_paths(pred_root: str | Path, name: str, num_frames: int = 5,
                            category: str | None = None) -> list[Path]:
    """Official saved-mask layout: ``pred_root/[category/]name/name_<i>.png``, i = 0..num_frames-1."""
    d = Path(pred_root) / category / name if category else Path(pred_root) / name
    return [d / f"{name}_{i}.png" for i in range(num_frames)]


def save_binary_prediction(masks: torch.Tensor, pred_root: str | Path, name: str,
                           category: str | None = None) -> list[Path]:
    """Write ``masks`` ``[T,H,W]`` (non-zero = object; threshold logits first) as 0/255 PNGs; returns the paths."""
    arr = (masks.detach().cpu().numpy() != 0).astype(np.uint8) * 255
    paths = binary_prediction_paths(pred_root, name, arr.shape[0], category)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for a, p in zip(arr, paths):
        Image.fromarray(a).convert("P").save(p, format="PNG")  # as the official save_mask
    return paths


def open_resized_nearest(path: Path, mode: str, size: int | None) -> Image.Image:
    """A saved prediction PNG converted to ``mode``, nearest-resized to ``size`` x ``size`` when given."""
    with Image.open(path) as im:
        img = im.convert(mode)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.NEAREST)
    return img


def load_binary_prediction(pred_root: str | Path, name: str, num_frames: int = 5, category: str | None = None,
                           size: int | None = None) -> torch.Tensor:
    """Read saved masks -> ``[T,H,W]`` uint8 0/1 (resized nearest to ``size`` when given)."""
    paths = binary_prediction_paths(pred_root, name, num_frames, category)
    check_files_exist(paths, "predicted mask", Path(pred_root))
    out = []
    for p in paths:
        img = open_resized_nearest(p, "L", size)
        out.append(torch.from_numpy((np.asarray(img) >= 128).astype(np.uint8)))
    return torch.stack(out)
