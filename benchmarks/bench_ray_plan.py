"""Numbers for the README's capacity plan of ``avseg run --ray`` (200k ten-second clips at 1 fps = 2M frames).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ray_plan.py                  # s4-r50 and s4-pvt2, CPU
    .venv/bin/python benchmarks/bench_ray_plan.py --device cuda --precision bf16     # on a GPU machine: measured GPU f/s

Measured here, per preset:
  * decode + preprocess + audio log-mel of a generated 10 s 640x360 25 fps clip (44.1 kHz stereo) at 1 fps on
    ONE core (what one Ray CPU gives an actor): seconds per clip and per frame;
  * the model's arithmetic per frame (matmul/convolution FLOPs counted by torch's FlopCounterMode at batch 1,
    VGGish included; the deformable-attention sampling is not counted, a few percent);
  * the bare forward frames/s on ``--device`` (batch ``--batch-size``).
The GPU lines of the plan are arithmetic from published peak figures and an assumed utilisation (``--mfu``),
printed as such: they are not measurements.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media_gen import make_video  # noqa: E402

import avsegcli  # noqa: E402
from avsegcli import media  # noqa: E402

CLIPS, SECONDS = 200_000, 10
# Published dense peak throughput (vendor datasheets), TFLOP/s: NOT measured by us.
PUBLISHED = {"A100 (bf16 dense, datasheet)": 312.0, "H100 SXM (bf16 dense, datasheet)": 989.0, "L4 (bf16 dense, datasheet)": 121.0}


def decode_cost(clip: Path, image_size: int, via, repeats: int) -> tuple[float, int]:
    """Seconds per clip (best of ``repeats``) and frames per clip for decode + preprocess + log-mel at 1 fps."""
    best, frames = float("inf"), 0
    for _ in range(repeats):
        t = time.perf_counter()
        frames = sum(len(b.frame_indices) for b in media.iter_batches(clip, fps=1, batch_size=16, image_size=image_size, via=via))
        best = min(best, time.perf_counter() - t)
    return best, frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["s4-r50", "s4-pvt2"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mfu", type=float, default=0.3, help="assumed fraction of the published peak reached (an assumption)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    print(f"torch {torch.__version__}; decode on 1 thread; forward on {dev} ({args.precision}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s) on CPU)")
    with tempfile.TemporaryDirectory() as d:
        clip = Path(d) / "clip.mp4"
        make_video(clip, seconds=SECONDS, fps=25, size=(640, 360), tone_hz=440, channels=2, sample_rate=44100)
        for preset in args.presets:
            torch.manual_seed(0)
            model = avsegcli.build_model(preset).eval().to(dev)
            size, via = int(model.config["image_size"]), model.config.get("frame_resize_via")
            per_clip, frames = decode_cost(clip, size, via, args.repeats)
            batch = next(iter(media.iter_batches(clip, fps=1, batch_size=args.batch_size, image_size=size, via=via)))
            x, lm = batch.frames.to(dev), batch.log_mel.to(dev)
            n = x.shape[0]
            counter = FlopCounterMode(display=False)
            with counter:  # with autograd on: FlopCounterMode's module tracker fails under no_grad/inference_mode
                model(x[:1], lm[:1])
            gflop = counter.get_total_flops() / 1e9
            with torch.inference_mode():
                ctx = torch.autocast(dev.type, dtype=dtype) if dtype else torch.autocast(dev.type, enabled=False)
                with ctx:
                    model(x, lm)  # warm-up
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    reps = 3 if dev.type == "cuda" else 1
                    for _ in range(reps):
                        model(x, lm)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    fwd_fps = reps * n / (time.perf_counter() - t)
            total = CLIPS * frames
            print(f"\n{preset}: {size}x{size}; decode+preprocess+audio {per_clip:.3f} s per {SECONDS} s clip "
                  f"({frames} frames, {per_clip / frames * 1000:.0f} ms/frame, {frames / per_clip:.1f} frames/s per core)")
            print(f"  model: {gflop:.1f} GFLOP per frame (matmul/conv, counted); measured bare forward {fwd_fps:.3f} frames/s on {dev}")
            print(f"  {CLIPS} clips = {total / 1e6:.1f} M frames; at the measured rate: {total / fwd_fps / 3600:,.0f} device-hours")
            for name, peak in PUBLISHED.items():
                est = peak * 1e12 * args.mfu / (gflop * 1e9)
                cores = est * per_clip / frames
                print(f"  [estimate, not measured] {name}: {peak:g} TFLOP/s x {args.mfu:.0%} -> ~{est:,.0f} frames/s per GPU, "
                      f"needs ~{cores:.0f} decode cores; {total / est / 3600:.1f} GPU-hours")
            del model


if __name__ == "__main__":
    main()
