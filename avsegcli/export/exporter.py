"""``avseg export``: a checkpoint -> one ONNX or OpenVINO file computing frames + log-mel -> logits.

One graph, VGGish included, rather than two: a deployment then ships one file with one call per batch, and the
audio path is small (VGGish is about 1% of a frame's FLOPs at 224 px, 0.2% at 512). The cost is that VGGish runs
once per frame instead of once per audio second, which is the same count at ``avseg run``'s default of one frame
per second.

The graph is float32 and made of standard ops only (the deformable attention's sampling is ``GridSample``;
opset 18). By default it is the reference arithmetic (``impl="reference"``): the released model op for op.
``impl="fast"`` traces the fast path instead (the query products folded into the first query-MLP layer, the x4
up-sampling and 3x3 convolution as one low-resolution phase convolution: fewer FLOPs; the derived weights become
constants of the graph, and the per-sample GEMM loop becomes one batched GEMM per pixel chunk while tracing).
Which is faster depends on the runtime (``docs/export.md``, s4-r50: OpenVINO in bf16 gains 1.37x from it,
onnxruntime in fp32 loses 1.16x), so ``impl="auto"`` (the default) takes the reference graph for ONNX files and
the fast one for OpenVINO IR. The batch dimension is dynamic; the input size is the preset's.

Only the maintained exporters are used: ``torch.onnx.export(dynamo=True)`` (with onnxscript) writes the ONNX
file, and ``openvino.convert_model`` turns that file into OpenVINO IR (``.xml`` + ``.bin``, float32 weights:
``compress_to_fp16=False``). Files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from avsegcli.errors import AvsegError
from avsegcli.export.meta import FORMATS, INPUTS, OUTPUT, SUFFIX, ExportMeta, describe
from avsegcli.export.runners import require
from avsegcli.modeling.avsegformer import AVSegFormer
from avsegcli.modeling.deform_attn import grid_sample_for_export
from avsegcli.weights import load_model, sha256sum

OPSET = 18
#: ``impl="auto"``: the graph each runtime ran faster (benchmarks/bench_forward.py, docs/export.md): onnxruntime the
#: reference arithmetic (fp32 at s4-r50: 0.552 vs 0.475 frames/s), OpenVINO the fast one (bf16: 1.879 vs 1.371;
#: f32: 0.612 vs 0.606)
AUTO_IMPL = {"onnx": "reference", "openvino": "fast"}


class LogitsGraph(nn.Module):
    """What is exported: ``frames [B, 3, S, S]`` normalised float32 and ``log_mel [B, 1, 96, 64]`` -> ``logits
    [B, K, S, S]`` float32 (VGGish, the audio projection, the backbone and the head of ``model``)."""

    def __init__(self, model: AVSegFormer) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor, log_mel: Tensor) -> Tensor:
        return self.model(frames, log_mel)["pred_masks"].float()


@dataclass(frozen=True)
class Exported:
    """One export: the file written (the ``.xml`` for OpenVINO, whose ``.bin`` lies beside it), its size in bytes
    (both files for OpenVINO), the seconds it took, and the metadata it carries."""

    path: Path
    format: str
    bytes: int
    seconds: float
    meta: ExportMeta


def _import(module: str, fmt: str):
    return require(module, fmt, f"--format {fmt} needs {module}, an optional extra")


def _onnx(model: AVSegFormer, meta: ExportMeta, dest: Path) -> None:
    """Trace ``model`` (reference impl, float32, CPU) and write ``dest`` with ``meta`` in ``metadata_props``."""
    graph = LogitsGraph(model).eval()
    s = meta.image_size
    example = (torch.randn(2, 3, s, s), torch.randn(2, 1, 96, 64))
    batch = torch.export.Dim("batch", min=1, max=4096)
    # the exporter narrates each step on stdout, and onnxscript's optimiser logs and warns about internals;
    # none of it is for our user (a failure still raises)
    quiet = logging.getLogger("onnxscript")
    level = quiet.level
    with torch.no_grad(), grid_sample_for_export(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quiet.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(graph, example, dynamo=True, opset_version=OPSET, input_names=list(INPUTS),
                                        output_names=[OUTPUT], dynamic_shapes={"frames": {0: batch}, "log_mel": {0: batch}},
                                        verbose=False)
        finally:
            quiet.setLevel(level)
    model.clear_caches()  # nothing traced stays on the module
    program.model.metadata_props.update(meta.to_strings())
    program.save(dest, external_data=False)


def _openvino(onnx_file: Path, meta: ExportMeta, dest_xml: Path) -> None:
    ov = _import("openvino", "openvino")  # checked by export_model before any work
    ir = ov.convert_model(str(onnx_file))
    for key, value in meta.to_strings().items():
        ir.set_rt_info(value, ["avseg", key])
    ov.save_model(ir, str(dest_xml), compress_to_fp16=False)




def export_model(weights: str | Path, fmt: str, out: str | Path, *, impl: str = "auto", model: AVSegFormer | None = None,
                 sha256: str | None = None) -> Exported:
    """Export the checkpoint ``weights`` to ``out`` (``.onnx``, or ``.xml`` + ``.bin``) in ``fmt`` (``onnx`` or
    ``openvino``). ``impl``: the arithmetic traced, ``reference``, ``fast`` or ``auto`` (:data:`AUTO_IMPL`, the
    faster for the format's runtime; see the module's doc).
    ``model``/``sha256``: already loaded or hashed (the same checkpoint), to skip loading or hashing it again."""
    if fmt not in FORMATS:
        raise AvsegError(f"--format must be {' or '.join(FORMATS)}, not {fmt!r}")
    if impl not in ("auto", "reference", "fast"):
        raise AvsegError(f"--impl must be auto, reference or fast, not {impl!r}")
    impl = AUTO_IMPL[fmt] if impl == "auto" else impl
    out = Path(out)
    if out.suffix != SUFFIX[fmt]:
        raise AvsegError(f"--format {fmt} writes a {SUFFIX[fmt]} file", path=out)
    if out.is_dir():
        raise AvsegError("is a folder; --out names the file to write", path=out)
    _import("onnxscript", "onnx")
    if fmt == "openvino":
        _import("openvino", fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if model is None:
        model = load_model(weights, device="cpu", impl=impl).float().eval()
    meta = describe(model.config, model.num_classes, sha256 or sha256sum(weights), weights, OPSET, model.impl)
    with tempfile.TemporaryDirectory(prefix=".avseg-export-", dir=out.parent) as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        _onnx(model, meta, onnx_file)
        if fmt == "onnx":
            os.replace(onnx_file, out)
            size = out.stat().st_size
        else:
            xml = Path(tmp) / "model.xml"
            _openvino(onnx_file, meta, xml)
            os.replace(xml.with_suffix(".bin"), out.with_suffix(".bin"))  # the .xml last: it names a complete pair
            os.replace(xml, out)
            size = out.stat().st_size + out.with_suffix(".bin").stat().st_size
    return Exported(path=out, format=fmt, bytes=size, seconds=time.perf_counter() - t0, meta=meta)
