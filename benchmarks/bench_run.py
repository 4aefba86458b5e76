"""Frames/s of the whole ``avseg run`` pipeline on generated videos, and where the time goes.

    .venv/bin/python benchmarks/bench_run.py                       # CPU: tiny and s4-r50, random weights
    .venv/bin/python benchmarks/bench_run.py --device cuda --presets s4-r50 --precision fp32 bf16 --batch-sizes 8 32 64

For each preset: the whole run (decode workers, VGGish, model, mask writing) over a few generated videos, then
the same frames pushed through the parts one by one to split the time into decode+preprocess, audio (VGGish),
backbone and head. ``bare forward`` is the model alone on 5-frame batches, the way the authors' test script runs
it (the target in the README compares the whole run against it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media_gen import make_video  # noqa: E402

import avsegcli  # noqa: E402
from avsegcli import media  # noqa: E402
from avsegcli.predictor import Predictor  # noqa: E402
from avsegcli.runner import run_videos  # noqa: E402
from avsegcli.weights import save_checkpoint  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def bench(preset: str, videos: list[Path], tmp: Path, device: str, precision: str, batch_size: int, workers: int) -> dict:
    torch.manual_seed(0)
    ckpt = tmp / f"{preset}.safetensors"
    if not ckpt.exists():
        save_checkpoint(avsegcli.build_model(preset), ckpt)
    pred = Predictor(ckpt, device=device, precision=precision, batch_size=batch_size)
    dev = pred.device
    # warm-up (allocator, cudnn autotune, lazy imports)
    clip = media.read_clip(videos[0], fps=1, image_size=pred.image_size, via=pred.via)
    pred.logits(clip.frames[:batch_size], clip.log_mel[:batch_size], list(range(min(batch_size, len(clip)))))

    out = tmp / f"out-{preset}-{precision}-{batch_size}"
    t = time.perf_counter()
    results = run_videos(pred, videos, out, workers=workers, overwrite=True)
    whole = time.perf_counter() - t
    frames = sum(r.frames for r in results)

    # the parts, on the same frames
    t_decode = 0.0
    batches = []
    for v in videos:
        t = time.perf_counter()
        batches += list(media.iter_batches(v, fps=1, batch_size=batch_size, image_size=pred.image_size, via=pred.via))
        t_decode += time.perf_counter() - t
    t_audio = t_backbone = t_head = 0.0
    model = pred.model
    with torch.inference_mode(), pred.autocast():
        for b in batches:
            x, lm = b.frames.to(dev), b.chunk_log_mel.to(dev)
            emb = None

            def audio():
                nonlocal emb
                emb = model.embed_audio(lm)

            t_audio += _timed(audio, dev)
            feats = None

            def backbone():
                nonlocal feats
                feats = model.backbone(x)

            t_backbone += _timed(backbone, dev)
            rows = torch.as_tensor(b.chunk_rows, device=dev)
            t_head += _timed(lambda: model.head(feats, model.audio_proj(emb[rows][:, None])), dev)
        # the authors' way: the bare model on 5-frame batches (the same frames)
        allf = torch.cat([b.frames for b in batches])
        alla = torch.cat([b.log_mel for b in batches])
        t_bare = 0.0
        for i in range(0, len(allf), 5):
            t_bare += _timed(lambda: model(allf[i:i + 5].to(dev), alla[i:i + 5].to(dev)), dev)
    parts = t_decode + t_audio + t_backbone + t_head
    return {
        "preset": preset, "device": str(dev), "precision": precision, "batch_size": batch_size, "frames": frames,
        "run_fps": frames / whole, "bare_fps": len(allf) / t_bare,
        "share": {k: v / parts for k, v in (("decode", t_decode), ("audio", t_audio), ("backbone", t_backbone), ("head", t_head))},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "s4-r50"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", nargs="+", default=["fp32"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[5])
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        videos = []
        for i in range(args.videos):
            v = tmp / f"v{i}.mp4"
            make_video(v, seconds=args.seconds, fps=25, size=(640, 360), tone_hz=300 + 100 * i)
            videos.append(v)
        print(f"{len(videos)} generated videos, {args.seconds} s each, 640x360 @ 25 fps, sampled at 1 fps")
        print(f"{'preset':10} {'prec':5} {'batch':>5} {'frames':>6} {'run f/s':>9} {'bare f/s':>9}   decode  audio  backbone  head")
        for preset in args.presets:
            for prec in args.precision:
                for bs in args.batch_sizes:
                    r = bench(preset, videos, tmp, args.device, prec, bs, args.workers)
                    s = r["share"]
                    print(f"{preset:10} {prec:5} {bs:>5} {r['frames']:>6} {r['run_fps']:>9.3f} {r['bare_fps']:>9.3f}   "
                          f"{s['decode']:5.1%} {s['audio']:6.1%} {s['backbone']:8.1%} {s['head']:6.1%}", flush=True)


if __name__ == "__main__":
    main()
