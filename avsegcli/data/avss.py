"""AVSBench-semantic (AVSS) reader and colour-mask prediction I/O.

Layout (``root/AVSS/``): ``metadata.csv`` (columns ``uid``, ``label`` = subset v1s/v1m/v2, ``split``),
``label2idx.json``, and per clip ``<label>/<uid>/frames/<i>.jpg``, ``audio.wav``, ``labels_rgb/<i>.png``.

Preprocessing as the released ``dataloader/v2_dataset.py``: frames RGB, resized to ``S x S`` with PIL bilinear
(val/test) or short side to ``S`` (``int`` truncation of the long side) then a centre ``S x S`` crop (train);
colour masks RGB, same geometry with nearest, colour -> class id by exact palette match (unknown colours -> 0).
Every clip is padded to 10 frames (zero images, all-background maps). Audio: ``audio.wav`` -> VGGish examples
(0.96 s windows and hop), zero-padded (or truncated) to 10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from avsegcli.data.avsbench import (
    ClipDataset, ClipInfo, check_files_exist, check_split, normalise, open_resized_nearest, read_meta_csv,
    require_rows,
)
from avsegcli.errors import AvsegError
from avsegcli.media.audio import vggish_examples
from avsegcli.palette import AVSS_CLASS_NAMES, NUM_AVSS_CLASSES, colours_to_classes, voc_palette
from avsegcli.tasks import AVSS

AVSS_SUBSETS = ("v1s", "v1m", "v2")
FRAMES_PER_SUBSET = {"v1s": 5, "v1m": 5, "v2": 10}
AVSS_T = AVSS.frames_per_clip  # 10: every clip is padded to this many frames
# official vid_temporal_mask_flag / gt_temporal_mask_flag
FRAME_FLAGS = {"v1s": [1] * 5 + [0] * 5, "v1m": [1] * 5 + [0] * 5, "v2": [1] * 10}
GT_FLAGS = {"v1s": [1] + [0] * 9, "v1m": [1] * 5 + [0] * 5, "v2": [1] * 10}

LogMelFn = Callable[[Path], Any]


def resize_square(img: Image.Image, size: int, resample: int) -> Image.Image:
    """Val/test geometry: resize to ``size x size``."""
    return img.resize((size, size), resample)


def resize_short_crop(img: Image.Image, size: int, resample: int) -> Image.Image:
    """Train geometry: short side to ``size`` (long side ``int(long * size / short)``), then a centre crop."""
    w, h = img.size
    if w > h:
        oh, ow = size, int(1.0 * w * size / h)
    else:
        ow, oh = size, int(1.0 * h * size / w)
    img = img.resize((ow, oh), resample)
    x1 = int(round((ow - size) / 2.0))
    y1 = int(round((oh - size) / 2.0))
    return img.crop((x1, y1, x1 + size, y1 + size))


def colour_mask_to_ids(img: Image.Image, num_classes: int = NUM_AVSS_CLASSES) -> torch.Tensor:
    """RGB colour mask -> ``[H,W]`` int64 class ids (VOC palette, unknown colours -> 0)."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(colours_to_classes(rgb, num_classes))


def _default_log_mel(path: Path) -> Any:
    return vggish_examples(path)


class AVSSDataset(ClipDataset):
    """AVSBench-semantic clips, padded to 10 frames.

    Item (a dict):
        ``frames`` ``[10,3,S,S]`` float32 normalised (zeros on padding); ``log_mel`` ``[10,1,96,64]`` float32
        (absent when ``load_audio=False``); ``masks`` ``[10,S,S]`` int64 class ids (0 on padding);
        ``mask_valid`` ``[10]`` bool (a label file was read); ``frame_valid`` ``[10]`` bool (official
        ``vid_temporal_mask_flag``); ``gt_valid`` ``[10]`` bool (``gt_temporal_mask_flag``); ``name`` (uid),
        ``subset`` (v1s/v1m/v2), ``category`` (''), ``task`` ('avss', its name; ``dataset.task`` is the :class:`~avsegcli.tasks.Task`), ``split`` (str); ``index`` (int).

    ``log_mel_fn(path) -> [n,1,96,64]`` turns ``audio.wav`` into VGGish examples (default
    ``avsegcli.media.vggish_examples``); ``subsets`` selects v1s/v1m/v2 clips.
    """

    task = AVSS

    def __init__(self, root: str | Path, split: str = "test", image_size: int = 224, load_audio: bool = True,
                 subsets: Sequence[str] = AVSS_SUBSETS, log_mel_fn: LogMelFn | None = None,
                 num_classes: int = NUM_AVSS_CLASSES) -> None:
        self.root = Path(root)
        self.split = check_split(split)
        self.image_size = int(image_size)
        self.load_audio = load_audio
        self.num_classes = num_classes
        self.log_mel_fn = log_mel_fn or _default_log_mel
        bad = [s for s in subsets if s not in AVSS_SUBSETS]
        if bad:
            raise AvsegError(f"unknown AVSS subset(s) {', '.join(bad)}; expected {', '.join(AVSS_SUBSETS)}")
        self.subsets = tuple(subsets)
        self.csv_path = self.root / "AVSS" / "metadata.csv"
        self.clips = self._scan()
        require_rows(self.clips, split, self.csv_path)
        check_files_exist([p for c in self.clips for p in c.frame_paths], "frame", self.root)
        check_files_exist([p for c in self.clips for p in c.mask_paths if p is not None], "label", self.root)
        if load_audio:
            check_files_exist([c.audio_path for c in self.clips if c.audio_path], "audio", self.root)

    def _scan(self) -> list[ClipInfo]:
        clips = []
        for row in read_meta_csv(self.csv_path):
            if row["split"] != self.split:
                continue
            uid, subset = row.get("uid"), row.get("label")
            if uid is None or subset is None:
                raise AvsegError("metadata csv needs 'uid' and 'label' columns", path=self.csv_path)
            if subset not in AVSS_SUBSETS:
                raise AvsegError(f"clip {uid} has unknown subset {subset!r}", path=self.csv_path)
            if subset not in self.subsets:
                continue
            d = self.root / "AVSS" / subset / uid
            n = FRAMES_PER_SUBSET[subset]
            n_labels = 1 if (self.split == "train" and subset == "v1s") else n
            clips.append(ClipInfo(
                name=uid, split=self.split, task=self.task, subset=subset,
                frame_paths=[d / "frames" / f"{i}.jpg" for i in range(n)],
                mask_paths=[d / "labels_rgb" / f"{i}.png" if i < n_labels else None for i in range(n)],
                audio_path=d / "audio.wav"))
        return clips

    @property
    def class_names(self) -> list[str]:
        return list(AVSS_CLASS_NAMES[: self.num_classes])

    def _geometry(self, img: Image.Image, resample: int) -> Image.Image:
        if self.split == "train":
            return resize_short_crop(img, self.image_size, resample)
        return resize_square(img, self.image_size, resample)

    def load_frame(self, path: Path) -> torch.Tensor:
        """One frame -> ``[3,S,S]`` float32 normalised."""
        with Image.open(path) as im:
            img = im.convert("RGB")
        return normalise(TF.to_tensor(self._geometry(img, Image.BILINEAR)))

    def load_label(self, path: Path) -> torch.Tensor:
        """One colour mask -> ``[S,S]`` int64 class ids."""
        with Image.open(path) as im:
            img = im.convert("RGB")
        return colour_mask_to_ids(self._geometry(img, Image.NEAREST), self.num_classes)

    def load_log_mel(self, path: Path) -> torch.Tensor:
        """VGGish examples of ``audio.wav``, zero-padded / truncated to ``[10,1,96,64]`` float32."""
        x = torch.as_tensor(self.log_mel_fn(path)).detach().float()
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 96, 64):
            raise AvsegError(f"audio gave VGGish examples of shape {tuple(x.shape)}, expected [n,1,96,64]",
                             path=path)
        out = torch.zeros(AVSS_T, 1, 96, 64)
        n = min(AVSS_T, x.shape[0])
        out[:n] = x[:n]
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        c = self.clips[index]
        s = self.image_size
        frames = torch.zeros(AVSS_T, 3, s, s)
        masks = torch.zeros(AVSS_T, s, s, dtype=torch.int64)
        mask_valid = torch.zeros(AVSS_T, dtype=torch.bool)
        for i, p in enumerate(c.frame_paths):
            frames[i] = self.load_frame(p)
        for i, mp in enumerate(c.mask_paths):
            if mp is not None:
                masks[i] = self.load_label(mp)
                mask_valid[i] = True
        item: dict[str, Any] = {
            "frames": frames, "masks": masks, "mask_valid": mask_valid,
            "frame_valid": torch.tensor(FRAME_FLAGS[c.subset], dtype=torch.bool),
            "gt_valid": torch.tensor(GT_FLAGS[c.subset], dtype=torch.bool),
            "name": c.name, "category": "", "subset": c.subset, "task": str(self.task), "split": self.split,
            "index": index,
        }
        if self.load_audio:
            assert c.audio_path is not None
            item["log_mel"] = self.load_log_mel(c.audio_path)
        return item


# ---------------------------------------------------------------------------------------------------- predictions


def semantic_prediction_paths(pred_root: str | Path, name: str, num_frames: int = AVSS_T) -> list[Path]:
    """Official saved-mask layout: ``pred_root/name/name_<i>.png``, i = 0..num_frames-1."""
    d = Path(pred_root) / name
    return [d / f"{name}_{i}.png" for i in range(num_frames)]


def _palette_image(ids: np.ndarray, num_colours: int = 256) -> Image.Image:
    img = Image.fromarray(ids.astype(np.uint8)).convert("P")  # L -> P keeps the values as indices
    img.putpalette(voc_palette(num_colours).reshape(-1).tolist())
    return img


def save_semantic_prediction(class_ids: torch.Tensor, pred_root: str | Path, name: str,
                             size: tuple[int, int] | None = None) -> list[Path]:
    """Write ``class_ids`` ``[T,H,W]`` as palette PNGs (VOC colours; reads back as the official RGB colours).

    ``size`` ``(width, height)`` resizes with nearest (the official script resized to 360x240 with
    Pillow's default filter, which blends colours; nearest keeps them exact). Returns the paths.
    """
    arr = class_ids.detach().cpu().numpy()
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise ValueError("class ids must be in 0..255")
    paths = semantic_prediction_paths(pred_root, name, arr.shape[0])
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for a, p in zip(arr, paths):
        img = _palette_image(a)
        if size is not None:
            img = img.resize(tuple(size), Image.NEAREST)
        img.save(p, format="PNG")
    return paths


def load_semantic_prediction(pred_root: str | Path, name: str, num_frames: int = AVSS_T,
                             size: int | None = None, num_classes: int = NUM_AVSS_CLASSES) -> torch.Tensor:
    """Read saved colour (RGB or palette) masks -> ``[T,H,W]`` int64 class ids (nearest-resized to ``size``)."""
    paths = semantic_prediction_paths(pred_root, name, num_frames)
    check_files_exist(paths, "predicted mask", Path(pred_root))
    out = []
    for p in paths:
        out.append(colour_mask_to_ids(open_resized_nearest(p, "RGB", size), num_classes))
    return torch.stack(out)
