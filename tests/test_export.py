"""``avseg export`` and ``--backend onnxruntime|openvino`` (avsegcli/export): the exported graph against torch
float32, dynamic batch, metadata, the on-the-fly cache, ``avseg run`` through each backend against the torch
backend, and one error line for every file or setup that cannot work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avsegcli import __version__
from avsegcli.build import build_model, preset
from avsegcli.errors import AvsegError
from avsegcli.export.cache import cached_export, exports_dir
from avsegcli.export.exporter import export_model
from avsegcli.export.gates import compare, random_inputs
from avsegcli.export.runners import open_runner
from avsegcli.inference.predictor import REPO_WEIGHTS, DEFAULT_WEIGHTS_NAME, Predictor
from avsegcli.masks.io import read_masks_dir
from avsegcli.weights import load_model, save_checkpoint, sha256sum
from conftest import REPO, run_cli

pytest.importorskip("onnxruntime", reason="the [onnx] extra (in the test extra) is not installed")
pytest.importorskip("openvino", reason="the [openvino] extra (in the test extra) is not installed")

BUNDLED = REPO_WEIGHTS / DEFAULT_WEIGHTS_NAME
DEMO = REPO / "samples" / "demo.mp4"
#: float32 backends against torch float32 (max |err| over the reference logits' std; measured ~1e-5)
FP32_MAX_REL = 1e-3
FP32_MASK_EQUAL = 0.999
BACKEND_KEYS = {"precision", "impl", "backend", "backend_version", "exported"}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A private AVSEG_HOME for the module (the export cache), set for this process and the CLI's."""
    path = tmp_path_factory.mktemp("avseg-home")
    before = os.environ.get("AVSEG_HOME")
    os.environ["AVSEG_HOME"] = str(path)
    yield path
    if before is None:
        os.environ.pop("AVSEG_HOME", None)
    else:
        os.environ["AVSEG_HOME"] = before


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Binary and semantic (71 classes) tiny checkpoints with seed-0 weights, each exported to both formats."""
    base = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    files = {"binary": save_checkpoint(build_model("tiny"), base / "binary.safetensors"),
             "semantic": save_checkpoint(build_model(preset("tiny", task="avss", head={"num_classes": 71})),
                                         base / "semantic.safetensors")}
    out = dict(files)
    for kind, ckpt in files.items():
        out[f"{kind}.onnx"] = export_model(ckpt, "onnx", base / f"{kind}.onnx").path
        out[f"{kind}.xml"] = export_model(ckpt, "openvino", base / f"{kind}.xml").path
    # auto took the reference graph for onnx and the fast one for openvino; the other two combinations
    out["binary.fast.onnx"] = export_model(files["binary"], "onnx", base / "binary-fast.onnx", impl="fast").path
    out["semantic.ref.xml"] = export_model(files["semantic"], "openvino", base / "semantic-ref.xml", impl="reference").path
    return out


def _torch_logits(ckpt: Path, frames: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return load_model(ckpt, impl="reference")(frames, log_mel)["pred_masks"]


@pytest.mark.parametrize("kind", ["binary", "semantic"])
@pytest.mark.parametrize("backend, suffix", [("onnxruntime", "onnx"), ("openvino", "xml")])
def test_exported_logits_match_torch_fp32_at_any_batch(tiny, kind, backend, suffix):
    runner = open_runner(backend, tiny[f"{kind}.{suffix}"], precision="fp32")
    assert runner.precision == "fp32"
    for batch in (1, 3):  # exported with a batch of 2: the batch dimension is dynamic
        frames, log_mel = random_inputs(runner.meta.image_size, batch, seed=batch)
        got, ref = runner(frames, log_mel), _torch_logits(tiny[kind], frames, log_mel)
        assert got.dtype == torch.float32 and got.shape == ref.shape == (batch, runner.meta.num_classes, 64, 64)
        gates = compare(got, ref)
        assert gates["max_rel"] < FP32_MAX_REL, gates
        assert gates["mask_equal"] >= FP32_MASK_EQUAL, gates


@pytest.mark.parametrize("kind, backend, key, impl", [("binary", "onnxruntime", "binary.fast.onnx", "fast"),
                                                      ("semantic", "openvino", "semantic.ref.xml", "reference")])
def test_either_arithmetic_exports_with_a_dynamic_batch(tiny, kind, backend, key, impl):
    """--impl fast traces the fast path (folded query products, phase up-convolution; its derived weights become
    graph constants and its per-sample loop a batched GEMM); --impl reference the released arithmetic. Either
    format, either graph: within the same tolerance of the torch reference at batch sizes it was not exported with."""
    runner = open_runner(backend, tiny[key], precision="fp32")
    assert runner.meta.impl == impl
    for batch in (1, 3):
        frames, log_mel = random_inputs(64, batch, seed=10 + batch)
        gates = compare(runner(frames, log_mel), _torch_logits(tiny[kind], frames, log_mel))
        assert gates["max_rel"] < FP32_MAX_REL and gates["mask_equal"] >= FP32_MASK_EQUAL, gates


def test_exporting_leaves_the_model_as_it_was(tiny, tmp_path):
    """Tracing the fast path through a loaded model: its caches stay empty of traced tensors, and the same
    model then computes in eager mode exactly as a fresh one."""
    model = load_model(tiny["binary"], impl="fast")
    frames, log_mel = random_inputs(64, 2, seed=4)
    with torch.inference_mode():
        before = model(frames, log_mel)["pred_masks"]
    export_model(tiny["binary"], "onnx", tmp_path / "m.onnx", impl="fast", model=model, sha256="0" * 64)
    with torch.inference_mode():
        after = model(frames, log_mel)["pred_masks"]
    assert torch.equal(before, after)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_bundled_model_logits_match_torch_fp32(home, backend):
    """The trained bundled model, exported into the cache: logits within the float32 tolerance at any batch."""
    runner = open_runner(backend, cached_export(BUNDLED, "onnx" if backend == "onnxruntime" else "openvino"), precision="fp32")
    frames, log_mel = random_inputs(runner.meta.image_size, 5, seed=7)
    gates = compare(runner(frames, log_mel), _torch_logits(BUNDLED, frames, log_mel))
    assert gates["max_rel"] < FP32_MAX_REL and gates["mask_equal"] >= FP32_MASK_EQUAL, gates


@pytest.mark.parametrize("backend, suffix", [("onnxruntime", "onnx"), ("openvino", "xml")])
def test_semantic_padding_frames_give_zero_logits_as_in_torch(tiny, backend, suffix):
    """AVSS evaluation passes frame_valid (padded frames of a clip): a backend zeroes those frames' logits, as the
    torch model does, and keeps the others."""
    frames, log_mel = random_inputs(64, 3, seed=3)
    valid = torch.tensor([1.0, 0.0, 1.0])
    got = Predictor(tiny[f"semantic.{suffix}"], backend=backend, precision="fp32").forward(frames, log_mel, frame_valid=valid)
    ref = Predictor(tiny["semantic"], precision="fp32", impl="reference").forward(frames, log_mel, frame_valid=valid)
    assert torch.count_nonzero(got[1]) == 0 and torch.count_nonzero(got[0]) > 0
    assert compare(got, ref)["max_rel"] < FP32_MAX_REL


@pytest.mark.parametrize("suffix, backend", [("onnx", "onnxruntime"), ("xml", "openvino")])
def test_the_file_carries_its_metadata(tiny, suffix, backend):
    meta = open_runner(backend, tiny[f"semantic.{suffix}"]).meta
    assert (meta.preset, meta.task, meta.num_classes, meta.image_size) == ("tiny", "avss", 71, 64)
    assert meta.source_sha256 == sha256sum(tiny["semantic"]) and meta.source_file == "semantic.safetensors"
    assert meta.avseg_version == __version__ and meta.opset >= 16
    assert meta.impl == {"onnx": "reference", "xml": "fast"}[suffix]  # --impl auto: the faster graph for each runtime
    assert meta.config == load_model(tiny["semantic"]).config


@pytest.mark.parametrize("key", ["binary.onnx", "binary.fast.onnx"])
def test_the_graph_uses_standard_ops_only(tiny, key):
    import onnx

    model = onnx.load(str(tiny[key]))
    domains = {n.domain for n in model.graph.node} | {n.domain for f in model.functions for n in f.node}
    assert domains <= {"", "ai.onnx"}, domains  # no custom op
    ops = {n.op_type for n in model.graph.node} | {n.op_type for f in model.functions for n in f.node}
    assert "GridSample" in ops  # the deformable attention's sampling
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 16
    onnx.checker.check_model(model)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_predictor_backend_matches_torch_on_a_video(tiny, home, backend):
    """Predictor(backend=...) on a checkpoint: exported into the cache on first use, reused after; the same masks
    as the torch backend at fp32 and the same stream of frames."""
    ref = Predictor(tiny["semantic"], precision="fp32", impl="reference", batch_size=3).predict_video(DEMO)
    pred = Predictor(tiny["semantic"], precision="fp32", batch_size=3, backend=backend)
    got = pred.predict_video(DEMO)
    assert np.array_equal(got.timestamps, ref.timestamps)
    assert (got.masks == ref.masks).mean() >= FP32_MASK_EQUAL
    cached = Path(pred.model_info()["exported"])
    assert cached.parent == exports_dir() and cached.name.startswith(sha256sum(tiny["semantic"])[:16])
    stamp = cached.stat().st_mtime_ns
    again = Predictor(tiny["semantic"], precision="fp32", backend=backend)
    assert again.model_info()["exported"] == str(cached) and cached.stat().st_mtime_ns == stamp  # not exported again
    info = pred.model_info()
    assert info["backend"] == backend and info["backend_version"] and info["sha256"] == sha256sum(tiny["semantic"])


def _run(out: Path, *extra: str) -> tuple[dict, np.ndarray]:
    res = run_cli("run", DEMO, "--out", out, "-q", *extra)
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "demo" / "meta.json").read_text())
    return meta, read_masks_dir(out / "demo").masks


def test_avseg_run_through_each_backend_matches_torch(home, tmp_path):
    """The bundled model on the sample: each backend's masks equal the torch backend's on at least 99.9% of
    pixels, and meta.json is the same apart from the backend fields and the seconds."""
    default_meta, default_masks = _run(tmp_path / "torch-default")
    torch_meta, torch_masks = _run(tmp_path / "torch", "--precision", "fp32")
    for backend in ("onnxruntime", "openvino"):
        for precision in ("fp32", "auto"):
            meta, masks = _run(tmp_path / f"{backend}-{precision}", "--backend", backend, "--precision", precision)
            assert meta["model"]["backend"] == backend and meta["model"]["exported"].startswith(str(home))
            assert (masks == torch_masks).mean() >= 0.999 and (masks == default_masks).mean() >= 0.999
            if precision == "fp32":
                assert meta["model"]["precision"] == "fp32"
                strip = lambda m: {**m, "seconds": None, "model": {k: v for k, v in m["model"].items() if k not in BACKEND_KEYS}}
                assert strip(meta) == strip(torch_meta)
    made = sorted(p.suffix for p in exports_dir().glob(f"{sha256sum(BUNDLED)[:16]}*") if p.suffix != ".lock")
    assert made == [".bin", ".onnx", ".xml"]  # once per format, reused by the later runs


def test_avseg_export_prints_size_and_time_and_checks(tmp_path, tiny):
    out = tmp_path / "m.onnx"
    res = run_cli("export", tiny["binary"], "--format", "onnx", "--out", out, "--check", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["bytes"] == out.stat().st_size > 0 and data["seconds"] > 0 and data["preset"] == "tiny"
    assert data["check"]["precision"] == "fp32" and data["check"]["max_rel"] < FP32_MAX_REL
    assert data["check"]["mask_equal"] >= FP32_MASK_EQUAL
    assert not [p for p in tmp_path.iterdir() if p.name != "m.onnx"]  # no temporary left


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _another_preset(tiny, tmp_path: Path) -> Path:
    """The binary tiny export with its metadata claiming the semantic model (71 classes): a graph and metadata
    that disagree, as with a file exported for another preset and relabelled."""
    import onnx

    model = onnx.load(str(tiny["binary.onnx"]))
    other = open_runner("onnxruntime", tiny["semantic.onnx"]).meta.to_strings()
    for prop in model.metadata_props:
        prop.value = other.get(prop.key, prop.value)
    path = tmp_path / "relabelled.onnx"
    onnx.save(model, str(path))
    return path


def _foreign(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_bad_files_are_one_line(tiny, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(tiny["binary.onnx"].read_bytes()[:5000])
    garbage_xml = tmp_path / "garbage.xml"
    garbage_xml.write_text("version: 1\nnot an IR\n")
    truncated = tmp_path / "truncated.xml"
    truncated.write_bytes(tiny["binary.xml"].read_bytes()[:20000])
    truncated.with_suffix(".bin").write_bytes(tiny["binary.xml"].with_suffix(".bin").read_bytes())
    no_bin = tmp_path / "no_bin.xml"
    no_bin.write_bytes(tiny["binary.xml"].read_bytes())
    cases = [
        (["--weights", corrupt, "--backend", "onnxruntime"], ["corrupt.onnx", "onnxruntime cannot open"]),
        (["--weights", _foreign(tmp_path), "--backend", "onnxruntime"], ["foreign.onnx", "not an avseg export"]),
        (["--weights", garbage_xml, "--backend", "openvino"], ["garbage.xml", "is not OpenVINO IR"]),
        (["--weights", truncated, "--backend", "openvino"], ["truncated.xml", "OpenVINO cannot read", "offset"]),
        (["--weights", no_bin, "--backend", "openvino"], ["no_bin.xml", "no_bin.bin is missing"]),
        (["--weights", _another_preset(tiny, tmp_path), "--backend", "onnxruntime"], ["relabelled.onnx", "exported for another preset"]),
        (["--weights", tiny["binary.onnx"]], ["binary.onnx", "run it with --backend onnxruntime or openvino"]),
        (["--weights", tiny["binary.onnx"], "--backend", "openvino"], ["reads OpenVINO IR"]),
        (["--weights", tiny["binary.onnx"], "--backend", "onnxruntime", "--precision", "bf16"], ["float32 graph"]),
        (["--backend", "tensorrt"], ["--backend must be torch, onnxruntime, openvino"]),
    ]
    for args, needles in cases:
        _one_line_error(run_cli("run", DEMO, "--out", tmp_path / "o", *args), *needles)
    assert not (tmp_path / "o" / "demo").exists()
    _one_line_error(run_cli("export", tiny["binary"], "--format", "tflite", "--out", tmp_path / "m.tflite"), "--format must be onnx or openvino")
    _one_line_error(run_cli("export", tiny["binary"], "--format", "openvino", "--out", tmp_path / "m.onnx"), "writes a .xml file")
    _one_line_error(run_cli("export", tiny["binary"], "--format", "onnx", "--impl", "quick", "--out", tmp_path / "m.onnx"), "--impl must be auto, reference or fast")


def test_a_cached_export_of_another_checkpoint_is_refused(tiny, home):
    """The cache is keyed by the checkpoint's hash; a cached file that names another checkpoint (a cache edited by
    hand) is one line, not a silent run of the wrong model."""
    sha = sha256sum(tiny["binary"])
    cached = cached_export(tiny["binary"], "onnx")
    cached.write_bytes(tiny["semantic.onnx"].read_bytes())
    try:
        with pytest.raises(AvsegError, match="was exported from semantic.safetensors"):
            Predictor(tiny["binary"], backend="onnxruntime")
    finally:
        cached.unlink()
    assert cached.name.startswith(sha[:16])


@pytest.mark.parametrize("backend, module", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_a_backend_that_is_not_installed_is_one_line(tiny, backend, module):
    code = ("import sys; sys.modules[%r] = None; sys.argv = ['avseg', 'run', %r, '--out', %r, '--weights', %r, '--backend', %r]; "
            "from avsegcli.cli import main; main()") % (module, str(DEMO), "/nonexistent-out", str(tiny["binary.xml" if backend == "openvino" else "binary.onnx"]), backend)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    _one_line_error(res, f"--backend {backend} is not installed", f"[{'onnx' if backend == 'onnxruntime' else 'openvino'}]")


def test_export_needs_its_extra(tmp_path, tiny):
    code = ("import sys; sys.modules['openvino'] = None; sys.argv = ['avseg', 'export', %r, '--format', 'openvino', '--out', %r]; "
            "from avsegcli.cli import main; main()") % (str(tiny["binary"]), str(tmp_path / "m.xml"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    _one_line_error(res, "needs openvino", "avseg[openvino]")
    assert not list(tmp_path.iterdir())
