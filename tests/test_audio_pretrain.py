"""``avseg pretrain-audio``: VGGish learns the sounding categories of a synthetic train split and loads into
``avseg train --vggish-weights``."""

from __future__ import annotations

import json

import pytest
import torch

from avsegcli.build import build_model, preset
from avsegcli.errors import AvsegError
from avsegcli.synth import generate
from avsegcli.synth.audio_pretrain import load_labelled_patches, pretrain_audio
from avsegcli.train.init_weights import load_vggish_weights
from conftest import run_cli


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_s4")
    generate("s4", root, {"train": 16, "val": 4}, seed=5, splits=("train", "val"), mp4=False, image_size=64)
    return root


def test_labels_follow_the_manifest(synth_root):
    mels, targets, names = load_labelled_patches(synth_root, "train")
    manifest = json.loads((synth_root / "synth_s4.json").read_text())
    clips = [c for c in manifest["clips"] if c["split"] == "train"]
    assert mels.shape == (16 * 5, 1, 96, 64) and targets.shape == (16 * 5, len(names))
    expected = [[n in sounding for n in names] for c in clips for sounding in c["sounding"]]
    assert targets.bool().tolist() == expected
    assert (targets.sum(1) == 0).any() and (targets.sum(1) == 1).any()  # silent seconds and single sources


def test_pretrained_vggish_names_the_sounds_and_loads_for_training(synth_root, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "vggish.pth"
    res = pretrain_audio(synth_root, out, steps=150, batch_size=32, lr=2e-3, seed=0)
    print(res)
    # untrained: BCE ~0.69 and only the silent seconds (~1 in 6) right; the 4 val clips were never seen
    assert res["train"]["bce"] < 0.2 and res["train"]["exact"] >= 0.7 and res["val"]["exact"] >= 0.5
    assert out.is_file() and not out.with_name(out.name + ".partial").exists()
    model = build_model(preset("synth"))
    before = model.vggish.features[0].weight.clone()
    load_vggish_weights(model, out)
    assert not torch.equal(before, model.vggish.features[0].weight)
    assert torch.equal(model.vggish.features[0].weight, torch.load(out, weights_only=True)["features.0.weight"])


def test_not_a_synthetic_dataset_is_one_line(tmp_path):
    with pytest.raises(AvsegError, match="not a synthetic S4 dataset"):
        load_labelled_patches(tmp_path, "train")
    proc = run_cli("pretrain-audio", "--data", tmp_path, "--out", tmp_path / "v.pth")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a synthetic S4 dataset" in proc.stderr
