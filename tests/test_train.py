"""``avseg train``: losses, initialisation files, loss going down, exact resume, torchrun == one process, CLI errors.

Everything runs on the CPU with the ``tiny`` preset at 32x32 on generated AVSBench-layout datasets (random
content: the model can only memorise, which is all these tests ask).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from avsegcli.build import build_model, preset
from avsegcli.data import write_fake_avsbench
from avsegcli.errors import AvsegError, CheckpointError
from avsegcli.losses import SegmentationLoss, dice_per_frame, loss_weights
from avsegcli.train import TrainConfig
from avsegcli.train.config import lr_at
from avsegcli.train.engine import train
from avsegcli.train.data import epoch_batches, rank_share
from avsegcli.train.init_weights import load_backbone_weights, load_init_checkpoint, load_vggish_weights
from avsegcli.train.state import read_log
from avsegcli.weights import rename_official_key, save_checkpoint
from conftest import REPO

SIZE = 32
AVSS_TINY = {"head": {"num_classes": 71}}
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model modules: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("avsbench")
    write_fake_avsbench(root, "s4", videos_per_split=2, seed=1, image_hw=(SIZE, SIZE))
    write_fake_avsbench(root, "ms3", videos_per_split=2, seed=2, image_hw=(SIZE, SIZE))
    write_fake_avsbench(root, "avss", videos_per_split=1, seed=3, image_hw=(SIZE, SIZE))
    return root


@pytest.fixture(scope="module")
def s4_six(tmp_path_factory) -> Path:
    """S4 with 6 train clips: 3 steps per epoch at batch size 2, so step 10 stops inside an epoch."""
    return write_fake_avsbench(tmp_path_factory.mktemp("s4six"), "s4", videos_per_split=6, seed=4, image_hw=(SIZE, SIZE))


def tiny_config(task: str, data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(task=task, data=str(data), out=str(out), preset="tiny", image_size=SIZE, lr=1e-3, batch_size=2,
                log_every=1, num_workers=0, val_every=0, model_overrides=AVSS_TINY if task == "avss" else {})
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------------ losses


def test_loss_terms_weights_and_supervised_frames():
    assert loss_weights("both", 2) == {"loss_main": 1.0, "loss_mix": 0.1, "loss_inter_0": 1.0, "loss_inter_1": 1.0}
    assert loss_weights("mix", 2) == {"loss_main": 1.0, "loss_mix": 0.1}
    assert loss_weights("intermediate", 2) == {"loss_main": 1.0, "loss_inter_0": 1.0, "loss_inter_1": 1.0}
    assert loss_weights("none", 2) == {"loss_main": 1.0}

    # the released dice: 1 - 2 sum(pg) / (sum(p^2) + 0.001 + sum(g^2) + 0.001)
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 3.0]]])
    g = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    p = torch.sigmoid(logits)
    want = 1 - 2 * (p * g).sum() / ((p * p).sum() + 0.001 + (g * g).sum() + 0.001)
    assert torch.allclose(dice_per_frame(logits, g), want.reshape(1))

    # S4: only the supervised frames count; changing an unsupervised frame's prediction changes nothing
    torch.manual_seed(0)
    n, h = 10, 8
    out = {"pred_masks": torch.randn(n, 1, h, h), "mask_feature": torch.randn(n, 4, 2, 2)}
    masks = (torch.rand(n, h, h) > 0.5).float()
    sup = torch.zeros(n, dtype=torch.bool)
    sup[[0, 5]] = True  # frame 0 of two clips
    crit = SegmentationLoss("s4", "dice", aux="mix")
    t1 = crit(out, masks, sup)
    out2 = dict(out, pred_masks=out["pred_masks"].clone())
    out2["pred_masks"][1:5] += 5
    assert torch.equal(crit(out2, masks, sup)["loss_main"], t1["loss_main"])
    assert torch.allclose(t1["loss_main"], dice_per_frame(out["pred_masks"][[0, 5]], masks[[0, 5]]).mean())
    mix = torch.nn.functional.interpolate(out["mask_feature"].mean(1, keepdim=True), size=(h, h), mode="bilinear")
    assert torch.allclose(t1["loss_mix"], dice_per_frame(mix[[0, 5]], masks[[0, 5]]).mean())
    assert torch.allclose(t1["total"], t1["loss_main"] + 0.1 * t1["loss_mix"])

    # AVSS: CE per frame (pixel mean) x gt flag, / number of flagged frames; mix = dice against gt > 0
    logits = torch.randn(4, 71, h, h)
    ids = torch.randint(0, 71, (4, h, h))
    gt = torch.tensor([True, False, True, False])
    crit = SegmentationLoss("avss", aux="mix")
    t = crit({"pred_masks": logits, "mask_feature": torch.randn(4, 4, 2, 2)}, ids, gt)
    ce = torch.nn.functional.cross_entropy(logits, ids, reduction="none").mean((1, 2))
    assert torch.allclose(t["loss_main"], (ce * gt).sum() / gt.sum())


def test_intermediate_loss_reaches_every_decoder_layer():
    torch.manual_seed(0)
    model = build_model(preset("tiny", image_size=SIZE)).train()
    n = 2
    out = model(torch.randn(n, 3, SIZE, SIZE), torch.randn(n, 1, 96, 64), return_intermediate=True)
    crit = SegmentationLoss("s4", "dice", aux="intermediate", num_layers=2)
    terms = crit(out, (torch.rand(n, SIZE, SIZE) > 0.5).float(), torch.ones(n, dtype=torch.bool))
    assert set(terms) == {"loss_main", "loss_inter_0", "loss_inter_1", "total"}

    def grads(term: str) -> dict[int, float]:
        model.zero_grad(set_to_none=True)
        terms[term].backward(retain_graph=True)
        norms = {}
        for layer in (0, 1):
            ps = list(model.head.transformer.decoder.layers[layer].parameters())
            norms[layer] = sum(float(p.grad.abs().sum()) for p in ps if p.grad is not None)
        return norms

    g0, g1 = grads("loss_inter_0"), grads("loss_inter_1")
    assert g0[0] > 0 and g0[1] == 0  # layer 0's mask depends on layer 0 only
    assert g1[0] > 0 and g1[1] > 0  # layer 1's mask back-propagates through both layers
    assert float(model.head.attn_fc[0].weight.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------------ initialisation


def _inverse_pvt_name(key: str) -> str:
    """Our timm-layout backbone key -> the PVTv2 authors' name (the inverse of weights.OFFICIAL_RENAMES)."""
    import re

    key = re.sub(r"^patch_embed\.", "patch_embed1.", key)
    key = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", key)
    key = re.sub(r"^stages\.(\d)\.blocks\.", lambda m: f"block{int(m.group(1)) + 1}.", key)
    key = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}.", key)
    return key.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")


def test_resnet50_imagenet_file(tmp_path):
    from torchvision.models import resnet50

    state = resnet50().state_dict()  # torchvision keys, fc.* included
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = build_model(preset("tiny", backbone={"kind": "resnet50"}))
    load_backbone_weights(model, path)
    mine = model.backbone.state_dict()
    assert set(mine) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(mine[k], state[k]) for k in mine)

    broken = {k: v for k, v in state.items() if k != "layer2.0.conv1.weight"}
    broken["layer9.extra"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): layer2\.0\.conv1\.weight; 1 unexpected key\(s\): layer9\.extra"):
        load_backbone_weights(model, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="is a ResNet-50 backbone but the model's backbone is PVTv2"):
        load_backbone_weights(build_model("tiny"), path)


def test_pvt_vggish_and_init_files(tmp_path):
    torch.manual_seed(1)
    src = build_model("tiny")
    official = {_inverse_pvt_name(k): v for k, v in src.backbone.state_dict().items()}
    assert "patch_embed1.proj.weight" in official and "block1.0.mlp.dwconv.dwconv.weight" in official
    assert all(rename_official_key("backbone." + _inverse_pvt_name(k)) == "backbone." + k for k in src.backbone.state_dict())
    official["head.weight"] = torch.zeros(1000, 64)  # the ImageNet classifier is dropped
    torch.save(official, tmp_path / "pvt.pth")
    torch.save(src.vggish.state_dict(), tmp_path / "vggish.pth")  # features.N.*, embeddings.N.*
    assert any(k.startswith("features.") for k in src.vggish.state_dict())

    model = build_model("tiny")
    load_backbone_weights(model, tmp_path / "pvt.pth")
    load_vggish_weights(model, tmp_path / "vggish.pth")
    for part in ("backbone", "vggish"):
        a, b = getattr(model, part).state_dict(), getattr(src, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)

    save_checkpoint(src, tmp_path / "full.safetensors")
    fresh = build_model("tiny")
    load_init_checkpoint(fresh, tmp_path / "full.safetensors")
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(CheckpointError, match="does not fit VGGish"):
        load_vggish_weights(model, tmp_path / "pvt.pth")
    with pytest.raises(CheckpointError, match="71"):
        load_init_checkpoint(build_model(preset("tiny", head={"num_classes": 71})), tmp_path / "full.safetensors")


# ------------------------------------------------------------------------------------------------ data order


def test_data_order_reproducible_and_sharded():
    # the documented order: epoch e visits torch.randperm(n) from a generator seeded with seed + e, cut into
    # global batches, the last partial one dropped
    for seed, epoch in ((7, 3), (7, 4), (123, 0)):
        perm = torch.randperm(10, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        assert epoch_batches(10, 4, seed=seed, epoch=epoch) == [perm[0:4], perm[4:8]]
    assert epoch_batches(10, 4, seed=7, epoch=3) != epoch_batches(10, 4, seed=7, epoch=4)
    assert epoch_batches(10, 4, seed=7, epoch=3) == epoch_batches(10, 4, seed=8, epoch=2)  # seed + e, as documented
    # W processes: equal, disjoint, contiguous shares that together are the global batch, in order
    batch = epoch_batches(24, 12, seed=1, epoch=0)[0]
    for world in (1, 2, 3, 4, 6):
        shares = [rank_share(batch, r, world) for r in range(world)]
        assert all(len(sh) == 12 // world for sh in shares)
        assert [c for sh in shares for c in sh] == batch  # rank r takes the r-th contiguous part
        assert len({c for sh in shares for c in sh}) == 12  # disjoint


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("task", ["s4", "ms3", "avss"])
def test_thirty_steps_lower_the_loss(task, data_root, tmp_path):
    """30 steps at lr 1e-3: the mean total loss of the last 5 steps is below 0.7 x that of the first 5."""
    res = train(tiny_config(task, data_root, tmp_path / "run", max_steps=30))
    assert res.step == 30
    totals = [r["total"] for r in read_log(tmp_path / "run")]
    assert len(totals) == 30
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    print(f"{task}: last 5 / first 5 = {last / first:.3f}")
    assert last < 0.7 * first, (task, first, last, totals)


@pytest.mark.parametrize("aux,extra", [("both", {"loss_mix", "loss_inter_0", "loss_inter_1"}), ("mix", {"loss_mix"}),
                                       ("intermediate", {"loss_inter_0", "loss_inter_1"}), ("none", set())])
def test_aux_option_picks_logged_terms(aux, extra, data_root, tmp_path):
    train(tiny_config("s4", data_root, tmp_path / "run", max_steps=1, aux=aux))
    (rec,) = read_log(tmp_path / "run")
    assert {k for k in rec if k.startswith("loss_")} == {"loss_main"} | extra
    assert {"step", "epoch", "lr", "total", "seconds"} <= set(rec)


def test_lr_schedule_values():
    assert [lr_at(s, 10, 1.0, "constant", 0) for s in (0, 9)] == [1.0, 1.0]
    assert [lr_at(s, 10, 1.0, "constant", 4) for s in (0, 3, 4)] == [0.25, 1.0, 1.0]
    cos = [lr_at(s, 12, 2.0, "cosine", 2) for s in range(12)]
    assert cos[:3] == [1.0, 2.0, 2.0] and cos[7] == pytest.approx(1.0)  # halfway through the 10 decaying steps
    assert all(a > b for a, b in zip(cos[2:], cos[3:])) and cos[-1] == pytest.approx(2.0 * (1 + math.cos(math.pi * 0.9)) / 2)
    with pytest.raises(AvsegError, match="--lr-schedule"):
        train(TrainConfig(task="s4", data=".", lr_schedule="linear"))


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_resume_is_bit_identical(s4_six, tmp_path):
    """10 steps, stop, resume to 20 == 20 steps straight (dropout and drop path on, backbone unfrozen at step 12,
    cosine learning rate with warm-up)."""
    kw = dict(freeze_epochs=4, val_every=3, lr_schedule="cosine", warmup_steps=3, epochs=8,
              model_overrides={"head": {"dropout": 0.1}, "backbone": {"drop_path_rate": 0.1}})
    straight = train(tiny_config("s4", s4_six, tmp_path / "a", max_steps=20, **kw))
    first = train(tiny_config("s4", s4_six, tmp_path / "b", max_steps=10, **kw))
    assert first.step == 10
    state = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (3, 1)  # stopped inside an epoch
    resumed = train(TrainConfig(resume=str(tmp_path / "b"), max_steps=20))
    assert straight.step == resumed.step == 20
    for name in ("last.safetensors", "best.safetensors"):
        a, b = _tensors(tmp_path / "a" / name), _tensors(tmp_path / "b" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    la = [{k: v for k, v in r.items() if "seconds" not in k} for r in read_log(tmp_path / "a", None)]
    lb = [{k: v for k, v in r.items() if "seconds" not in k} for r in read_log(tmp_path / "b", None)]
    assert la == lb
    lrs = {r["step"]: r["lr"] for r in la if r["type"] == "train"}  # 8 epochs x 3 steps: cosine over 24 steps
    assert lrs[1] == pytest.approx(1e-3 / 3) and lrs[3] == pytest.approx(1e-3)
    assert lrs[20] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 16 / 21)))
    with pytest.raises(AvsegError, match="--lr 0.5 differs"):
        train(TrainConfig(resume=str(tmp_path / "b"), lr=0.5))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli() -> list[str]:
    """``python -m avsegcli train`` once registered; until then the command's own entry point."""
    from avsegcli import cli

    registered = "train_cmd" in inspect.getsource(cli._register)
    return [sys.executable, "-m", "avsegcli", "train"] if registered else [sys.executable, "-m", "avsegcli.cli.train_cmd"]


def test_torchrun_two_processes_equal_one(data_root, tmp_path):
    """torchrun with 2 gloo processes (1 clip each) == one process with the same global batch of 2 clips.

    With ``--optimizer sgd``: AdamW divides each gradient element by its running RMS, so where a gradient is zero
    in exact arithmetic (a conv bias right before a one-channel GroupNorm, attention key biases) or tiny, float
    rounding noise -- different for one and two processes -- becomes a step of about ``lr``; SGD keeps the weights
    a faithful image of the gradients, which is what is compared here.
    """
    steps = 3
    args = ["--task", "s4", "--data", str(data_root), "--preset", "tiny", "--image-size", str(SIZE), "--lr", "0.05",
            "--optimizer", "sgd", "--freeze-epochs", "1", "--batch-size", "2", "--max-steps", str(steps),
            "--log-every", "1", "--workers", "0", "--val-every", "0", "--device", "cpu", "--quiet"]
    cmd = _cli()
    env = ONE_THREAD
    dist_cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port()), *cmd[1:], "--out", str(tmp_path / "two"), *args]
    proc = subprocess.run(dist_cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(tiny_config("s4", data_root, tmp_path / "one", max_steps=steps, lr=0.05, optimizer="sgd", freeze_epochs=1))

    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]  # only rank 0 writes the log
    for r1, r2 in zip(one, two):
        for k in ("loss_main", "loss_mix", "loss_inter_0", "loss_inter_1", "total"):
            assert abs(r1[k] - r2[k]) <= 1e-5 * abs(r1[k]), (k, r1, r2)
    a, b = _tensors(tmp_path / "one" / "last.safetensors"), _tensors(tmp_path / "two" / "last.safetensors")
    torch.manual_seed(123)  # the engine's default seed, before it builds the model
    start = build_model(json.loads((tmp_path / "one" / "config.json").read_text())["model"]).state_dict()
    assert a.keys() == b.keys()
    moved = {k.split(".")[0] for k in a if not torch.equal(a[k], start[k])}
    assert moved == {"backbone", "head", "audio_proj"}  # VGGish stays frozen; the backbone trains from epoch 1
    worst = 0.0
    for k in a:  # the updates agree to 0.1 % of their size (+ 1e-7: rounding of the weights themselves)
        diff, update = float((a[k] - b[k]).abs().max()), float((a[k] - start[k]).abs().max())
        assert diff <= 1e-3 * update + 1e-7, (k, diff, update)
        worst = max(worst, (diff - 1e-7) / max(update, 1e-12))
    print(f"largest update difference: {worst:.2e} of the update")


@pytest.mark.parametrize("args,message", [
    (["--task", "s4", "--data", "{tmp}/missing", "--preset", "tiny"], "dataset root not found"),
    (["--task", "s4", "--data", "{data}", "--preset", "tinyy"], "unknown preset 'tinyy'"),
    (["--task", "avss", "--data", "{data}", "--preset", "s4-r50"], "has 1 output class(es) but task avss needs 71"),
])
def test_cli_errors_are_one_line(args, message, data_root, tmp_path):
    args = [a.format(tmp=tmp_path, data=data_root) for a in args]
    proc = subprocess.run([*_cli(), *args, "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=ONE_THREAD)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_task_record_or_name_resolve_alike():
    """TrainConfig takes the task's name (the CLI's) or its Task; config.json and the model config keep the name."""
    from avsegcli.tasks import AVSS
    from avsegcli.train.config import model_config, resolve

    by_task, by_name = resolve(TrainConfig(task=AVSS, data="d", out="o")), resolve(TrainConfig(task="avss", data="d", out="o"))
    assert by_task == by_name and by_task.task == "avss" and by_task.to_dict()["task"] == "avss"
    mc = model_config(by_task)
    assert (mc["task"], mc["frames_per_clip"], mc["head"]["num_classes"]) == ("avss", 10, 71)
    with pytest.raises(AvsegError, match="unknown task 'avs'; expected one of s4, ms3, avss"):
        resolve(TrainConfig(task="avs"))
    with pytest.raises(AvsegError, match="--task is required"):
        resolve(TrainConfig())
