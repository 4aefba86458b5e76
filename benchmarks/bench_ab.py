"""The model's forward at two or more git revisions, in one process, timed alternately: frames/s of each.

    .venv/bin/python benchmarks/bench_ab.py --revs 4b2f89e,. --preset s4-r50 --mode bf16 --rounds 12
    .venv/bin/python benchmarks/bench_ab.py --revs 4b2f89e,. --preset avss-pvt2 --mode bf16 --rounds 12

Separate processes, or runs minutes apart, differ by up to 10% on a shared machine; an A/B measured this way
does not. Each revision's ``avsegcli/`` is taken with ``git archive`` (``.`` is the working tree) and imported in
turn; each builds the preset with the same seed (random weights), in the fast impl, cast once to bf16 for
``--mode bf16`` (what ``--precision auto`` runs on CPUs with native bf16) or left in fp32. The same frames and
audio embedding go through every model; rounds alternate the order (A B, B A, ...). Printed per revision: the best
and the median frames/s, the median's ratio to the first revision, and the logits' sum (the same within each
precision's rounding). Printed only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def checkout(rev: str, dest: Path) -> Path:
    """The directory holding ``rev``'s ``avsegcli`` package (``.``: this working tree)."""
    if rev == ".":
        return ROOT
    tree = dest / rev
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "avsegcli"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def build(tree: Path, preset_name: str, mode: str) -> torch.nn.Module:
    """Import ``tree``'s avsegcli afresh and build the preset there (seed 0, fast impl, bf16 cast for ``bf16``)."""
    for name in [k for k in sys.modules if k == "avsegcli" or k.startswith("avsegcli.")]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    try:
        from avsegcli.build import build_model, preset

        torch.manual_seed(0)
        model = build_model(preset(preset_name)).eval().set_impl("fast")
        if mode == "bf16":
            model.cast_for_inference(torch.bfloat16)
    finally:
        sys.path.remove(str(tree))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--revs", default="4b2f89e,.", help="comma-separated git revisions ('.' = the working tree)")
    ap.add_argument("--preset", default="s4-r50")
    ap.add_argument("--mode", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    revs = args.revs.split(",")
    with tempfile.TemporaryDirectory(prefix="avseg-ab-") as tmp:
        models = [build(checkout(rev, Path(tmp)), args.preset, args.mode) for rev in revs]
    size = models[0].config["image_size"]
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(args.frames, 3, size, size, generator=g)
    log_mel = torch.randn(args.frames, 1, 96, 64, generator=g)
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        embs = [m.embed_audio(log_mel) for m in models]
        sums = [m(frames, audio_embedding=e)["pred_masks"].float().sum().item() for m, e in zip(models, embs)]
        for r in range(args.rounds):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                t = time.perf_counter()
                models[i](frames, audio_embedding=embs[i])
                times[i].append(time.perf_counter() - t)
    print(f"{args.preset} at {size} px, {args.mode}, {args.threads} threads, batch {args.frames}, {args.rounds} rounds")
    base = None
    for rev, ts, total in zip(revs, times, sums):
        ts.sort()
        median = args.frames / ts[len(ts) // 2]
        base = base or median
        print(f"{rev:>12}  best {args.frames / ts[0]:.3f}  median {median:.3f} frames/s  ({median / base:.3f}x)  "
              f"logit sum {total:.2f}")


if __name__ == "__main__":
    main()
