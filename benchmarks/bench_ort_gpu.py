"""The exported ONNX file on onnxruntime's GPU providers (CUDA, TensorRT), against torch on the same GPU.

    .venv/bin/python benchmarks/bench_ort_gpu.py --preset s4-r50 --batch 8        # needs onnxruntime-gpu

Random weights of the preset, exported by ``avseg export`` (the same file the CPU backends run); per provider:
frames/s (best of ``--reps`` forwards of ``--batch`` frames, after a warm-up that includes TensorRT's engine
build, whose time is printed), and the gates against torch float32 on the GPU (max and median |logit difference|
over the reference's std, equal mask pixels). Providers this onnxruntime lacks are named as skipped, never
timed. Printed only (a markdown table with ``--markdown FILE``); ``benchmarks/gpu_check.sh`` runs it when asked.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from avsegcli.build import build_model, preset
from avsegcli.export.exporter import export_model
from avsegcli.export.gates import compare, random_inputs
from avsegcli.weights import save_checkpoint

PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="s4-r50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    import onnxruntime as ort  # the GPU build (onnxruntime-gpu) is what this benchmark is for

    available = ort.get_available_providers()
    rows = [f"| provider | frames/s | first call, s | max/sd | median/sd | equal px |", "|---|---|---|---|---|---|"]
    if not torch.cuda.is_available():
        raise SystemExit("error: CUDA is not available")
    torch.manual_seed(0)
    model = build_model(preset(args.preset)).eval()
    frames, log_mel = random_inputs(model.config["image_size"], args.batch)
    with torch.inference_mode():
        gpu = model.cuda()
        ref = gpu(frames.cuda(), log_mel.cuda())["pred_masks"].float()
        torch.cuda.synchronize()
        best = 1e9
        for _ in range(args.reps):
            t = time.perf_counter()
            gpu(frames.cuda(), log_mel.cuda())
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    ref = ref.cpu()
    rows.append(f"| torch fp32 (reference impl) | {args.batch / best:.1f} | - | 0 | 0 | 100% |")
    model.cpu()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(model, Path(tmp) / "random.safetensors")
        done = export_model(ckpt, "onnx", Path(tmp) / "model.onnx")
        print(f"{args.preset}: exported in {done.seconds:.1f} s, {done.bytes / 1e6:.1f} MB; providers here: {', '.join(available)}")
        feed = {"frames": frames.numpy(), "log_mel": log_mel.numpy()}
        for prov in PROVIDERS:
            if prov not in available:
                rows.append(f"| {prov} | skipped: not in this onnxruntime | | | | |")
                continue
            sess = ort.InferenceSession(str(done.path), providers=[prov, "CPUExecutionProvider"])
            t = time.perf_counter()
            out = sess.run(None, feed)[0]
            first = time.perf_counter() - t
            best = 1e9
            for _ in range(args.reps):
                t = time.perf_counter()
                sess.run(None, feed)
                best = min(best, time.perf_counter() - t)
            g = compare(torch.from_numpy(out), ref)
            rows.append(f"| {prov} | {args.batch / best:.1f} | {first:.1f} | {g['max_rel']:.2e} | {g['median_rel']:.2e} | {100 * g['mask_equal']:.3f}% |")
    text = f"## onnxruntime GPU providers: {args.preset}, batch {args.batch}, {torch.cuda.get_device_name()}\n\n" + "\n".join(rows) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
