"""Frames/s of ``avseg run`` and of its two halves, so the bottleneck is visible: decoding alone, the model alone, the
whole run.

    # a GPU (fills it: 8 videos x 40 s sampled at 2 fps = 640 frames per configuration)
    .venv/bin/python benchmarks/bench_run.py --device cuda --presets s4-r50 --precision fp32 bf16 --batch 1 32 64
    .venv/bin/python benchmarks/bench_run.py --device cuda --presets avss-pvt2 --batch 32 --reference
    # a small CPU check
    .venv/bin/python benchmarks/bench_run.py --presets tiny --videos 2 --seconds 8 --batch 8 --threads 2

Videos are generated (``tests/media_gen.py``: moving test pattern + tone, ``--video-size`` at 25 fps). Per
configuration, after ``--warmup`` batches:

* ``decode``: the run's own decode pool (``--workers`` processes; default as ``avseg run``) streaming every video's
  frames and audio patches, no model: the most the run can be fed.
* ``model``: the frames already decoded and in memory, staged and run in batches of ``--batch`` (``Predictor.logits``
  then ``to_masks`` at the source size, synchronised): the most the model can take. On CUDA also the GPU time per
  frame from CUDA events and the peak GPU memory.
* ``run``: ``run_videos`` end to end (decode workers, model, mask PNGs), output written to a temporary folder.

``--reference`` adds the authors' way as a baseline: the model alone in fp32 at batch 1 (no decode, no masks).
Random weights (the speed does not depend on them). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media_gen import make_video  # noqa: E402

from avsegcli import media  # noqa: E402
from avsegcli.build import build_model, preset  # noqa: E402
from avsegcli.inference.feed import default_workers, stage  # noqa: E402
from avsegcli.inference.predictor import Predictor  # noqa: E402
from avsegcli.run.decode import decode_messages as _messages  # noqa: E402
from avsegcli.run.local import run_videos  # noqa: E402
from avsegcli.weights import save_checkpoint  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_fps(videos: list[Path], pred: Predictor, workers: int, fps: float) -> tuple[int, float]:
    """Frames/s of the run's decode pool alone (what ``run_videos`` receives), messages consumed and dropped."""
    window = max(1, min(pred.batch_size, 64))
    t = time.perf_counter()
    n = 0
    for msg in _messages([(i, str(v)) for i, v in enumerate(videos)], workers, fps, pred.image_size, pred.via, window):
        if msg[0] == "win":
            n += len(msg[2]["frame_indices"])
        elif msg[0] == "error":
            raise RuntimeError(msg[2])
    return n, n / (time.perf_counter() - t)


def load_frames(videos: list[Path], pred: Predictor, fps: float) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """Every sampled frame as the run ships it (uint8 [S, S, 3]) with its audio patch and source size."""
    out = []
    for v in videos:
        for b in media.iter_batches(v, fps=fps, batch_size=64, image_size=pred.image_size, via=pred.via, normalized=False):
            for i in range(len(b.frame_indices)):
                out.append((b.frames[i].numpy(), b.chunk_log_mel[b.chunk_rows[i]].numpy(), tuple(b.raw_size)))
    return out


def model_fps(pred: Predictor, frames: list, batch: int, warmup: int, masks: bool = True) -> dict:
    """The model alone on in-memory frames: batches of ``batch`` (the last padded, as a compiled model would need)."""
    dev = pred.device
    batches = [frames[i:i + batch] for i in range(0, len(frames), batch)]

    def step(b):
        x = stage([f[0] for f in b], dev, pad_to=batch)
        lm = stage([f[1] for f in b], dev, pad_to=batch)
        logits = pred.logits(x, lm, np.arange(x.shape[0]))[: len(b)]
        if masks:
            pred.to_masks(logits, b[0][2])  # one source size per generated video set: the host copy syncs
        return logits

    for b in (batches * (warmup // max(1, len(batches)) + 1))[:warmup]:
        step(b)
    _sync(dev)
    gpu_ms = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t = time.perf_counter()
    for b in batches:
        step(b)
    if dev.type == "cuda":
        end.record()
    _sync(dev)
    wall = time.perf_counter() - t
    res = {"fps": len(frames) / wall}
    if dev.type == "cuda":
        gpu_ms = start.elapsed_time(end)
        res["gpu_ms_per_frame"] = gpu_ms / len(frames)
        res["peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return res


def bench(args, name: str, videos: list[Path], tmp: Path, precision: str, batch: int, reference: bool,
          impl: str = "fast") -> dict:
    cfg = preset(name, **({"image_size": args.size} if args.size else {}))
    ckpt = tmp / f"{name}-{cfg['image_size']}.safetensors"
    if not ckpt.exists():
        torch.manual_seed(0)
        save_checkpoint(build_model(cfg), ckpt)
    if reference:
        precision, batch, impl = "fp32", 1, "reference"
    pred = Predictor(ckpt, device=args.device, precision=precision, batch_size=batch, impl=impl)
    workers = default_workers(pred.device, jobs=len(videos)) if args.workers is None else args.workers
    row = {"preset": name, "size": pred.image_size, "precision": pred.precision, "impl": impl, "batch": batch, "workers": workers,
           "device": str(pred.device)}
    if pred.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    frames = load_frames(videos, pred, args.fps)
    row["frames"] = len(frames)
    row["model"] = model_fps(pred, frames, batch, args.warmup, masks=not reference)
    if reference:
        return row
    row["decode"] = decode_fps(videos, pred, workers, args.fps)[1]
    t = time.perf_counter()
    res = run_videos(pred, videos, tmp / "out", overwrite=True, workers=workers, fps=args.fps)
    row["run"] = sum(r.frames for r in res) / (time.perf_counter() - t)
    if any(r.status != "done" for r in res):
        raise RuntimeError(f"run failed: {[r.reason for r in res if r.status != 'done']}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["s4-r50"])
    ap.add_argument("--size", type=int, default=0, help="model input size (0 = the preset's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", nargs="+", default=["auto"], help="auto (the default of avseg run), fp32, tf32, bf16, fp16")
    ap.add_argument("--impl", nargs="+", default=["fast"], help="fast (default) and/or reference (the authors' arithmetic)")
    ap.add_argument("--batch", nargs="+", type=int, default=[32])
    ap.add_argument("--workers", type=int, default=None, help="decode processes (default: as avseg run)")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=40)
    ap.add_argument("--fps", type=float, default=2.0, help="frames sampled per second of video")
    ap.add_argument("--video-size", default="640x360", help="WxH of the generated videos")
    ap.add_argument("--warmup", type=int, default=3, help="batches run before the model is timed")
    ap.add_argument("--reference", action="store_true", help="also time the bare model in fp32 at batch 1")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in this process (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.video_size.lower().split("x"))
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if args.device == "auto" else args.device))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        videos = []
        t = time.perf_counter()
        for i in range(args.videos):
            v = tmp / f"v{i}.mp4"
            make_video(v, seconds=args.seconds, fps=25, size=(w, h), tone_hz=300 + 50 * i)
            videos.append(v)
        print(f"{len(videos)} generated videos ({time.perf_counter() - t:.1f} s), {args.seconds} s each, {w}x{h} @ 25 fps, "
              f"sampled at {args.fps:g} fps")
        head = (f"{'preset':10} {'size':>4} {'impl':9} {'prec':5} {'batch':>5} {'frames':>6} {'decode f/s':>10} {'model f/s':>9} "
                f"{'run f/s':>8} {'GPU ms/f':>8} {'peak MiB':>8}  bottleneck")
        print(head)
        configs = [(n, p, b, False, i) for n in args.presets for i in args.impl for p in args.precision for b in args.batch]
        if args.reference:
            configs = [(n, "fp32", 1, True, "reference") for n in args.presets] + configs
        for name, prec, batch, ref, impl in configs:
            r = bench(args, name, videos, tmp, prec, batch, ref, impl)
            m = r["model"]
            gpu = f"{m['gpu_ms_per_frame']:8.2f}" if "gpu_ms_per_frame" in m else f"{'-':>8}"
            peak = f"{m['peak_mib']:8.0f}" if "peak_mib" in m else f"{'-':>8}"
            if ref:
                print(f"{name:10} {r['size']:>4} {'reference':9} {'fp32':5} {1:>5} {r['frames']:>6} {'-':>10} {m['fps']:9.2f} {'-':>8} {gpu} {peak}"
                      "  (authors' way: fp32 model alone, batch 1)", flush=True)
                continue
            neck = "decode" if r["decode"] < m["fps"] else "model"
            print(f"{name:10} {r['size']:>4} {impl:9} {r['precision']:5} {batch:>5} {r['frames']:>6} {r['decode']:10.2f} {m['fps']:9.2f} "
                  f"{r['run']:8.2f} {gpu} {peak}  {neck} ({r['workers']} decode workers)", flush=True)


if __name__ == "__main__":
    main()
