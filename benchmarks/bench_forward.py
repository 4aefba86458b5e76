"""Forward-pass speed of one preset in every execution mode, side by side in one process.

    .venv/bin/python benchmarks/bench_forward.py --preset s4-r50 --frames 2 --threads 2
    .venv/bin/python benchmarks/bench_forward.py --preset avss-pvt2 --frames 2 --threads 2
    .venv/bin/python benchmarks/bench_forward.py --preset tiny --compile      # adds torch.compile (compile time shown)

Modes (random weights, the same frames and audio embedding for all; VGGish timed on its own):

* ``reference fp32``: the released arithmetic, op for op (``impl="reference"``) -- the baseline;
* ``fast fp32``: ``impl="fast"`` (:meth:`AVSegFormer.set_impl`);
* ``reference bf16-autocast`` / ``fast bf16-autocast``: each path under ``torch.autocast`` (how ``--precision bf16``
  ran on CUDA before issue 21; the design not chosen: autocast re-casts every weight on every call);
* ``fast bf16``: weights cast once (:meth:`AVSegFormer.cast_for_inference`) -- what ``--precision bf16`` and
  ``auto`` (where bf16 is native) run on every device;
* ``fast fp16`` (``--fp16``): weights cast once to float16, as ``--precision fp16`` runs;
* ``compiled``: ``torch.compile`` of the auto mode (``--compile``), with its compile time;
* ``onnxruntime fp32``, ``openvino fp32``, ``openvino auto (<what it picked>)``, each for the graph of the
  reference and of the fast arithmetic (``ref``/``fas``, ``--export-impls``): the model exported by ``avseg
  export`` (``--backends``; export time and file size printed), run by each runtime on the same frames and log-mel
  patches. Their figures include VGGish (the exported graph holds it; about 1% of a frame at 224 px), the torch
  rows do not: a small handicap for the backends.

``--weights FILE`` times a checkpoint (e.g. the bundled model) instead of random weights; ``--miou DATA`` also
scores it on DATA's test split (``avseg synth`` output) through torch fp32, torch auto and each backend, with the
difference to torch fp32 (the gate: within 0.005).

Per mode: frames/s (best of ``--reps``), GFLOP per frame (``torch.utils.flop_counter`` on the reference), the
share of the machine's ceiling (a 4096x2048x2048 GEMM timed here in that dtype), a per-part split (backbone,
encoder, decoder, query generator, query MLP, output convolutions, the rest), and the agreement with the
reference (max and median |logit difference| / std of the reference logits, equal mask pixels: binary logit > 0,
semantic argmax; :func:`avsegcli.export.gates.compare`). Printed only.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import avsegcli.modeling.head as head_mod
from avsegcli.build import build_model, preset
from avsegcli.eval.evaluate import evaluate_options
from avsegcli.eval.options import EvalOptions
from avsegcli.export.exporter import export_model
from avsegcli.export.gates import compare
from avsegcli.export.meta import SUFFIX
from avsegcli.export.runners import FORMAT_OF, open_runner
from avsegcli.modeling.head import QueryMLP
from avsegcli.weights import load_model, save_checkpoint

PARTS = ("backbone", "encoder", "decoder", "query_gen", "query_mlp", "out_convs")


def gemm_gflops(dtype: torch.dtype, reps: int = 3) -> float:
    a, b = torch.randn(4096, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
    best = 1e9
    for _ in range(reps + 1):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 4096 * 2048 * 2048 / best / 1e9


@contextmanager
def part_timer(model, acc: dict[str, float]):
    """Accumulate wall time per part with hooks (modules) and wrappers (the query MLP and output convs)."""
    starts: dict[str, float] = {}
    handles = []
    for name, mod in (("backbone", model.backbone), ("encoder", model.head.transformer.encoder),
                      ("decoder", model.head.transformer.decoder), ("query_gen", model.head.query_generator)):
        handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: starts.__setitem__(n, time.perf_counter())))
        handles.append(mod.register_forward_hook(lambda m, a, o, n=name: acc.__setitem__(n, acc[n] + time.perf_counter() - starts[n])))

    def timed(fn, name):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            acc[name] += time.perf_counter() - t
            return out
        return wrapper

    saved = (QueryMLP.forward, QueryMLP.forward_folded, head_mod.run_mask_convs)
    QueryMLP.forward, QueryMLP.forward_folded = timed(saved[0], "query_mlp"), timed(saved[1], "query_mlp")
    head_mod.run_mask_convs = timed(saved[2], "out_convs")
    try:
        yield
    finally:
        QueryMLP.forward, QueryMLP.forward_folded, head_mod.run_mask_convs = saved
        for h in handles:
            h.remove()


def run_mode(fn, frames, emb, reps: int, model=None) -> tuple[float, torch.Tensor, dict[str, float]]:
    with torch.inference_mode():
        out = fn(frames, audio_embedding=emb)["pred_masks"].float()  # warm-up
        best, parts = 1e9, {}
        for _ in range(reps):
            acc: dict[str, float] = defaultdict(float)
            with ExitStack() as stack:
                if model is not None:
                    stack.enter_context(part_timer(model, acc))
                t = time.perf_counter()
                fn(frames, audio_embedding=emb)
                dt = time.perf_counter() - t
            if dt < best:
                best, parts = dt, dict(acc)
    return best, out, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="s4-r50")
    ap.add_argument("--size", type=int, default=0, help="input size (0 = the preset's)")
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the fast bf16 (auto) mode")
    ap.add_argument("--no-autocast", action="store_true", help="skip the bf16-autocast modes")
    ap.add_argument("--fp16", action="store_true", help="also time the fp16 mode (weights cast once to float16)")
    ap.add_argument("--backends", default="onnxruntime,openvino", help="exported backends to time beside torch ('' for none)")
    ap.add_argument("--export-impls", default="reference,fast", help="the arithmetic of the exported graphs (avseg export --impl)")
    ap.add_argument("--weights", type=Path, help="a checkpoint instead of random weights of --preset")
    ap.add_argument("--miou", type=Path, help="with --weights: also score it on this dataset's test split per backend")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.weights:
        ref = load_model(args.weights, impl="reference")
        cfg = ref.config
        args.preset = f"{args.weights.name} ({cfg['name']})"
    else:
        cfg = preset(args.preset, **({"image_size": args.size} if args.size else {}))
        ref = build_model(cfg)
    size = cfg["image_size"]
    frames = torch.randn(args.frames, 3, size, size)
    log_mel = torch.randn(args.frames, 1, 96, 64) * 2 - 4
    with torch.inference_mode():
        t = time.perf_counter()
        emb = ref.embed_audio(log_mel)
        vggish_s = (time.perf_counter() - t) / args.frames
    with FlopCounterMode(display=False) as counter:  # (its module tracker needs autograd on)
        ref(frames[:1].clone(), audio_embedding=emb[:1].clone())
    gflop = counter.get_total_flops() / 1e9
    ceiling = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
    print(f"{args.preset} at {size}x{size}, {args.frames} frames a forward, {torch.get_num_threads()} threads; "
          f"{gflop:.1f} GFLOP/frame; GEMM ceiling here: fp32 {ceiling['fp32']:.0f}, bf16 {ceiling['bf16']:.0f} GFLOP/s; "
          f"VGGish {1000 * vggish_s:.1f} ms per audio second (fp32, once per second, not in the figures below)")

    fast = copy.deepcopy(ref).set_impl("fast")
    fast_bf16 = copy.deepcopy(ref).set_impl("fast").cast_for_inference(torch.bfloat16)

    def autocast(model):
        def run(x, **kw):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x, **kw)
        return run

    modes = [("reference fp32", ref, ref, "fp32"), ("fast fp32", fast, fast, "fp32")]
    if not args.no_autocast:
        modes.append(("reference bf16-autocast", autocast(ref), ref, "bf16"))
        modes.append(("fast bf16-autocast", autocast(fast), fast, "bf16"))
    modes.append(("fast bf16 (cast once)", fast_bf16, fast_bf16, "bf16"))
    if args.fp16:
        fast_fp16 = copy.deepcopy(ref).set_impl("fast").cast_for_inference(torch.float16)
        ceiling["fp16"] = gemm_gflops(torch.float16)
        modes.append(("fast fp16 (cast once)", fast_fp16, fast_fp16, "fp16"))
    compile_s = None
    if args.compile:
        compiled = torch.compile(copy.deepcopy(fast_bf16), dynamic=False)
        t = time.perf_counter()
        with torch.inference_mode():
            compiled(frames, audio_embedding=emb)
        compile_s = time.perf_counter() - t
        modes.append(("compiled fast bf16", compiled, None, "bf16"))

    base_t, base_out = None, None
    cols = "  ".join(f"{p:>9}" for p in PARTS)
    print(f"{'mode':26} {'frames/s':>8} {'speed-up':>8} {'ceiling':>7}  {'max|d|/sd':>9} {'med|d|/sd':>9} {'equal px':>8}  "
          f"per frame, s: {cols} {'rest':>9}")
    for name, fn, model, dtype in modes:
        dt, out, parts = run_mode(fn, frames, emb, args.reps, model)
        if base_t is None:
            base_t, base_out = dt, out
        fps = args.frames / dt
        share = gflop * fps / ceiling[dtype]
        agree = _agree(out, base_out)
        split = "  ".join(f"{parts.get(p, 0) / args.frames:9.3f}" for p in PARTS) if parts else "  ".join(f"{'-':>9}" for _ in PARTS)
        rest = f"{(dt - sum(parts.values())) / args.frames:9.3f}" if parts else f"{'-':>9}"
        print(f"{name:26} {fps:8.3f} {base_t / dt:7.2f}x {100 * share:6.1f}%  {agree}  {'':14}{split} {rest}", flush=True)
    if compile_s is not None:
        print(f"torch.compile: first call {compile_s:.1f} s (compile + one forward of {args.frames} frames)")
    backends = [b for b in args.backends.split(",") if b]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.weights or save_checkpoint(ref, Path(tmp) / "random.safetensors")
        files = {}
        for backend in backends:
            fmt = FORMAT_OF[backend]
            for impl in args.export_impls.split(","):
                done = export_model(ckpt, fmt, Path(tmp) / f"model-{impl}-{fmt}{SUFFIX[fmt]}", impl=impl,
                                    model=copy.deepcopy(ref).set_impl(impl), sha256="0" * 64)
                files.setdefault(backend, done.path)  # the first impl's file scores --miou
                print(f"{'':26} avseg export --format {fmt} --impl {impl}: {done.seconds:.1f} s, {done.bytes / 1e6:.1f} MB")
                for prec in ("fp32",) if backend == "onnxruntime" else ("fp32", "auto"):
                    runner = open_runner(backend, done.path, precision=prec)
                    dt, out = _time_runner(runner, frames, log_mel, args.reps)
                    name = f"{backend} {prec}" + (f" ({runner.precision})" if prec == "auto" else "") + f" {impl[:3]}"
                    dtype = runner.precision if runner.precision in ceiling else "fp32"
                    print(f"{name:26} {args.frames / dt:8.3f} {base_t / dt:7.2f}x {100 * gflop * args.frames / dt / ceiling[dtype]:6.1f}%  "
                          f"{_agree(out, base_out)}  (VGGish included)", flush=True)
        if args.miou and args.weights:
            _miou(args.weights, files, args.miou)


def _agree(out: torch.Tensor, ref: torch.Tensor) -> str:
    g = compare(out, ref)
    return f"{g['max_rel']:9.2e} {g['median_rel']:9.2e} {100 * g['mask_equal']:7.3f}%"


def _time_runner(runner, frames, log_mel, reps: int) -> tuple[float, torch.Tensor]:
    out = runner(frames, log_mel)  # warm-up
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        runner(frames, log_mel)
        best = min(best, time.perf_counter() - t)
    return best, out


def _miou(weights: Path, files: dict[str, Path], data: Path) -> None:
    """The checkpoint's held-out mIoU (official protocol) through torch fp32, torch auto and each backend."""
    runs = [("torch fp32", weights, "fp32", "torch"), ("torch auto", weights, "auto", "torch")]
    for backend, path in files.items():
        runs += [(f"{backend} {p}", path, p, backend) for p in (("fp32",) if backend == "onnxruntime" else ("fp32", "auto"))]
    base, task = None, load_model(weights).config.get("task") or "s4"
    for label, path, prec, backend in runs:
        res = evaluate_options(EvalOptions(task=task, data=data, weights=path, precision=prec, backend=backend, device="cpu", quiet=True))
        o = res["overall"]["official"]
        base = o["miou"] if base is None else base
        print(f"held-out mIoU {label:22} {o['miou']:.4f} (F {o['fscore']:.4f}); vs torch fp32 {o['miou'] - base:+.4f} "
              f"[{res['model']['precision']}]", flush=True)


if __name__ == "__main__":
    main()
