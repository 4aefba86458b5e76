"""``avseg export``: a checkpoint -> an ONNX or OpenVINO file (:mod:`avsegcli.export`), with its size and time."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer
from rich.console import Console

from avsegcli.cli.common import Offline, Quiet, Verbose, print_fields, set_offline, set_verbosity

CHECK_BACKEND = {"onnx": "onnxruntime", "openvino": "openvino"}


def export(
    weights: str = typer.Argument(..., metavar="PATH|NAME", help="The checkpoint to export: the authors' .pth, our .safetensors, or a name from `avseg weights list`."),
    fmt: str = typer.Option(..., "--format", "-f", help="onnx (one .onnx file; onnxruntime, TensorRT, ...) or openvino (IR: .xml + .bin)."),
    out: Path = typer.Option(..., "--out", "-o", help="The file to write: .onnx for onnx, .xml for openvino (its .bin beside it)."),
    impl: str = typer.Option("auto", "--impl", help="The arithmetic traced: reference (the released one, op for op), fast (fewer FLOPs: folded query products, phase up-convolution) or auto (the faster for the format's runtime: reference for onnx, fast for openvino; see docs/export.md)."),
    check: bool = typer.Option(False, "--check", help="Also run the file (onnxruntime or OpenVINO, fp32) and torch fp32 on the same random batch of 2 and print the accuracy gates."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    offline: Offline = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Export frames + log-mel -> logits (VGGish and the visual model in one graph, dynamic batch) for deployment."""
    from avsegcli.export.exporter import export_model  # lazy: the library imports torch (not for --help)
    from avsegcli.export.gates import check_runner
    from avsegcli.export.runners import open_runner
    from avsegcli.hub import resolve_weights

    set_verbosity(verbose, quiet)
    set_offline(offline)
    path = resolve_weights(weights)
    console = Console(stderr=True)
    with console.status(f"exporting {path.name} to {fmt}", spinner="dots") if not (quiet or as_json) else contextlib.nullcontext():
        done = export_model(path, fmt, out, impl=impl)
    meta = done.meta.to_strings()
    result = {"file": str(done.path), "format": done.format, "bytes": done.bytes, "seconds": round(done.seconds, 2),
              **{k: v for k, v in meta.items() if k not in ("config", "mean", "std")}}
    if check:
        runner = open_runner(CHECK_BACKEND[fmt], done.path, precision="fp32")
        result["check"] = {"backend": runner.name, "precision": runner.precision, **check_runner(runner, path)}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if quiet:
        return
    rows = [("format", done.format), ("size", f"{done.bytes / 1e6:.1f} MB"), ("export time", f"{done.seconds:.1f} s"),
            ("preset / task", f"{done.meta.preset} / {done.meta.task} ({done.meta.num_classes} class{'es' if done.meta.num_classes > 1 else ''})"),
            ("input size", f"{done.meta.image_size} px"), ("arithmetic", done.meta.impl), ("inputs", result["inputs"]), ("outputs", result["outputs"]),
            ("source", f"{done.meta.source_file} (sha256 {done.meta.source_sha256})")]
    if check:
        c = result["check"]
        rows.append((f"check ({c['backend']} {c['precision']})", f"max |err|/std {c['max_rel']:.2e}, median {c['median_rel']:.2e}, "
                                                                  f"equal mask pixels {100 * c['mask_equal']:.3f}%"))
    print_fields(f"avseg export: {done.path}", rows)
