"""Peak memory of ``Predictor.stream`` on a short and a long generated video: it must not grow with the length.

    python benchmarks/bench_stream_memory.py [--minutes 1 10] [--size 32] [--keep DIR] [--json]

One fresh process (``--child``) loads a tiny random model, then iterates ``Predictor.stream`` over each video in
turn, shortest first, at 1 frame per second, keeping only a running count, and reports after each video the
peak resident set size so far (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the RSS after its first frame
(what torch and the model cost before the stream holds anything). The peak is monotonic: if the stream held
memory per frame, the 10-minute video would lift it by ten times what the 1-minute one added. Videos are tiny
(``--size`` px square, 1 fps, 16 kHz mono tone as PCM in Matroska) so that a 10-minute one is made in a second.
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

    from avsegcli.predictor import Predictor

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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", action="store_true", help="print the results as one JSON line")
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated videos here (reused when present)")
    args = ap.parse_args()
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
