"""The metadata an exported model carries, and its checks.

Both formats hold string key/value pairs: ONNX's ``metadata_props`` and OpenVINO's ``rt_info`` (under
``avseg``). The keys are :data:`KEYS`; ``config`` is the model's preset dict as JSON, so a run needs nothing but
the file to preprocess its inputs (input size, the frame resize route) and read its outputs (classes, task).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avsegcli import __version__
from avsegcli.errors import AvsegError
from avsegcli.media.preprocess import IMAGENET_MEAN, IMAGENET_STD

FORMAT_VERSION = "1"
FORMATS = ("onnx", "openvino")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
INPUTS = ("frames", "log_mel")
OUTPUT = "logits"
KEYS = ("format_version", "avseg_version", "preset", "task", "num_classes", "image_size", "mean", "std",
        "source_sha256", "source_file", "impl", "opset", "inputs", "outputs", "config")
IO_DOC = {"inputs": "frames [B,3,S,S] float32 ImageNet-normalised RGB; log_mel [B,1,96,64] float32 (VGGish patch of each frame's second)",
          "outputs": "logits [B,K,S,S] float32 (K = num_classes; binary: > 0 is the mask, semantic: argmax)"}


@dataclass(frozen=True)
class ExportMeta:
    """What an exported file says about itself (:func:`describe` makes it, :func:`parse` reads it back)."""

    preset: str
    task: str
    num_classes: int
    image_size: int
    source_sha256: str
    source_file: str
    config: dict[str, Any]
    avseg_version: str = __version__
    opset: int = 18
    impl: str = "reference"

    def to_strings(self) -> dict[str, str]:
        """The key/value pairs written into the file (all strings)."""
        return {"format_version": FORMAT_VERSION, "avseg_version": self.avseg_version, "preset": self.preset,
                "task": self.task, "num_classes": str(self.num_classes), "image_size": str(self.image_size),
                "mean": json.dumps(list(IMAGENET_MEAN)), "std": json.dumps(list(IMAGENET_STD)),
                "source_sha256": self.source_sha256, "source_file": self.source_file, "impl": self.impl,
                "opset": str(self.opset), **IO_DOC, "config": json.dumps(self.config, sort_keys=True)}


def describe(config: dict[str, Any], num_classes: int, sha256: str, source: str | Path, opset: int, impl: str) -> ExportMeta:
    """The metadata of an export of a model with ``config`` (its preset dict) from the checkpoint ``source``."""
    return ExportMeta(preset=str(config.get("name")), task=str(config.get("task") or ("avss" if num_classes > 1 else "s4")),
                      num_classes=int(num_classes), image_size=int(config["image_size"]), source_sha256=sha256,
                      source_file=Path(source).name, config=dict(config), opset=opset, impl=impl)


def parse(pairs: dict[str, str], path: str | Path) -> ExportMeta:
    """:class:`ExportMeta` from a file's key/value pairs; one-line :class:`AvsegError` for a file that was not made
    by ``avseg export`` or by a newer format."""
    if "format_version" not in pairs or "config" not in pairs:
        raise AvsegError("is not an avseg export (no avseg metadata in the file; make one with `avseg export`)", path=path)
    if pairs["format_version"] != FORMAT_VERSION:
        raise AvsegError(f"export format {pairs['format_version']} is not known to avseg {__version__} (knows {FORMAT_VERSION})", path=path)
    try:
        mean, std = json.loads(pairs["mean"]), json.loads(pairs["std"])
        if [round(v, 6) for v in mean] != [round(v, 6) for v in IMAGENET_MEAN] or [round(v, 6) for v in std] != [round(v, 6) for v in IMAGENET_STD]:
            raise AvsegError(f"expects normalisation mean {mean} std {std}; avseg feeds ImageNet's", path=path)
        return ExportMeta(preset=pairs["preset"], task=pairs["task"], num_classes=int(pairs["num_classes"]),
                          image_size=int(pairs["image_size"]), source_sha256=pairs["source_sha256"],
                          source_file=pairs["source_file"], config=json.loads(pairs["config"]),
                          avseg_version=pairs["avseg_version"], opset=int(pairs["opset"]), impl=pairs["impl"])
    except (KeyError, ValueError) as e:
        raise AvsegError(f"avseg metadata is damaged ({type(e).__name__}: {e})", path=path) from None


def check_graph(meta: ExportMeta, frames_shape: list, logits_shape: list, path: str | Path) -> None:
    """The graph's own input/output shapes against its metadata: a file whose graph is another preset's (input
    size or classes) than its metadata says is refused with one line."""
    s, k = meta.image_size, meta.num_classes
    want_in, want_out = [None, 3, s, s], [None, k, s, s]
    if [d if isinstance(d, int) and i else None for i, d in enumerate(frames_shape)] != want_in or \
            [d if isinstance(d, int) and i else None for i, d in enumerate(logits_shape)] != want_out:
        raise AvsegError(f"graph takes frames {frames_shape} and gives logits {logits_shape}, but its metadata says preset "
                         f"{meta.preset} ({k} classes at {s} px): exported for another preset", path=path)


def check_source(meta: ExportMeta, sha256: str, path: str | Path) -> None:
    """A cached export against the checkpoint (``sha256``) it should come from."""
    if meta.source_sha256 != sha256:
        raise AvsegError(f"was exported from {meta.source_file} ({meta.preset}, sha256 {meta.source_sha256[:12]}), not from "
                         f"this checkpoint (sha256 {sha256[:12]})", path=path)
