"""Initialise a model for training from files the user has (all read with ``torch.load(weights_only=True)``).

* ImageNet backbones: torchvision's ResNet-50 ``.pth`` (``resnet50-19c8e357.pth``/``resnet50-0676ba61.pth``:
  ``conv1.weight``, ``bn1.*``, ``layer1..4.*``; the classifier ``fc.*`` is dropped) or the PVTv2-B5 ``.pth`` of its
  authors (``pvt_v2_b5.pth``: ``patch_embed1.*``, ``block1.*``, ``norm1.*`` ...; the classifier ``head.*`` is
  dropped; names go through :func:`avsegcli.weights.rename_official_key` as ``"backbone." + key``). timm's own
  PVTv2 layout (``patch_embed.*``, ``stages.*``) is accepted as is.
* VGGish: ``vggish-10086976.pth`` (``features.N.*``, ``embeddings.N.*``) -> ``model.vggish``.
* A whole model to fine-tune: ours (``.safetensors``) or the authors' released ``.pth``.

Every load is strict: a file that does not fit raises a ``CheckpointError`` naming the missing, unexpected and
misshapen keys (three of each, and how many).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avsegcli.errors import CheckpointError
from avsegcli.hub import resolve_weights
from avsegcli.modeling import AVSegFormer
from avsegcli.weights import _read_pth, read_checkpoint, rename_official_key


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def strict_load(module: nn.Module, state: dict[str, Tensor], path: str | Path, what: str) -> int:
    """Copy ``state`` into ``module`` if its keys and shapes match exactly; returns the number of values loaded."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
                 for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [f"{len(keys)} {label} key(s): {_show(keys)}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if keys]
    if problems:
        raise CheckpointError(f"does not fit {what}: " + "; ".join(problems), path=path)
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k].to(v.dtype))
    return sum(v.numel() for v in state.values())


def backbone_file_kind(state: dict[str, Tensor]) -> str:
    """'resnet50', 'pvt_v2' (the authors' names), 'pvt_v2_timm', or CheckpointError."""
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return "resnet50"
    if "patch_embed1.proj.weight" in state:
        return "pvt_v2"
    if "patch_embed.proj.weight" in state and any(k.startswith("stages.") for k in state):
        return "pvt_v2_timm"
    raise CheckpointError("is neither a ResNet-50 (conv1.*, layer1.*) nor a PVTv2 (patch_embed1.*, block1.*) "
                          "ImageNet checkpoint", path=None)


def backbone_state(state: dict[str, Tensor]) -> tuple[str, dict[str, Tensor]]:
    """An ImageNet file's state dict -> (kind, our ``model.backbone`` keys); classifier keys dropped."""
    kind = backbone_file_kind(state)
    if kind == "resnet50":
        return "resnet50", {k: v for k, v in state.items() if not k.startswith("fc.")}
    if kind == "pvt_v2_timm":
        return "pvt_v2", {k: v for k, v in state.items() if not k.startswith("head.")}
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.startswith("head."):
            continue
        new = rename_official_key("backbone." + k)
        out[new[len("backbone."):]] = v
    return "pvt_v2", out


def load_backbone_weights(model: AVSegFormer, path: str | Path) -> int:
    """ImageNet weights into ``model.backbone`` (strict after dropping the classifier); returns values loaded.
    ``path``: a file or a registry name (``resnet50``, ``pvt2-b5``)."""
    path = resolve_weights(path, kind="backbone")
    if not path.is_file():
        raise CheckpointError("no such backbone weights file", path=path)
    try:
        kind, state = backbone_state(_read_pth(path))
    except CheckpointError as err:
        raise CheckpointError(err.reason, path=path) from None
    want = model.config.get("backbone", {}).get("kind", "?")
    if kind != want:
        names = {"resnet50": "ResNet-50", "pvt_v2": "PVTv2"}
        raise CheckpointError(f"is a {names.get(kind, kind)} backbone but the model's backbone is "
                              f"{names.get(want, want)}", path=path)
    return strict_load(model.backbone, state, path, f"the model's backbone ({want})")


def load_vggish_weights(model: AVSegFormer, path: str | Path) -> int:
    """``vggish-10086976.pth`` (``features.N.*``, ``embeddings.N.*``; a ``vggish.`` prefix is accepted), or the
    registry name ``vggish``."""
    path = resolve_weights(path, kind="vggish")
    if not path.is_file():
        raise CheckpointError("no such VGGish weights file", path=path)
    state = _read_pth(path)
    if all(k.startswith("vggish.") for k in state):
        state = {k[len("vggish."):]: v for k, v in state.items()}
    return strict_load(model.vggish, state, path, "VGGish (features.N.*, embeddings.N.*)")


def load_init_checkpoint(model: AVSegFormer, path: str | Path) -> int:
    """A whole model (ours or the authors' ``.pth``) into ``model``, strictly."""
    src, _ = read_checkpoint(path)
    if src.num_classes != model.num_classes:
        raise CheckpointError(f"has {src.num_classes} output class(es) but the model being trained has "
                              f"{model.num_classes}", path=path)
    return strict_load(model, src.state_dict(), path, f"model {model.config.get('name', '')}")


def init_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The model config a checkpoint describes (used when ``--init`` is given without ``--preset``)."""
    _, report = read_checkpoint(path)
    return dict(report.config)


def initialise(model: AVSegFormer, *, init: str | None = None, backbone_weights: str | None = None,
               vggish_weights: str | None = None) -> list[str]:
    """Apply ``init`` first, then the backbone and VGGish files; returns warnings for what stays random."""
    warnings = []
    if init:
        load_init_checkpoint(model, init)
    if backbone_weights:
        load_backbone_weights(model, backbone_weights)
    if vggish_weights:
        load_vggish_weights(model, vggish_weights)
    if not init and not backbone_weights:
        warnings.append("no --backbone-weights or --init: the visual backbone starts from random weights")
    if not init and not vggish_weights:
        warnings.append("no --vggish-weights or --init: VGGish is random (and frozen unless --train-vggish), "
                        "so the audio carries little information")
    return warnings
