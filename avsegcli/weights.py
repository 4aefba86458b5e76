"""Checkpoints: the authors' released ``.pth`` files (one rename table, strict) and our self-describing format.

Our format is a safetensors file whose metadata holds the model config (``avseg_config``), so a checkpoint
describes itself. Nothing is ever unpickled beyond tensors: ``.pth`` files load with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
import safetensors.torch as safetensors_torch  # called through the module: tests tear its save_file mid-write
from torch import Tensor

from avsegcli.build import Config, build_model, preset
from avsegcli.errors import CheckpointError
from avsegcli.hub import RELEASED, ReleasedCheckpoint, resolve_weights  # noqa: F401  (RELEASED: re-exported)
from avsegcli.modeling import AVSegFormer
from avsegcli.tasks import AVSS, MS3, S4

FORMAT_KEY = "avseg_format"
FORMAT_VERSION = "1"
CONFIG_KEY = "avseg_config"


def _stage(prefix: str, offset: int = -1) -> Callable[[re.Match[str]], str]:
    return lambda m: f"backbone.stages.{int(m.group(1)) + offset}.{prefix}"


# Official key -> our key. Applied in order; each key goes through every rule.
OFFICIAL_RENAMES: tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...] = (
    # ResNet-50: the benchmark's two-branch trunk; branch 1 is torchvision's layer3/layer4.
    (r"^backbone\.layer([34])_1\.", r"backbone.layer\1."),
    # PVTv2 (authors' names) -> timm's PyramidVisionTransformerV2.
    (r"^backbone\.patch_embed1\.", "backbone.patch_embed."),
    (r"^backbone\.patch_embed([234])\.", _stage("downsample.")),
    (r"^backbone\.block([1234])\.(\d+)\.", lambda m: f"backbone.stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"^backbone\.norm([1234])\.", _stage("norm.")),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
)

# Official keys that no forward pass uses: the second ResNet branch of the benchmark's trunk.
OFFICIAL_UNUSED: tuple[str, ...] = (r"^backbone\.layer[34]_2\.",)

# Our keys used only by the intermediate masks (``return_intermediate=True``), not by the plain forward.
INTERMEDIATE_ONLY: tuple[str, ...] = (r"^head\.fpn\.", r"^head\.attn_fc\.")


def rename_official_key(key: str) -> str:
    for pattern, repl in OFFICIAL_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def is_unused_official_key(key: str) -> bool:
    return any(re.search(p, key) for p in OFFICIAL_UNUSED)


def sha256sum(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class LoadReport:
    """What a load did with every key of the file."""

    config: Config
    source_format: str  # "official" or "avseg"
    loaded: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    values_in_file: int = 0
    values_loaded: int = 0
    values_intermediate_only: int = 0
    values_unused: int = 0


def _read_pth(path: Path) -> dict[str, Tensor]:
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # neither torch's zip format nor a legacy pickle
        raise CheckpointError("is neither a PyTorch checkpoint (.pth) nor a safetensors file", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refused globals
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read as a PyTorch checkpoint ({reason[:200]})", path=path) from None
    # accept the usual wrappers around a state dict
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError("is not a state dict of tensors", path=path)
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def detect_official_preset(state: dict[str, Tensor], filename: str = "") -> str:
    """The preset an official state dict matches: backbone and classes from the keys (S4 and MS3 share a layout;
    the file name decides between them, S4 otherwise)."""
    if "backbone.layer3_1.0.conv1.weight" in state:
        backbone = "r50"
    elif "backbone.patch_embed1.proj.weight" in state:
        backbone = "pvt2"
    else:
        raise CheckpointError("has no AVSegFormer backbone keys (backbone.layer3_1.* or backbone.patch_embed1.*)", path=filename or None)
    if "head.fc.4.weight" not in state:
        raise CheckpointError("has no mask head (head.fc.4.weight missing)", path=filename or None)
    num_classes = state["head.fc.4.weight"].shape[0]
    if num_classes == AVSS.num_classes:
        task = AVSS
    elif num_classes == S4.num_classes:
        task = MS3 if "ms3" in Path(filename).name.lower() else S4
    else:
        raise CheckpointError(f"has {num_classes} classes; released models have 1 (S4/MS3) or 71 (AVSS)", path=filename or None)
    return f"{task}-{backbone}"


def _count(tensors: dict[str, Tensor], keys) -> int:
    return sum(tensors[k].numel() for k in keys)


def _strict_assign(model: AVSegFormer, state: dict[str, Tensor], path: Path, looks_like: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                 for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {label} key(s): {shown}")
    if problems:
        raise CheckpointError(f"does not fit {looks_like}: " + "; ".join(problems), path=path)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the state dict does not carry (cannot happen for a strict load, but never run on meta)
        raise CheckpointError(f"left {len(left)} tensor(s) unset: {', '.join(left[:3])}", path=path)


def _build_empty(config: Config) -> AVSegFormer:
    with torch.device("meta"):
        return build_model(config)


def _convert_official(state: dict[str, Tensor], path: Path) -> tuple[Config, dict[str, Tensor], LoadReport]:
    name = detect_official_preset(state, str(path))
    config = preset(name)
    converted: dict[str, Tensor] = {}
    report = LoadReport(config=config, source_format="official", values_in_file=_count(state, state))
    for key, value in state.items():
        if is_unused_official_key(key):
            report.unused.append(key)
            continue
        new = rename_official_key(key)
        if new in converted:
            raise CheckpointError(f"two keys map to {new}", path=path)
        converted[new] = value
        report.loaded.append(key)
    return config, converted, report


def _read_safetensors(path: Path) -> tuple[Config, dict[str, Tensor]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get(FORMAT_KEY) != FORMAT_VERSION or CONFIG_KEY not in meta:
                raise CheckpointError("is a safetensors file without an avseg model config", path=path)
            state = {k: f.get_tensor(k) for k in f.keys()}
        return json.loads(meta[CONFIG_KEY]), state
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read as safetensors ({str(exc)[:200]})", path=path) from None


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_checkpoint(path: str | Path) -> tuple[AVSegFormer, LoadReport]:
    """Load any supported checkpoint into a model on the CPU, strictly; returns the model and a report. ``path``:
    a file, or a registry name (``"s4-pvt2"``: the cached file, downloaded first when missing; see avsegcli.hub)."""
    path = resolve_weights(path)
    if not path.is_file():
        raise CheckpointError("no such checkpoint file", path=path)
    if path.stat().st_size == 0:
        raise CheckpointError("is empty", path=path)
    if _is_safetensors(path):
        config, state = _read_safetensors(path)
        report = LoadReport(config=config, source_format="avseg", loaded=list(state), values_in_file=_count(state, state))
        looks_like = f"its stored config ({config.get('name', 'unnamed')})"
    else:
        config, state, report = _convert_official(_read_pth(path), path)
        looks_like = f"preset {config['name']}"
    model = _build_empty(config)
    _strict_assign(model, state, path, looks_like)
    report.values_loaded = _count(state, state)
    report.values_intermediate_only = _count(state, [k for k in state if any(re.search(p, k) for p in INTERMEDIATE_ONLY)])
    report.values_unused = report.values_in_file - report.values_loaded
    return model.eval(), report


def load_model(path: str | Path, device: str | torch.device = "cpu", impl: str = "fast") -> AVSegFormer:
    """An official ``.pth``, one of ours, or a registry name (``"s4-pvt2"``, fetched once into the cache) -> the model in eval mode on ``device``. ``impl``: ``"fast"`` (default;
    the same function within float rounding, see :meth:`AVSegFormer.set_impl`) or ``"reference"`` (the released
    arithmetic, op for op)."""
    model, _ = read_checkpoint(path)
    return model.to(device).set_impl(impl)


def save_checkpoint(model: AVSegFormer, path: str | Path, extra_metadata: dict[str, str] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write our format (safetensors + config) atomically: a temporary name, then a rename. ``dtype`` (e.g.
    ``torch.float16``) stores the floating-point tensors in that type; loading casts them back to float32."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = {FORMAT_KEY: FORMAT_VERSION, CONFIG_KEY: json.dumps(model.config, sort_keys=True), **(extra_metadata or {})}
    tmp = path.with_name(path.name + ".tmp")
    safetensors_torch.save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """What ``avseg weights info`` prints: preset, classes, value counts, sha256 (``path``: a file or a name)."""
    path = resolve_weights(path)
    model, report = read_checkpoint(path)
    cfg = report.config
    return {
        "path": str(path),
        "format": report.source_format,
        "preset": cfg.get("name"),
        "task": cfg.get("task"),
        "num_classes": cfg["head"]["num_classes"],
        "image_size": cfg.get("image_size"),
        "keys_in_file": len(report.loaded) + len(report.unused),
        "keys_unused": len(report.unused),
        "values_in_file": report.values_in_file,
        "values_used_by_forward": report.values_loaded - report.values_intermediate_only,
        "values_intermediate_only": report.values_intermediate_only,
        "values_unused": report.values_unused,
        "sha256": sha256sum(path),
    }
