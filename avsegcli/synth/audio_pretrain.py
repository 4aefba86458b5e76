"""Audio pre-training on a synthetic dataset: the stand-in for VGGish's AudioSet weights.

The released AVSegFormer starts from VGGish trained on AudioSet and keeps it frozen. No such weights exist for a
model of another width, and none can be downloaded here, so the bundled default gets its audio network the same
way in miniature: VGGish (the preset's widths) plus one linear layer learns to name the categories that sound in
each 0.96-s log-mel patch of a synthetic train split (multi-label, binary cross-entropy over the categories; a
silent second has all targets 0). The labels come from ``synth_<task>.json``; only the train split is read, so
the test split stays held out. The result is written as ``features.N.*`` / ``embeddings.N.*`` (the layout of
``vggish-10086976.pth``) and used with ``avseg train --vggish-weights FILE``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avsegcli.build import preset as get_preset
from avsegcli.data.avsbench import S4Dataset, load_log_mel_pickle
from avsegcli.errors import AvsegError
from avsegcli.modeling.vggish import VGGish

Progress = Callable[[int, int, float], None]


def load_labelled_patches(root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every second of every clip of ``split`` of a synthetic S4 dataset: log-mels ``[M, 1, 96, 64]``, multi-hot
    targets ``[M, C]`` (C categories, in the manifest's order) and the category names."""
    root = Path(root)
    manifest = root / "synth_s4.json"
    if not manifest.is_file():
        raise AvsegError("not a synthetic S4 dataset (no synth_s4.json; write one with avseg synth --task s4)", path=root)
    meta = json.loads(manifest.read_text())
    names = [c["name"] for c in meta["categories"]]
    clips = [c for c in meta["clips"] if c["split"] == split]
    if not clips:
        raise AvsegError(f"has no {split} clips", path=manifest)
    reader = S4Dataset(root, split)  # the benchmark's file layout, as every other reader sees it
    audio_paths = {reader.clip_info(i).name: reader.clip_info(i).audio_path for i in range(len(reader))}
    mels, targets = [], []
    for clip in clips:
        mel = load_log_mel_pickle(audio_paths[clip["name"]], clip["seconds"])  # [T, 1, 96, 64]
        target = torch.zeros(clip["seconds"], len(names))
        for t, sounding in enumerate(clip["sounding"]):
            for name in sounding:
                target[t, names.index(name)] = 1.0
        mels.append(mel)
        targets.append(target)
    return torch.cat(mels), torch.cat(targets), names


@torch.no_grad()
def _scores(vggish: VGGish, classifier: nn.Linear, mels: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    vggish.eval()
    logits = torch.cat([classifier(vggish(mels[i:i + 256])) for i in range(0, len(mels), 256)])
    vggish.train()
    pred = logits > 0
    return {"exact": (pred == targets.bool()).all(1).float().mean().item(),
            "bce": nn.functional.binary_cross_entropy_with_logits(logits, targets).item()}


def pretrain_audio(data: str | Path, out: str | Path, *, preset: str = "synth", steps: int = 300, batch_size: int = 64,
                   lr: float = 1e-3, seed: int = 0, progress: Progress | None = None) -> dict[str, Any]:
    """Train the ``preset``'s VGGish to name the sounding categories of ``data``'s train split; save it to ``out``
    (a ``.pth`` state dict). Returns the scores on the train and (when present) val splits:
    ``exact`` = fraction of seconds whose whole multi-hot label is right."""
    torch.manual_seed(seed)
    mels, targets, names = load_labelled_patches(data, "train")
    cfg = get_preset(preset)["vggish"]
    vggish = VGGish(channels=cfg["channels"], hidden_dim=cfg["hidden_dim"], embed_dim=cfg["embed_dim"])
    classifier = nn.Linear(cfg["embed_dim"], len(names))
    params = list(vggish.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(mels), (batch_size,), generator=gen)
        for group in optimizer.param_groups:  # cosine to 0
            group["lr"] = 0.5 * lr * (1 + torch.cos(torch.tensor(torch.pi * step / steps)).item())
        loss = nn.functional.binary_cross_entropy_with_logits(classifier(vggish(mels[idx])), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress:
            progress(step + 1, steps, float(loss.detach()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    torch.save(vggish.state_dict(), tmp)
    tmp.replace(out)
    result: dict[str, Any] = {"out": str(out), "categories": names, "patches": len(mels), "steps": steps,
                              "seconds": round(time.perf_counter() - t0, 1), "train": _scores(vggish, classifier, mels, targets)}
    try:
        vm, vt, _ = load_labelled_patches(data, "val")
        result["val"] = _scores(vggish, classifier, vm, vt)
    except AvsegError:
        pass
    return result
