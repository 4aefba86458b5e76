"""Random state dicts in the exact layout of the six released checkpoints load with every key accounted for."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import avsegcli
from avsegcli.errors import CheckpointError
from avsegcli.weights import OFFICIAL_UNUSED, read_checkpoint
from conftest import run_cli

ENTRIES = ["s4_res50", "s4_pvt2", "ms3_res50", "ms3_pvt2", "avss_res50", "avss_pvt2"]


@pytest.fixture(scope="module")
def layouts(reference_dir):
    return json.loads((reference_dir / "official_checkpoint_keys.json").read_text())


def _random_state(layout: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout["state_dict"].items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(100, dtype=torch.long)
        elif key.endswith("running_var"):  # a variance: positive, or batch norm gives NaN
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.02
    return out


UNUSED_PREFIXES = ("backbone.layer3_2.", "backbone.layer4_2.")  # the benchmark ResNet's second branch


def _our_name(key: str) -> str:
    """The authors' key -> ours, written out by hand from shared/reference/README.md (independent of the rename
    table in avsegcli/weights.py)."""
    parts = key.split(".")
    if parts[0] == "backbone":
        b = parts[1]
        if b in ("layer3_1", "layer4_1"):
            parts[1] = b[:-2]
        elif b == "patch_embed1":
            parts[1] = "patch_embed"
        elif b.startswith("patch_embed"):
            parts[1:2] = ["stages", str(int(b[-1]) - 1), "downsample"]
        elif b.startswith("block"):
            parts[1:2] = ["stages", str(int(b[-1]) - 1), "blocks"]
        elif b.startswith("norm"):
            parts[1:2] = ["stages", str(int(b[-1]) - 1), "norm"]
    out = ".".join(parts)
    return out.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")


@pytest.mark.parametrize("entry", ENTRIES)
def test_official_layout_loads_strictly(entry, layouts, tmp_path):
    layout = layouts[entry]
    state = _random_state(layout)
    task, backbone = entry.split("_")
    path = tmp_path / f"AVSegFormer_{backbone}_{task}.pth"
    torch.save(state, path)

    model, report = read_checkpoint(path)
    expected_preset = f"{task}-{'r50' if backbone == 'res50' else 'pvt2'}"
    assert report.config["name"] == expected_preset
    assert model.num_classes == layout["num_classes"]
    # every key of the file is loaded, except exactly the second ResNet branch (listed by hand here)
    unused = {k for k in state if k.startswith(UNUSED_PREFIXES)}
    assert set(report.unused) == unused and set(report.loaded) == set(state) - unused
    assert len(unused) == (174 if backbone == "res50" else 0)
    assert all(any(re.search(p, k) for p in OFFICIAL_UNUSED) for k in report.unused)

    # every value arrived under the hand-derived name, and the model has no tensor the file did not fill
    ours = model.state_dict()
    mapped = {_our_name(k): k for k in state if k not in unused}
    assert set(mapped) == set(ours)
    for new, old in mapped.items():
        assert torch.equal(ours[new], state[old].to(ours[new].dtype)), (old, new)

    # the public entry point: eval mode, on the CPU, and it runs
    m2 = avsegcli.load_model(path, device="cpu")
    assert not m2.training
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        out = m2(x, torch.randn(1, 1, 96, 64))
        assert out["pred_masks"].shape == (1, layout["num_classes"], 64, 64)
        assert torch.isfinite(out["pred_masks"]).all()
        if backbone == "res50":  # a second code path: torchvision's own ResNet-50 with the file's branch-1 trunk
            from torchvision.models import resnet50

            tv = resnet50().eval()
            trunk = {_our_name(k)[len("backbone."):]: v for k, v in state.items()
                     if k.startswith("backbone.") and k not in unused}
            missing, unexpected = tv.load_state_dict(trunk, strict=False)
            assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
            h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
            want = []
            for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
                h = layer(h)
                want.append(h)
            for got, exp in zip(m2.backbone(x), want):
                # float rounding only (the model may fuse or reorder ops on its fast path): measured 3.7e-9
                torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-6)
    del model, m2, state


def test_broken_files_name_the_key(layouts, tmp_path):
    state = _random_state(layouts["s4_res50"])
    removed = "head.transformer.decoder.layers.3.linear1.weight"
    renamed = "head.fusion_block.proj.bias"
    reshaped = "head.mlp.layers.0.weight"
    del state[removed]
    state["head.fusion_block.projection.bias"] = state.pop(renamed)
    state[reshaped] = torch.zeros(2048, 100, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    for needle in (removed, renamed, "head.fusion_block.projection.bias", reshaped, "s4-r50", str(path)):
        assert needle in msg, (needle, msg)
    assert "\n" not in msg

    proc = run_cli("weights", "info", path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert removed in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_weights_info_reports_counts(layouts, tmp_path):
    """The README's figures, and the same counts summed by hand from the reference key list."""
    readme = {"s4_res50": ("151.0 M", "126.8 M", "2.1 M", "22.1 M"), "avss_pvt2": ("186.1 M", "184.0 M", "2.1 M", "0.0 M")}
    for entry, (total, used, inter, unused) in readme.items():
        shapes = layouts[entry]["state_dict"]
        numel = {k: math.prod(s) for k, s in shapes.items()}
        hand_unused = sum(n for k, n in numel.items() if k.startswith(UNUSED_PREFIXES))
        hand_inter = sum(n for k, n in numel.items() if k.startswith(("head.fpn.", "head.attn_fc.")))
        path = tmp_path / f"{entry}.pth"
        torch.save(_random_state(layouts[entry]), path)
        proc = run_cli("weights", "info", path, "--json")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        expect_preset = "s4-r50" if entry == "s4_res50" else "avss-pvt2"
        assert data["preset"] == expect_preset
        assert data["values_in_file"] == sum(numel.values())
        assert data["values_unused"] == hand_unused
        assert data["values_intermediate_only"] == hand_inter
        assert data["values_used_by_forward"] == sum(numel.values()) - hand_unused - hand_inter
        assert data["keys_in_file"] == len(shapes) and data["keys_unused"] == sum(k.startswith(UNUSED_PREFIXES) for k in shapes)
        got = [f"{data[k] / 1e6:.1f} M" for k in ("values_in_file", "values_used_by_forward",
                                                   "values_intermediate_only", "values_unused")]
        assert got == [total, used, inter, unused]  # as README.md states them
        table = run_cli("weights", "info", path)
        assert table.returncode == 0 and total in table.stdout and expect_preset in table.stdout
        path.unlink()


def test_not_a_checkpoint(tmp_path):
    for name, content in (("text.pth", b"hello world\n"), ("empty.pth", b"")):
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(p)
        assert str(p) in str(info.value)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.pth")


def test_convert_to_our_format_gives_identical_outputs(layouts, tmp_path):
    src = tmp_path / "AVSegFormer_pvt2_ms3.pth"
    torch.save(_random_state(layouts["ms3_pvt2"], seed=3), src)
    dst = tmp_path / "ms3.safetensors"
    proc = run_cli("weights", "convert", src, dst)
    assert proc.returncode == 0, proc.stderr
    official, ours = avsegcli.load_model(src), avsegcli.load_model(dst)
    assert ours.config["name"] == "ms3-pvt2"
    x, a = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(official(x, a)["pred_masks"], ours(x, a)["pred_masks"], rtol=0, atol=0)


def test_convert_half_stores_float16_and_loads_float32(tmp_path):
    from avsegcli.weights import save_checkpoint

    torch.manual_seed(0)
    model = avsegcli.build_model("tiny")
    src, dst = save_checkpoint(model, tmp_path / "tiny.safetensors"), tmp_path / "tiny-half.safetensors"
    proc = run_cli("weights", "convert", src, dst, "--half")
    assert proc.returncode == 0, proc.stderr
    assert 0.45 < dst.stat().st_size / src.stat().st_size < 0.55
    half = avsegcli.load_model(dst)
    for (name, p), q in zip(model.state_dict().items(), half.state_dict().values()):
        assert q.dtype == p.dtype, name
        assert torch.equal(q, p.to(torch.float16).to(p.dtype) if p.is_floating_point() else p), name
