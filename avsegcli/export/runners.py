"""onnxruntime and OpenVINO behind one call: ``runner(frames, log_mel) -> logits``, on the CPU.

A runner opens an exported file (``avseg export``), reads and checks its metadata (:mod:`avsegcli.export.meta`)
and its graph's shapes, and runs batches of any size. Everything around the forward (decode, audio, batching,
masks, resume, ``--format``, ``--ray``) is the torch backend's code: :class:`~avsegcli.inference.predictor.Predictor`
calls the runner where it would call the model. A file that cannot be opened, was not made by ``avseg export``,
or whose graph is another preset's is one :class:`AvsegError` line; so is a backend that is not installed.

Precision: onnxruntime runs the graph in float32 (``--precision auto`` or ``fp32``). OpenVINO's CPU plugin picks
its own inference precision under ``auto`` (bf16 on CPUs with AVX512-BF16 or AMX, else f32); ``fp32``, ``bf16``
and ``fp16`` ask for one by name. The precision that ran is :attr:`Runner.precision` and lands in ``meta.json``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from avsegcli.errors import AvsegError
from avsegcli.export.meta import INPUTS, KEYS, ExportMeta, check_graph, parse

BACKENDS = ("torch", "onnxruntime", "openvino")
FORMAT_OF = {"onnxruntime": "onnx", "openvino": "openvino"}
EXTRA_OF = {"onnxruntime": "onnx", "openvino": "openvino"}  # the pip extra that installs each backend
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_OV_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def require(module: str, extra: str, missing: str):
    """``module`` (an optional extra's package, imported only when used), or one :class:`AvsegError` line:
    ``missing``, then how to install ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AvsegError(f"{missing}: pip install 'avseg[{extra}]' (or pip install -e '.[{extra}]' in a checkout)") from None


def _import(backend: str):
    return require(backend, EXTRA_OF[backend], f"--backend {backend} is not installed")


def _first_line(err: BaseException) -> str:
    """The line of a runtime's exception that says what is wrong (OpenVINO leads with where it was raised)."""
    text = [t.strip() for t in str(err).strip().splitlines() if t.strip()]
    said = [t for t in text if not t.startswith(("Exception from ", "Check '"))]
    return ((said or text)[-1] if text else type(err).__name__)[:300]


def _check_ir(path: Path) -> None:
    """A ``.xml`` that is OpenVINO IR (an XML document whose root is ``<net>``) with its ``.bin`` beside it; checked
    before OpenVINO reads it, which would otherwise try every frontend it has (and log to stderr from each)."""
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip()
    if not (head.startswith(b"<?xml") or head.startswith(b"<net")) or b"<net" not in head:
        raise AvsegError("is not OpenVINO IR (an XML file whose root is <net>); make one with `avseg export --format openvino`", path=path)
    if not path.with_suffix(".bin").is_file():
        raise AvsegError(f"its weights file {path.with_suffix('.bin').name} is missing (an IR model is a .xml and a .bin)", path=path)


class Runner:
    """One opened export. ``name``/``version``: the backend; ``precision``: what it computes in; ``meta``: the
    file's metadata; ``device``: where it runs (``cpu``; onnxruntime's CUDA provider: ``cuda``)."""

    name = ""
    version = ""
    precision = "fp32"
    device = "cpu"

    def __init__(self, path: Path, meta: ExportMeta) -> None:
        self.path, self.meta = path, meta

    def info(self) -> dict[str, str]:
        return {"backend": self.name, "backend_version": self.version, "exported": str(self.path)}

    def run(self, frames: np.ndarray, log_mel: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, frames: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
        """``frames [B, 3, S, S]`` normalised float32, ``log_mel [B, 1, 96, 64]`` -> ``[B, K, S, S]`` float32 logits
        (CPU tensors)."""
        f = np.ascontiguousarray(frames.detach().cpu().float().numpy())
        m = np.ascontiguousarray(log_mel.detach().cpu().float().numpy())
        return torch.from_numpy(self.run(f, m))


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: Path, precision: str = "auto", device: str = "cpu", threads: int | None = None) -> None:
        ort = _import("onnxruntime")
        if precision not in ("auto", "fp32"):
            raise AvsegError(f"--backend onnxruntime runs the exported float32 graph (--precision auto or fp32), not {precision}")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise AvsegError("--backend onnxruntime on CUDA needs onnxruntime-gpu (pip install onnxruntime-gpu); "
                                 f"this one has {', '.join(ort.get_available_providers())}")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            self.device = "cuda"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: its warnings are about its internals
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own types for unreadable or invalid models
            raise AvsegError(f"onnxruntime cannot open this file as an ONNX model: {_first_line(e)}", path=path) from None
        meta = parse(dict(self.session.get_modelmeta().custom_metadata_map), path)
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUTS:
            raise AvsegError(f"takes inputs {names}, not {INPUTS}: not an avseg export", path=path)
        check_graph(meta, list(self.session.get_inputs()[0].shape), list(self.session.get_outputs()[0].shape), path)
        super().__init__(Path(path), meta)
        self.version = ort.__version__

    def run(self, frames: np.ndarray, log_mel: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"frames": frames, "log_mel": log_mel})[0]


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, path: Path, precision: str = "auto", device: str = "cpu", threads: int | None = None) -> None:
        ov = _import("openvino")
        if device != "cpu":
            raise AvsegError(f"--backend openvino runs on the CPU here (--device cpu or auto), not {device}")
        if precision not in ("auto", *_OV_PRECISION):
            raise AvsegError(f"--backend openvino takes --precision auto, fp32, bf16 or fp16, not {precision}")
        if Path(path).suffix != ".xml":
            raise AvsegError("--backend openvino reads OpenVINO IR (.xml with its .bin): make one with "
                             "`avseg export --format openvino`, or run an .onnx file with --backend onnxruntime", path=path)
        _check_ir(Path(path))
        core = ov.Core()
        try:
            model = core.read_model(str(path), str(Path(path).with_suffix(".bin")))
        except Exception as e:  # openvino raises RuntimeError subclasses of its own
            raise AvsegError(f"OpenVINO cannot read this file as an IR model: {_first_line(e)}", path=path) from None
        pairs = {key: model.get_rt_info(["avseg", key]).astype(str) for key in KEYS if model.has_rt_info(["avseg", key])}
        meta = parse(pairs, path)
        names = tuple(p.get_any_name() for p in model.inputs)
        if names != INPUTS:
            raise AvsegError(f"takes inputs {names}, not {INPUTS}: not an avseg export", path=path)
        dims = [[d.get_length() if d.is_static else None for d in port.get_partial_shape()] for port in (model.inputs[0], model.outputs[0])]
        check_graph(meta, dims[0], dims[1], path)
        config = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = _OV_PRECISION[precision]
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise AvsegError(f"OpenVINO cannot compile it for this CPU with --precision {precision}: {_first_line(e)}", path=path) from None
        super().__init__(Path(path), meta)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type: f32, bf16, f16
        self.precision = _OV_NAMES.get(hint.get_type_name(), hint.get_type_name())
        self.request = self.compiled.create_infer_request()
        self.version = ov.__version__

    def run(self, frames: np.ndarray, log_mel: np.ndarray) -> np.ndarray:
        self.request.infer({"frames": frames, "log_mel": log_mel})
        return self.request.get_output_tensor(0).data.copy()  # the request reuses its output buffer


def open_runner(backend: str, path: str | Path, *, precision: str = "auto", device: str = "cpu",
                threads: int | None = None) -> Runner:
    """The runner of ``backend`` (``onnxruntime`` or ``openvino``) over the exported file ``path``."""
    if backend not in FORMAT_OF:
        raise AvsegError(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")
    path = Path(path)
    if not path.is_file():
        raise AvsegError("no such exported model file", path=path)
    cls = OnnxRuntimeRunner if backend == "onnxruntime" else OpenVinoRunner
    return cls(path, precision=precision, device=device, threads=threads)
