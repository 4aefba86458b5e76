"""Benchmark of media ingestion: throughput and memory of ``media.iter_batches`` on long videos.

Not a test. Generates (once, cached in ``--workdir``) a 10-minute and a 60-minute video
(320x240, 10 fps, H.264 ``ultrafast`` + AAC 44.1 kHz stereo, so the audio goes through the
channel mean and the resampler), then walks each with ``iter_batches`` in a fresh subprocess and
prints:

* sampled frames and wall time, frames/s of decode + preprocess (+ audio log-mel);
* resident memory (``/proc/self/statm``) at 10 / 25 / 50 / 75 / 100 % of the walk, and the peak
  (``getrusage(RUSAGE_SELF).ru_maxrss``) -- flat memory means the RSS does not grow with the
  video's length (the 60-minute video should peak like the 10-minute one).

Usage::

    .venv/bin/python benchmarks/bench_media.py                       # both videos, fps=1 and every frame
    .venv/bin/python benchmarks/bench_media.py --minutes 10 --fps 1  # one case
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZE = (320, 240)
FPS = 10


def generate(path: Path, minutes: float) -> Path:
    """A ``minutes``-long 320x240 10 fps test video with a stereo 44.1 kHz tone track."""
    if path.exists():
        return path
    import imageio_ffmpeg

    seconds = int(minutes * 60)
    tmp = path.with_name(path.stem + ".part.mp4")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={SIZE[0]}x{SIZE[1]}:rate={FPS}:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:beep_factor=4:sample_rate=44100:duration={seconds}",
           "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-ac", "2", "-b:a", "64k", str(tmp)]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    tmp.rename(path)
    print(f"generated {path.name} ({minutes:g} min, {path.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.0f} s",
          flush=True)
    return path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(path: str, fps: float | None, batch_size: int, image_size: int, via: int | None) -> dict:
    """Walk ``path`` with iter_batches in this process; return the measurements."""
    import torch

    from avsegcli import media

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    info = media.probe(path)
    probe_s = time.perf_counter() - t0
    total = len(media.sample_times(info, fps)[0])
    marks = {int(total * q): q for q in (0.1, 0.25, 0.5, 0.75)}
    rss_at, done, chunks = {}, 0, 0
    t1 = time.perf_counter()
    for batch in media.iter_batches(path, fps=fps, batch_size=batch_size, image_size=image_size, via=via,
                                    info=info):
        done += len(batch)
        chunks += len(batch.chunk_ids)
        for mark, q in marks.items():
            if done >= mark and q not in rss_at:
                rss_at[q] = round(_rss_mb(), 1)
    walk_s = time.perf_counter() - t1
    rss_at[1.0] = round(_rss_mb(), 1)
    return {
        "video": Path(path).name, "duration_s": round(info.duration, 1), "native_frames": info.num_frames,
        "fps": fps, "image_size": image_size, "via": via, "batch_size": batch_size, "frames": done,
        "chunks": chunks, "probe_s": round(probe_s, 2), "walk_s": round(walk_s, 1),
        "frames_per_s": round(done / walk_s, 1), "rss_mb_at": rss_at,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/avseg-bench", help="where the generated videos are kept")
    ap.add_argument("--minutes", type=float, nargs="*", default=[10, 60])
    ap.add_argument("--fps", type=float, nargs="*", default=None,
                    help="sampling rates to run (0 = every frame); default: 1 and 0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--via", type=int, default=None)
    ap.add_argument("--run", help=argparse.SUPPRESS)  # internal: measure one video in this process
    args = ap.parse_args()

    if args.run:
        fps = args.fps[0] if args.fps else 1.0
        result = run_one(args.run, fps if fps > 0 else None, args.batch_size, args.image_size, args.via)
        print(json.dumps(result))
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rates = args.fps if args.fps is not None else [1.0, 0.0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; batch_size={args.batch_size}, "
          f"image_size={args.image_size}, via={args.via}", flush=True)
    for minutes in args.minutes:
        video = generate(work / f"bench_{minutes:g}min.mp4", minutes)
        for fps in rates:
            cmd = [sys.executable, __file__, "--run", str(video), "--fps", str(fps),
                   "--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]
            if args.via:
                cmd += ["--via", str(args.via)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            label = "every frame" if not fps else f"fps={fps:g}"
            print(f"{r['video']:>18} {label:>11}: {r['frames']:6d} frames ({r['chunks']} chunk patches) "
                  f"in {r['walk_s']:7.1f} s = {r['frames_per_s']:7.1f} frames/s (probe {r['probe_s']} s); "
                  f"RSS MB at 10/25/50/75/100%: {list(r['rss_mb_at'].values())}; peak {r['peak_rss_mb']} MB",
                  flush=True)


if __name__ == "__main__":
    main()
