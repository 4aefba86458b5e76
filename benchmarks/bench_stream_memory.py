"""Peak memory of ``Predictor.stream`` on a short and a long generated video: it must not grow with the length.

    python benchmarks/bench_stream_memory.py [--minutes 1 10] [--size 32] [--keep DIR] [--json]
    python benchmarks/bench_stream_memory.py --writer [--frames 25 100] [--probs-size 224] [--format all] [--json]

One fresh process (``--child``) loads a tiny random model, then iterates ``Predictor.stream`` over each video in
turn, shortest first, at 1 frame per second, keeping only a running count, and reports after each video the
peak resident set size so far (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the RSS after its first frame
(what torch and the model cost before the stream holds anything). The peak is monotonic: if the stream held
memory per frame, the 10-minute video would lift it by ten times what the 1-minute one added. Videos are tiny
(``--size`` px square, 1 fps, 16 kHz mono tone as PCM in Matroska) so that a 10-minute one is made in a second.

``--writer``: the same question for what ``avseg run`` writes (issue 21, item 5). For each ``--frames`` count, one
fresh process (``--writer-child``, no torch) feeds a :class:`~avsegcli.masks.io.VideoMaskWriter` as ``avseg run
--format all --save-probs`` does on an AVSS model: semantic 360x640 masks and softmax probs ``[71, S, S]`` float16
(``S = --probs-size``, 224 as the released AVSS models: ~7 MB a frame), from two threads in batches of 16 that
arrive out of order, then ``finish``; it reports the peak RSS above the RSS before the first frame and the
``tracemalloc`` peak. A writer that kept the frames (as it did before) would grow by the "held" column.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(videos: list[str], ckpt: str, batch_size: int) -> list[dict]:
    import torch

    from avsegcli.inference.predictor import Predictor

    torch.set_num_threads(1)
    pred = Predictor(ckpt, device="cpu", batch_size=batch_size)
    out = []
    for video in videos:
        t0 = time.perf_counter()
        n, area, first_rss = 0, 0.0, None
        for r in pred.stream(video):
            n += 1
            area += float(r.mask.mean())
            if first_rss is None:
                first_rss = _rss_mb()
        out.append({"frames": n, "seconds": round(time.perf_counter() - t0, 2),
                    "rss_after_first_frame_mb": round(first_rss or 0, 1), "rss_end_mb": round(_rss_mb(), 1),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    "mean_area": round(area / max(n, 1), 4)})
    return out


WRITER_SIZE = (360, 640)
WRITER_BATCH = 16


def writer_frame(k: int, probs_size: int, classes: int = 71):
    """Frame ``k``: an AVSS-like mask ``[360, 640]`` uint8 (two moving class rectangles) and softmax probs
    ``[classes, S, S]`` float16 of random logits at ``S / 4`` upsampled (nearest) to ``S``."""
    import numpy as np

    h, w = WRITER_SIZE
    mask = np.zeros((h, w), np.uint8)
    c = 1 + k % (classes - 1)
    mask[(5 * k) % 200:(5 * k) % 200 + 140, (11 * k) % 420:(11 * k) % 420 + 200] = c
    mask[220:340, (7 * k) % 500:(7 * k) % 500 + 120] = 1 + (c + 17) % (classes - 1)
    rng = np.random.default_rng(k)
    coarse = max(1, probs_size // 4)  # the model's logits are at 1/4 of its input size, upsampled
    logits = rng.normal(0, 3, (classes, coarse, coarse)).astype(np.float32)
    e = np.exp(logits - logits.max(0, keepdims=True))
    probs = (e / e.sum(0, keepdims=True)).astype(np.float16)
    up = -(-probs_size // coarse)
    return mask, np.repeat(np.repeat(probs, up, 1), up, 2)[:, :probs_size, :probs_size]


def writer_child(frames: int, probs_size: int, fmt: str, threads: int = 2) -> dict:
    """Feed one writer ``frames`` frames (see :func:`writer_frame`) and finish it; RSS and tracemalloc figures."""
    import threading
    import tracemalloc

    import numpy as np

    from avsegcli.masks.io import VideoMaskWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer_frame(0, probs_size)  # imports and first allocations before the baseline
        writer = VideoMaskWriter(tmp, "long", fmt=fmt, semantic=True, save_probs=True)
        batches = [list(range(i, min(i + WRITER_BATCH, frames))) for i in range(0, frames, WRITER_BATCH)]
        order = np.random.default_rng(0).permutation(len(batches))  # batches finish out of order on the pool
        rss0 = _rss_mb()
        tracemalloc.start()
        t0 = time.perf_counter()

        def work(part) -> None:
            for b in part:
                for k in reversed(batches[b]):  # and out of order within a batch
                    mask, probs = writer_frame(k, probs_size)
                    writer.add(frame_index=25 * k + 12, timestamp=k + 0.48, chunk=k, mask=mask, probs=probs)

        pool = [threading.Thread(target=work, args=(order[i::threads],)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        t_add = time.perf_counter() - t0
        folder = writer.finish({"source": "long.mp4", "width": WRITER_SIZE[1], "height": WRITER_SIZE[0], "fps": 25.0})
        seconds = time.perf_counter() - t0
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        npz = folder / "masks.npz"
        npz_mb = npz.stat().st_size / 2**20 if npz.is_file() else 0.0
    held = frames * (WRITER_SIZE[0] * WRITER_SIZE[1] + 71 * probs_size * probs_size * 2) / 2**20
    return {"frames": frames, "held_mb": round(held, 1), "seconds": round(seconds, 2), "add_seconds": round(t_add, 2),
            "rss_before_mb": round(rss0, 1), "peak_rss_mb": round(peak, 1), "peak_growth_mb": round(peak - rss0, 1),
            "tracemalloc_peak_mb": round(traced_peak / 2**20, 2), "npz_mb": round(npz_mb, 1)}


def measure_writer(frames: list[int], probs_size: int = 224, fmt: str = "all") -> dict[int, dict]:
    """``{frames: result}``, each count in its own fresh ``python`` process (peak RSS only ever grows in one)."""
    out = {}
    for n in sorted(frames):
        proc = subprocess.run([sys.executable, __file__, "--writer-child", str(n), str(probs_size), fmt],
                              capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def make_inputs(folder: Path, minutes: list[float], size: int) -> tuple[Path, dict[float, Path]]:
    import imageio_ffmpeg
    import torch

    import avsegcli
    from avsegcli.build import preset
    from avsegcli.weights import save_checkpoint

    ckpt = folder / "tiny.safetensors"
    if not ckpt.is_file():
        torch.manual_seed(0)
        save_checkpoint(avsegcli.build_model(preset("tiny", image_size=32)), ckpt)
    videos = {}
    for m in minutes:
        v = folder / f"video_{m:g}min.mkv"
        if not v.is_file():
            secs = 60 * m
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y",
                            "-f", "lavfi", "-i", f"testsrc2=size={size}x{size}:rate=1:duration={secs}",
                            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={secs}",
                            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le",
                            "-shortest", str(v)], check=True, capture_output=True)
        videos[m] = v
    return ckpt, videos


def measure(minutes: list[float], size: int = 32, batch_size: int = 16, keep: Path | None = None) -> dict[float, dict]:
    """``{minutes: result}``, measured one after the other (shortest first) in one fresh ``python`` process."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        ckpt, videos = make_inputs(folder, minutes, size)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        order = sorted(videos)
        proc = subprocess.run([sys.executable, __file__, "--child", str(ckpt), str(batch_size), *(str(videos[m]) for m in order)],
                              capture_output=True, text=True, check=True, env=env, cwd=REPO)
        return dict(zip(order, json.loads(proc.stdout.strip().splitlines()[-1])))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[4:], sys.argv[2], int(sys.argv[3]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--writer-child":
        print(json.dumps(writer_child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", action="store_true", help="print the results as one JSON line")
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated videos here (reused when present)")
    ap.add_argument("--writer", action="store_true", help="measure the mask writer of avseg run --save-probs instead")
    ap.add_argument("--frames", type=int, nargs="+", default=[25, 100], help="--writer: frame counts (default 25 100)")
    ap.add_argument("--probs-size", type=int, default=224, help="--writer: S of the [71, S, S] probs (default 224)")
    ap.add_argument("--format", default="all", choices=["png", "npz", "rle", "all"], help="--writer: avseg run --format")
    args = ap.parse_args()
    if args.writer:
        wres = measure_writer(args.frames, args.probs_size, args.format)
        if args.json:
            print(json.dumps({str(n): r for n, r in wres.items()}))
            return
        h, w = WRITER_SIZE
        print(f"VideoMaskWriter, --format {args.format} --save-probs: semantic masks {h}x{w} uint8 + probs "
              f"[71, {args.probs_size}, {args.probs_size}] float16, 2 threads, out of order")
        print(f"{'frames':>7} {'held':>9} {'seconds':>8} {'RSS before':>11} {'peak RSS':>9} {'growth':>9} {'tracemalloc':>12} {'npz':>9}")
        for n, r in wres.items():
            print(f"{n:>7} {r['held_mb']:>6} MB {r['seconds']:>8} {r['rss_before_mb']:>8} MB {r['peak_rss_mb']:>6} MB "
                  f"{r['peak_growth_mb']:>6} MB {r['tracemalloc_peak_mb']:>9} MB {r['npz_mb']:>6} MB")
        lo, hi = wres[min(wres)], wres[max(wres)]
        print(f"{max(wres)} / {min(wres)} frames: held x{hi['held_mb'] / lo['held_mb']:.1f}, peak RSS x{hi['peak_rss_mb'] / lo['peak_rss_mb']:.3f}, "
              f"tracemalloc peak x{hi['tracemalloc_peak_mb'] / max(lo['tracemalloc_peak_mb'], 1e-9):.3f}")
        return
    res = measure(args.minutes, args.size, args.batch_size, args.keep)
    if args.json:
        print(json.dumps({f"{m:g}": r for m, r in res.items()}))
        return
    print(f"{'video':>8} {'frames':>7} {'seconds':>8} {'RSS after 1st frame':>20} {'peak RSS':>9}")
    for m, r in res.items():
        print(f"{m:>6g} m {r['frames']:>7} {r['seconds']:>8} {r['rss_after_first_frame_mb']:>17} MB {r['peak_rss_mb']:>6} MB")
    base = res[min(res)]["peak_rss_mb"]
    for m, r in res.items():
        print(f"peak {m:g} min / {min(res):g} min: {r['peak_rss_mb'] / base:.3f}")


if __name__ == "__main__":
    main()
