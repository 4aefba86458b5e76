"""Does the model listen? A thin wrapper over ``avseg eval --negative-audio`` on a held-out synthetic S4 split.

    .venv/bin/avseg synth --task s4 --out /tmp/synth-test --splits test --split-videos test=200 --seed 1 --no-mp4
    .venv/bin/python benchmarks/bench_synth_audio.py /tmp/synth-test [--weights W] [--seed 0] [--json out.json]

Exactly ``avseg eval --task s4 --data DIR --negative-audio silence,noise,offscreen`` (the library call
:func:`avsegcli.eval.evaluate.evaluate`), printed as one line per condition: the positive official mIoU / F-score, the
false-positive rate with silence, white noise and another clip's off-screen sound, and g_miou / g_fscore.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from avsegcli.eval.evaluate import evaluate
from avsegcli.data.negatives import CONDITIONS
from avsegcli.inference.predictor import Predictor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="root of a synthetic S4 dataset with a test split")
    ap.add_argument("--weights", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0, help="noise and offscreen pairing seed")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    pred = Predictor(args.weights, device="cpu")
    res = evaluate("s4", args.data, args.split, predictor=pred, negative_audio=CONDITIONS, negative_seed=args.seed)
    pos = res["overall"]["official"]
    print(f"weights {pred.weights} ({pred.config.get('name')}), {res['counts']['clips']} clips ({args.split})")
    print(f"positive: mIoU {pos['miou']:.4f}  F {pos['fscore']:.4f}  "
          f"area {res['negative_audio_info']['positive_area']:.2%}")
    for c, v in res["negative_audio"].items():
        print(f"{c:10} FPR {v['fpr']:.2%}  frames with any {v['frames_with_any']:.1%}")
    print(f"g_miou {res['g_miou']:.4f}  g_fscore {res['g_fscore']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
