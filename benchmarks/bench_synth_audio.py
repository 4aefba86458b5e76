"""Does the model listen? The bundled default on a held-out synthetic S4 test split, with the true audio, with
another clip's audio, and with silence.

    .venv/bin/avseg synth --task s4 --out /tmp/synth-test --splits test --split-videos test=200 --seed 1 --no-mp4
    .venv/bin/python benchmarks/bench_synth_audio.py /tmp/synth-test [--weights weights/avseg-synth-s4.safetensors]

Prints the official S4 mIoU / F-score (test batches of 2 clips) for the true audio and for audio taken from the
next clip of the split (a derangement: every clip hears another clip), and the mean predicted sounding area
(fraction of pixels with sigmoid > 0.5) when every second is silent. The held-out split's seed is never used
for training (the bundled model's data is --seed 0; split seeds also differ by split name; see avsegcli/synth).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from avsegcli.data import make_dataset
from avsegcli.media import silence_patch
from avsegcli.metrics import BinaryMetrics
from avsegcli.predictor import Predictor


def score(pred: Predictor, ds, audio_of, batch_clips: int = 2) -> dict[str, float]:
    """Official mIoU/F-score with clip i's frames and ``audio_of(i)`` as its log-mel ``[5,1,96,64]``;
    also the mean predicted area."""
    metrics = BinaryMetrics("official")
    areas = []
    for start in range(0, len(ds), batch_clips):
        idx = list(range(start, min(start + batch_clips, len(ds))))
        items = [ds[i] for i in idx]
        frames = torch.cat([it["frames"] for it in items])
        log_mel = torch.cat([audio_of(i) for i in idx])
        masks = torch.cat([it["masks"] for it in items])
        logits = pred.logits(frames, log_mel, list(range(len(frames))))[:, 0]
        metrics.update(logits, masks)
        areas.append((logits > 0).float().mean(dim=(1, 2)))
    out = metrics.compute()
    return {"miou": out["miou"], "fscore": out["fscore"], "area": torch.cat(areas).mean().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="root of a synthetic S4 dataset with a test split")
    ap.add_argument("--weights", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--split", default="test")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    pred = Predictor(args.weights, device="cpu", batch_size=10)
    ds = make_dataset("s4", args.data, args.split, image_size=pred.image_size)
    n = len(ds)
    true_audio = lambda i: ds[i]["log_mel"]  # noqa: E731
    swapped = lambda i: ds[(i + 1) % n]["log_mel"]  # noqa: E731
    silent = lambda i: silence_patch()[None].expand(5, -1, -1, -1)  # noqa: E731
    res = {"clips": n, "true": score(pred, ds, true_audio), "swapped": score(pred, ds, swapped), "silence": score(pred, ds, silent)}
    res["miou_drop_swapped"] = res["true"]["miou"] - res["swapped"]["miou"]
    print(f"weights {pred.weights} ({pred.config.get('name')}), {n} held-out clips ({args.split})")
    print(f"{'audio':10} {'mIoU':>8} {'F-score':>8} {'area':>8}")
    for k in ("true", "swapped", "silence"):
        r = res[k]
        print(f"{k:10} {r['miou']:8.4f} {r['fscore']:8.4f} {r['area']:8.2%}")
    print(f"mIoU drop with another clip's audio: {res['miou_drop_swapped']:.4f}; mean sounding area with silence: "
          f"{res['silence']['area']:.2%}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
