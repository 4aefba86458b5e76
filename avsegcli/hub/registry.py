"""The named weights avseg can fetch: the authors' six AVSegFormer checkpoints and the three training backbones.

One frozen record per file, written out as literals (no lookup of classes by string). Sources, checked on
2025-12 against the repositories themselves:

* AVSegFormer checkpoints: the Google Drive links of the authors' README table (vvvb-github/AVSegFormer,
  README.md at commit 7083cb6 "update checkpoint"), with their mIoU and F-score. Drive publishes no hash: the
  SHA-256 is recorded at the first download and checked on every later load (:mod:`avsegcli.hub.cache`).
* ``resnet50``: torchvision's ImageNet ResNet-50 (the file the authors' configs name, ``resnet50-19c8e357.pth``).
* ``pvt2-b5``: the PVTv2 authors' ImageNet PVTv2-B5 (whai362/PVT, release ``v2``; the URL timm uses too).
* ``vggish``: torchvggish's port of VGGish (harritaylor/torchvggish, release ``v0.1``).

The three backbone file names carry a SHA-256 prefix (``resnet50-19c8e357.pth``), checked as ``torch.hub`` does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MIRROR_ENV = "AVSEG_MIRROR"  # http://host:port/path: fetch every entry from <mirror>/<filename> instead
KINDS = ("avsegformer", "backbone", "vggish")


@dataclass(frozen=True)
class ReleasedCheckpoint:
    """A named weights file. The first five fields are the old ``weights.RELEASED`` record, in the same order.

    ``kind``: ``avsegformer`` (a whole model), ``backbone`` (ImageNet trunk for ``--backbone-weights``) or
    ``vggish`` (``--vggish-weights``). ``sha256``: the full digest when published; ``hash_prefix``: the prefix a
    torch.hub-style file name carries; neither: recorded at first download. ``miou``/``fscore``: the authors'
    published numbers (AVSegFormer entries only).
    """

    filename: str
    preset: str | None
    official_config: str | None
    miou: float | None
    fscore: float | None
    name: str = ""
    kind: str = "avsegformer"
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    hash_prefix: str | None = None
    task: str | None = None
    backbone: str | None = None
    input_size: str = ""

    @property
    def pinned(self) -> bool:
        """Whether a published hash (full or prefix) checks the file before it enters the cache."""
        return bool(self.sha256 or self.hash_prefix)


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/uc?id={file_id}"


REGISTRY: tuple[ReleasedCheckpoint, ...] = (
    ReleasedCheckpoint("AVSegFormer_res50_s4.pth", "s4-r50", "config/s4/AVSegFormer_res50_s4.py", 76.38, 86.7,
                       name="s4-r50", urls=(_drive("1nvIfR-1XZ_BgP8ZSUDuAsGhAwDJRxgC3"),),
                       task="s4", backbone="ResNet-50", input_size="512x512"),
    ReleasedCheckpoint("AVSegFormer_pvt2_s4.pth", "s4-pvt2", "config/s4/AVSegFormer_pvt2_s4.py", 83.06, 90.5,
                       name="s4-pvt2", urls=(_drive("1ZJ55jxoHP1ur-hLBkGcha8sjptE_shfw"),),
                       task="s4", backbone="PVTv2-B5", input_size="512x512"),
    ReleasedCheckpoint("AVSegFormer_res50_ms3.pth", "ms3-r50", "config/ms3/AVSegFormer_res50_ms3.py", 53.81, 65.6,
                       name="ms3-r50", urls=(_drive("1MRk5gQnUtiWwYDpPfB20fO07SVLhfuIV"),),
                       task="ms3", backbone="ResNet-50", input_size="512x512"),
    ReleasedCheckpoint("AVSegFormer_pvt2_ms3.pth", "ms3-pvt2", "config/ms3/AVSegFormer_pvt2_ms3.py", 61.33, 73.0,
                       name="ms3-pvt2", urls=(_drive("1iKTxWtehAgCkNVty-4H1zVyAOaNxipHv"),),
                       task="ms3", backbone="PVTv2-B5", input_size="512x512"),
    ReleasedCheckpoint("AVSegFormer_res50_avss.pth", "avss-r50", "config/avss/AVSegFormer_res50_avss.py", 26.58, 31.5,
                       name="avss-r50", urls=(_drive("1RvL6psDsINuUwd9V1ESgE2Kixh9MXIke"),),
                       task="avss", backbone="ResNet-50", input_size="224x224"),
    ReleasedCheckpoint("AVSegFormer_pvt2_avss.pth", "avss-pvt2", "config/avss/AVSegFormer_pvt2_avss.py", 37.31, 42.8,
                       name="avss-pvt2", urls=(_drive("1P8a2dJSUoW0EqFyxyP8B1-Rnscxnh0YY"),),
                       task="avss", backbone="PVTv2-B5", input_size="224x224"),
    ReleasedCheckpoint("resnet50-19c8e357.pth", None, None, None, None, name="resnet50", kind="backbone",
                       urls=("https://download.pytorch.org/models/resnet50-19c8e357.pth",), hash_prefix="19c8e357",
                       backbone="ResNet-50", input_size="224x224"),
    ReleasedCheckpoint("pvt_v2_b5.pth", None, None, None, None, name="pvt2-b5", kind="backbone",
                       urls=("https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b5.pth",),
                       backbone="PVTv2-B5", input_size="224x224"),
    ReleasedCheckpoint("vggish-10086976.pth", None, None, None, None, name="vggish", kind="vggish",
                       urls=("https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",),
                       hash_prefix="10086976", backbone="VGGish", input_size="96x64 log-mel"),
)

#: the authors' six released AVSegFormer checkpoints (``avsegcli.weights.RELEASED``)
RELEASED: tuple[ReleasedCheckpoint, ...] = tuple(e for e in REGISTRY if e.kind == "avsegformer")


def names(kind: str | None = None) -> list[str]:
    """Every registry name (of one ``kind`` when given), in table order."""
    return [e.name for e in REGISTRY if kind is None or e.kind == kind]


def lookup(name: str) -> ReleasedCheckpoint | None:
    """The entry called ``name`` (case-insensitive), or None."""
    key = name.strip().lower()
    return next((e for e in REGISTRY if e.name == key), None)


def source_urls(entry: ReleasedCheckpoint) -> tuple[str, ...]:
    """Where to fetch ``entry`` from: ``$AVSEG_MIRROR/<filename>`` when that is set, else its own URLs."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return (f"{mirror.rstrip('/')}/{entry.filename}",)
    return entry.urls


_DRIVE_ID = re.compile(r"^https://drive\.google\.com/(?:uc\?(?:export=download&)?id=|file/d/)([\w-]+)")


def drive_id(url: str) -> str | None:
    """The Google Drive file id of a ``drive.google.com`` URL (``uc?id=`` or ``file/d/``), else None."""
    m = _DRIVE_ID.match(url)
    return m.group(1) if m else None


def page_url(url: str) -> str:
    """The URL a person opens to fetch the file by hand (Drive: the file's page)."""
    fid = drive_id(url)
    return f"https://drive.google.com/file/d/{fid}/view" if fid else url
