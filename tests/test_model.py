"""Shapes of full-size presets, the tiny preset's forward/backward, our checkpoint format round trip."""

from __future__ import annotations

import json

import pytest
import torch

import avsegcli
from avsegcli.build import PRESETS, preset
from avsegcli.weights import read_checkpoint, save_checkpoint
from conftest import run_cli


@pytest.mark.parametrize("name,size,classes", [("s4-r50", 512, 1), ("avss-pvt2", 224, 71)])
def test_full_size_forward_shapes(name, size, classes):
    torch.manual_seed(0)
    model = avsegcli.build_model(name)
    assert model.config["image_size"] == size
    frames = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out = model(frames, torch.randn(1, 1, 96, 64))
    assert out["pred_masks"].shape == (1, classes, size, size)
    assert out["mask_feature"].shape == (1, 256, size // 4, size // 4)
    assert out["queries"].shape == (1, 300, 256)
    assert torch.isfinite(out["pred_masks"]).all()


def test_presets_fix_released_sizes():
    for name in ("s4-r50", "s4-pvt2", "ms3-r50", "ms3-pvt2", "avss-r50", "avss-pvt2"):
        cfg = preset(name)
        head = cfg["head"]
        assert (head["num_queries"], head["encoder_layers"], head["decoder_layers"], head["query_layers"]) == (300, 6, 6, 6)
        assert head["ffn_dim"] == 2048 and head["dim"] == 256
        assert head["num_classes"] == (71 if name.startswith("avss") else 1)
        assert cfg["image_size"] == (224 if name.startswith("avss") else 512)
    assert set(PRESETS) >= {"tiny", "s4-r50", "avss-pvt2"}
    # every size is a constructor argument: override one and it changes the model
    small = avsegcli.build_model(preset("tiny", head={"num_queries": 5, "decoder_layers": 3}))
    assert small.head.learnable_query.weight.shape[0] == 5 and len(small.head.transformer.decoder.layers) == 3


def test_tiny_forward_backward_reaches_every_trained_part():
    torch.manual_seed(0)
    model = avsegcli.build_model("tiny").train()
    frames, log_mel = torch.randn(4, 3, 64, 64), torch.randn(4, 1, 96, 64)
    out = model(frames, log_mel, return_intermediate=True)
    assert out["pred_masks"].shape == (4, 1, 64, 64)
    assert len(out["intermediate_masks"]) == 2 and out["intermediate_masks"][0].shape == (4, 1, 64, 64)
    loss = out["pred_masks"].sigmoid().mean() + sum(m.sigmoid().mean() for m in out["intermediate_masks"])
    loss.backward()
    for name in ("backbone.patch_embed.proj.weight", "head.fc.4.weight", "head.attn_fc.4.weight", "head.fpn.up1.1.weight",
                 "head.transformer.decoder.layers.0.cross_attn.in_proj_weight", "head.query_generator.query.weight",
                 "head.transformer.encoder.layers.0.self_attn.value_proj.weight", "audio_proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.vggish.parameters())  # frozen


def test_padded_frames_predict_zero():
    model = avsegcli.build_model("tiny")
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64), torch.randn(3, 1, 96, 64), frame_valid=torch.tensor([1, 0, 1]))
    assert out["pred_masks"][1].abs().max() == 0 and out["pred_masks"][0].abs().max() > 0


def test_our_format_round_trip_and_info(tmp_path):
    torch.manual_seed(1)
    model = avsegcli.build_model("tiny")
    path = save_checkpoint(model, tmp_path / "tiny.safetensors")
    loaded = avsegcli.load_model(path, impl="reference")  # the round trip is exact on the reference arithmetic
    x, a = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, a)["pred_masks"], loaded(x, a)["pred_masks"], rtol=0, atol=0)
    _, report = read_checkpoint(path)
    assert report.config == model.config and report.source_format == "avseg"
    proc = run_cli("weights", "info", path, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["preset"] == "tiny" and info["num_classes"] == 1
    assert info["values_in_file"] == sum(t.numel() for t in model.state_dict().values())


def test_cli_help_and_version():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "weights" in proc.stdout
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"avseg {avsegcli.__version__}"
