"""The GPU table (issue 21): the authors' way against the default, per preset, written as markdown.

    # one GPU (about 2-3 min on an H200): s4-r50 at 512 and avss-pvt2 at 224
    .venv/bin/python benchmarks/bench_gpu.py --markdown gpu_check_out/gpu_table.md
    # the code paths on a CPU (a smoke run, figures meaningless)
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --presets tiny --videos 2 --seconds 4 --batch 4 \\
        --reference-frames 4 --markdown /tmp/table.md

Per preset (random weights: the speed does not depend on them), on the same generated videos (``tests/media_gen.py``,
``--video-size`` at 25 fps, sampled at ``--fps``), with the measuring functions of ``benchmarks/bench_run.py``:

* **authors' way**: fp32, impl ``reference``, batch 1, the model alone (no decode, no masks), on the first
  ``--reference-frames`` frames (a steady rate; batch 1 is slow).
* **default**: precision ``auto``, impl ``fast``, batch ``--batch`` (32):
  the model alone (pinned staging, ``Predictor.logits`` and the masks at the source size);
  decode alone (the run's own decode pool, no model); and the whole run (``run_videos``: decode workers, model, PNGs).

Frames/s; on CUDA the GPU time per frame (CUDA events) and the peak GPU memory (``max_memory_allocated``, reset
before each timed part: the model alone after its warm-up, the whole run from its start). Each part's wall time is
printed as it ends, and the markdown file is rewritten after every preset, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_run  # noqa: E402  (puts tests/ on sys.path: media_gen)
from media_gen import make_video  # noqa: E402

from avsegcli.build import build_model, preset  # noqa: E402
from avsegcli.inference.feed import default_workers  # noqa: E402
from avsegcli.inference.predictor import Predictor  # noqa: E402
from avsegcli.run.local import run_videos  # noqa: E402
from avsegcli.weights import save_checkpoint  # noqa: E402

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_videos(folder: Path, count: int, seconds: int, size: tuple[int, int]) -> list[Path]:
    """``count`` test videos (moving pattern + tone, 25 fps), generated in parallel (one ffmpeg each)."""
    paths = [folder / f"v{i}.mp4" for i in range(count)]
    with ThreadPoolExecutor(max(1, min(count, 8))) as pool:
        list(pool.map(lambda iv: make_video(iv[1], seconds=seconds, fps=25, size=size, tone_hz=300 + 50 * iv[0]),
                      enumerate(paths)))
    return paths


def bench_preset(name: str, args, device: torch.device, videos: list[Path], tmp: Path) -> dict:
    """Both ways for one preset: a dict of figures (see the module docstring)."""
    cfg = preset(name, **({"image_size": args.size} if args.size else {}))
    t = time.perf_counter()
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model(cfg), tmp / f"{name}-{cfg['image_size']}.safetensors")
    log(f"{name}: random checkpoint ({time.perf_counter() - t:.1f} s)")
    row: dict = {"preset": name, "size": int(cfg["image_size"])}

    # the authors' way: fp32, the reference arithmetic, one frame at a time, the model alone
    t = time.perf_counter()
    ref = Predictor(ckpt, device=device, precision="fp32", impl="reference", batch_size=1)
    frames = bench_run.load_frames(videos, ref, args.fps)
    row["frames"] = len(frames)
    log(f"{name}: {len(frames)} frames decoded into memory ({time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    sub = frames[: args.reference_frames]
    row["reference"] = {"precision": ref.precision, "impl": "reference", "batch": 1, "frames": len(sub),
                        **bench_run.model_fps(ref, sub, 1, args.warmup, masks=False)}
    log(f"{name}: authors' way (fp32, reference, batch 1, model alone) {row['reference']['fps']:.2f} frames/s "
        f"({time.perf_counter() - t:.1f} s)")
    del ref
    _free(device)

    # the default: precision auto, impl fast, batch 32
    t = time.perf_counter()
    pred = Predictor(ckpt, device=device, precision="auto", impl="fast", batch_size=args.batch)
    workers = default_workers(pred.device, jobs=len(videos)) if args.workers is None else args.workers
    row["default"] = {"precision": pred.precision, "impl": "fast", "batch": args.batch, "workers": workers,
                      "frames": len(frames), **bench_run.model_fps(pred, frames, args.batch, args.warmup, masks=True)}
    log(f"{name}: default ({pred.precision}, fast, batch {args.batch}) model alone {row['default']['fps']:.2f} "
        f"frames/s ({time.perf_counter() - t:.1f} s)")
    del frames
    t = time.perf_counter()
    row["decode"] = bench_run.decode_fps(videos, pred, workers, args.fps)[1]
    log(f"{name}: decode alone ({workers} workers) {row['decode']:.2f} frames/s ({time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    res = run_videos(pred, videos, tmp / f"out-{name}", overwrite=True, workers=workers, fps=args.fps)
    wall = time.perf_counter() - t
    if any(r.status != "done" for r in res):
        raise RuntimeError(f"run failed: {[r.reason for r in res if r.status != 'done']}")
    row["run"] = sum(r.frames for r in res) / wall
    if device.type == "cuda":
        row["run_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    log(f"{name}: whole run {row['run']:.2f} frames/s ({wall:.1f} s)")
    del pred
    _free(device)
    return row


def _f(value, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        "# GPU table (issue 21): the authors' way vs the default",
        "",
        f"- device: {header['device']}",
        f"- torch {header['torch']} (CUDA {header['cuda']}, cuDNN {header['cudnn']}), Python {header['python']}",
        f"- date: {header['date']}",
        f"- input: {header['videos']} generated videos x {header['seconds']} s, {header['video_size']} at 25 fps, sampled "
        f"at {header['fps']:g} fps; random weights (speed does not depend on them)",
        "- authors' way: fp32, impl reference, batch 1, the model alone (no decode, no masks); default: precision "
        "auto, impl fast: the model alone (staging + logits + masks at the source size), decode alone (the run's "
        "decode pool), the whole run (`run_videos`: decode, model, PNG masks)",
        "- peak memory: `torch.cuda.max_memory_allocated`, reset before the timed part",
        "",
        "| preset | size | way | precision | impl | batch | frames | model f/s | GPU ms/frame | peak MiB (model) "
        "| decode f/s | run f/s | peak MiB (run) | model x authors | run x authors |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a, d = r["reference"], r["default"]
        lines.append(f"| {r['preset']} | {r['size']} | authors' way | {a['precision']} | reference | 1 | {a['frames']} "
                     f"| {_f(a['fps'], '.2f')} | {_f(a.get('gpu_ms_per_frame'), '.2f')} | {_f(a.get('peak_mib'), '.0f')} "
                     f"| - | - | - | 1.0 | - |")
        lines.append(f"| {r['preset']} | {r['size']} | default | {d['precision']} (auto) | fast | {d['batch']} "
                     f"| {d['frames']} | {_f(d['fps'], '.2f')} | {_f(d.get('gpu_ms_per_frame'), '.2f')} "
                     f"| {_f(d.get('peak_mib'), '.0f')} | {_f(r.get('decode'), '.2f')} | {_f(r.get('run'), '.2f')} "
                     f"| {_f(r.get('run_peak_mib'), '.0f')} | {d['fps'] / a['fps']:.1f} "
                     f"| {_f(r['run'] / a['fps'] if r.get('run') else None)} |")
    lines += ["", f"Decode workers: {', '.join(str(r['default']['workers']) for r in rows)}. "
              f"Measured in {header['seconds_total']:.0f} s.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["s4-r50", "avss-pvt2"], help="each at its own size (512, 224)")
    ap.add_argument("--size", type=int, default=0, help="model input size for every preset (0 = each preset's)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=32, help="the default's batch size")
    ap.add_argument("--workers", type=int, default=None, help="decode processes (default: as avseg run)")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--fps", type=float, default=2.0, help="frames sampled per second of video")
    ap.add_argument("--video-size", default="640x360", help="WxH of the generated videos")
    ap.add_argument("--warmup", type=int, default=3, help="batches run before the model is timed")
    ap.add_argument("--reference-frames", type=int, default=96, help="frames timed in the authors' way (batch 1)")
    ap.add_argument("--markdown", type=Path, default=None, help="write the table here")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in this process (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda but CUDA is not available", file=sys.stderr)
            return 2
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor})"
    else:
        name = f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    w, h = (int(v) for v in args.video_size.lower().split("x"))
    header = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
              "python": platform.python_version(), "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "videos": args.videos, "seconds": args.seconds, "video_size": f"{w}x{h}", "fps": args.fps}
    log(f"torch {torch.__version__}, device {device} ({name})")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        videos = make_videos(tmp, args.videos, args.seconds, (w, h))
        log(f"{len(videos)} videos generated, {args.seconds} s each at {w}x{h} ({time.perf_counter() - t:.1f} s)")
        for name_ in args.presets:
            rows.append(bench_preset(name_, args, device, videos, tmp))
            if args.markdown is not None:
                header["seconds_total"] = time.perf_counter() - T0
                args.markdown.parent.mkdir(parents=True, exist_ok=True)
                args.markdown.write_text(markdown(rows, header))
    header["seconds_total"] = time.perf_counter() - T0
    table = markdown(rows, header)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table)
        log(f"table written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
