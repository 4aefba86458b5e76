"""README promises about loading checkpoints: nothing but tensors is ever unpickled (``weights_only=True``), the
usual wrappers (``module.`` prefix, ``{"state_dict": ...}``) are accepted, and S4 vs MS3 (same layout) is decided
by the file name alone."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from avsegcli.errors import CheckpointError
from avsegcli.weights import _read_pth, detect_official_preset, read_checkpoint
from conftest import run_cli


class _Trap:
    """Unpickling this object creates ``marker`` (what a hostile pickle could do instead)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_non_tensor_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "AVSegFormer_res50_s4.pth"
    torch.save({"backbone.layer3_1.0.conv1.weight": torch.zeros(1), "trap": _Trap(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value) and "cannot read as a PyTorch checkpoint" in str(info.value)
    assert not marker.exists(), "the pickle's code ran: the file was not loaded with weights_only=True"
    # the CLI: one line, exit 2, still nothing executed
    proc = run_cli("weights", "info", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and str(path) in proc.stderr
    assert not marker.exists()
    # sanity of the trap itself: a plain (unsafe) load does run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_values_next_to_tensors_are_refused(tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save({"head.fc.4.weight": torch.zeros(1, 2), "epoch": 3}, path)  # loads under weights_only, not a state dict
    with pytest.raises(CheckpointError, match="is not a state dict of tensors"):
        read_checkpoint(path)


def test_wrappers_and_module_prefix_are_unwrapped(tmp_path):
    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.tensor([1.5, -2.0])}
    variants = {
        "plain": state,
        "module": {f"module.{k}": v for k, v in state.items()},
        "state_dict": {"state_dict": state, "epoch_tensor": torch.tensor(3)},
        "state_dict_module": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        "model": {"model": state},
    }
    for name, obj in variants.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        got = _read_pth(path)
        assert set(got) == set(state), name
        assert all(torch.equal(got[k], state[k]) for k in state), name
    # a prefix on only some keys is not a DataParallel file: kept as is
    torch.save({"module.a.weight": state["a.weight"], "b.bias": state["b.bias"]}, tmp_path / "half.pth")
    assert set(_read_pth(tmp_path / "half.pth")) == {"module.a.weight", "b.bias"}


def _one_class_official_state(layouts: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    out = {}
    for key, shape in layouts["s4_res50"]["state_dict"].items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.02
    return out


def test_s4_or_ms3_from_the_file_name_alone(reference_dir, tmp_path):
    layouts = json.loads((reference_dir / "official_checkpoint_keys.json").read_text())
    assert layouts["s4_res50"]["state_dict"] == layouts["ms3_res50"]["state_dict"]  # the keys cannot tell them apart
    state = _one_class_official_state(layouts)
    cases = {
        "AVSegFormer_res50_s4.pth": "s4-r50",
        "AVSegFormer_res50_ms3.pth": "ms3-r50",
        "my-MS3-finetune.pth": "ms3-r50",
        "renamed.pth": "s4-r50",  # a renamed ms3 file is taken for S4: only the name can tell
    }
    for name, want in cases.items():
        assert detect_official_preset(state, str(tmp_path / name)) == want, name
    # the folder does not count, only the file's own name
    assert detect_official_preset(state, str(tmp_path / "ms3" / "model.pth")) == "s4-r50"

    # end to end: an ms3 file renamed, wrapped in {"state_dict": ...} with DataParallel's prefix
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    for name, want in (("AVSegFormer_res50_ms3.pth", "ms3-r50"), ("copy.pth", "s4-r50")):
        path = tmp_path / name
        torch.save(wrapped, path)
        model, report = read_checkpoint(path)
        assert report.config["name"] == want and report.config["task"] == want[:-4]
        ours = model.state_dict()
        assert torch.equal(ours["backbone.layer4.2.conv3.weight"], state["backbone.layer4_1.2.conv3.weight"])
        assert torch.equal(ours["head.fc.4.weight"], state["head.fc.4.weight"])
        assert len(report.unused) == 174
        del model
        path.unlink()
