"""``avseg train`` promises beyond ``--max-steps`` stops: resume after a real SIGKILL (log truncation, data loader
workers), the guards that refuse an inexact resume, fp16, and the released recipe (AVSS validation from epoch 10
every 2, per-task backbone freezing, ``best.safetensors`` = best validation, ``--grad-clip``, ``--train-vggish``,
``--init`` with an authors' ``.pth``).

CPU only: the ``tiny`` preset at 32x32 on generated AVSBench-layout data (random content).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from avsegcli.build import build_model
from avsegcli.data import write_fake_avsbench
from avsegcli.errors import AvsegError
from avsegcli.train import TrainConfig
from avsegcli.train.config import prepare, resolve
from avsegcli.train.engine import train
from avsegcli.train.init_weights import initialise
from avsegcli.train.state import read_log
from conftest import REPO, run_cli

SIZE = 32
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model modules: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def s4_six(tmp_path_factory) -> Path:
    """6 train clips: 3 steps per epoch at batch size 2."""
    return write_fake_avsbench(tmp_path_factory.mktemp("s4six"), "s4", videos_per_split=6, seed=4, image_hw=(SIZE, SIZE))


@pytest.fixture(scope="module")
def s4_two(tmp_path_factory) -> Path:
    """2 clips per split: 1 step per epoch at batch size 2."""
    return write_fake_avsbench(tmp_path_factory.mktemp("s4two"), "s4", videos_per_split=2, seed=1, image_hw=(SIZE, SIZE))


def cfg(data: Path, out: Path, task: str = "s4", **kw) -> TrainConfig:
    base = dict(task=task, data=str(data), out=str(out), preset="tiny", image_size=SIZE, lr=1e-3, batch_size=2,
                log_every=1, num_workers=0, val_every=0, freeze_epochs=0, device="cpu")
    if task == "avss":
        base["model_overrides"] = {"head": {"num_classes": 71}}
    base.update(kw)
    return TrainConfig(**base)


def _step_of(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["avseg_train_step"])


def _no_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


def _initial_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights a run starts from: the engine seeds with --seed (123 by default) and then builds the model."""
    saved = json.loads((run / "config.json").read_text())
    torch.manual_seed(int(saved["train"]["seed"]))
    return build_model(saved["model"]).state_dict()


# ------------------------------------------------------------------------------------------------ kill and resume


def _log_steps(run: Path) -> list[int]:
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except OSError:
        return []
    steps = []
    for ln in lines:
        try:
            steps.append(int(json.loads(ln)["step"]))
        except (ValueError, KeyError):
            pass
    return steps


def _consistent_and_mid_epoch(run: Path) -> bool:
    """Stopped where a resume must rewind: state.pt and last.safetensors name the same step, no save is half
    done, and the log already holds steps past that state (steps_per_epoch = 3; the state is saved per epoch)."""
    try:
        state = torch.load(run / "state.pt", weights_only=True)
        same = _step_of(run / "last.safetensors") == state["step"]
    except Exception:
        return False
    steps = _log_steps(run)
    return same and not list(run.glob("*.tmp")) and not list(run.glob("*.pending")) and bool(steps) and max(steps) > state["step"] and max(steps) % 3 != 0


def test_resume_after_sigkill_equals_uninterrupted(s4_six, tmp_path):
    """SIGKILL ``avseg train`` in the middle of an epoch, resume it with data-loader workers: the log loses the steps
    after the saved state (and a torn last line), and the weights equal an uninterrupted run's bit for bit."""
    from avsegcli.build import preset

    run = tmp_path / "killed"
    model = preset("tiny")  # with dropout and drop path on, so the random-generator state matters on resume
    model["head"]["dropout"], model["backbone"]["drop_path_rate"] = 0.1, 0.1
    model_json = tmp_path / "tiny-dropout.json"
    model_json.write_text(json.dumps(model))
    args = ["--task", "s4", "--data", str(s4_six), "--preset", str(model_json), "--image-size", str(SIZE), "--lr", "1e-3",
            "--batch-size", "2", "--epochs", "40", "--freeze-epochs", "1", "--log-every", "1", "--workers", "0",
            "--val-every", "0", "--device", "cpu", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "avsegcli", "train", *args, "--out", str(run)], cwd=REPO,
                            env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while True:
            assert time.time() < deadline and proc.poll() is None, "training ended before it could be killed"
            if max(_log_steps(run), default=0) >= 4:
                proc.send_signal(signal.SIGSTOP)  # freeze it, then look: kill only at a consistent mid-epoch point
                if _consistent_and_mid_epoch(run):
                    break
                proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = torch.load(run / "state.pt", weights_only=True)
    saved_step = int(state["step"])
    assert saved_step % 3 == 0 and state["batch"] == 0 and max(_log_steps(run)) > saved_step
    with open(run / "log.jsonl", "a") as f:  # a line torn by the kill
        f.write('{"type": "train", "step": ')

    target = saved_step + 4  # across the next epoch boundary
    proc = run_cli("train", "--resume", run, "--max-steps", target, "--workers", "2", "--quiet", cwd=REPO, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]

    straight = train(cfg(s4_six, tmp_path / "straight", epochs=40, freeze_epochs=1, max_steps=target,
                         preset=str(model_json)))
    assert straight.step == target and _step_of(run / "last.safetensors") == target
    a, b = load_file(str(tmp_path / "straight" / "last.safetensors")), load_file(str(run / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = _no_seconds(read_log(tmp_path / "straight", None)), _no_seconds(read_log(run, None))
    assert [r["step"] for r in lb] == list(range(1, target + 1))  # the dropped steps are logged once, not twice
    assert la == lb


def test_kill_while_writing_state_still_resumes(s4_six, tmp_path):
    """SIGKILL while state.pt is being written (the optimiser state: the longest write of a save): the run folder
    must still hold a checkpoint and a state of the same step, so --resume continues exactly."""
    run = tmp_path / "run"
    script = f"""
import os, signal, torch
from avsegcli.train.engine import train
from avsegcli.train import TrainConfig
real, calls = torch.save, []
def torn(obj, f, *args, **kwargs):  # the 2nd state.pt (end of epoch 1): half written, then killed
    calls.append(f)
    real(obj, f, *args, **kwargs)
    if len(calls) == 2:
        data = open(f, "rb").read()
        open(f, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = torn
torch.set_num_threads(1)
train(TrainConfig(task="s4", data={str(s4_six)!r}, out={str(run)!r}, preset="tiny", image_size={SIZE}, lr=1e-3,
                  batch_size=2, log_every=1, num_workers=0, val_every=0, freeze_epochs=0, device="cpu", epochs=4))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=ONE_THREAD)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["step"] == 3 and _step_of(run / "last.safetensors") == 3
    res = train(TrainConfig(resume=str(run), max_steps=8))
    straight = train(cfg(s4_six, tmp_path / "straight", epochs=4, max_steps=8))
    assert res.step == straight.step == 8
    a, b = load_file(str(tmp_path / "straight" / "last.safetensors")), load_file(str(run / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_guards(s4_six, tmp_path):
    run = tmp_path / "run"
    train(cfg(s4_six, run, max_steps=4, epochs=5))
    old_state = (run / "state.pt").read_bytes()
    train(TrainConfig(resume=str(run), max_steps=5))
    assert _step_of(run / "last.safetensors") == 5

    # last.safetensors written, then killed before state.pt: the two disagree and resume refuses
    newer_state = (run / "state.pt").read_bytes()
    (run / "state.pt").write_bytes(old_state)
    with pytest.raises(AvsegError, match=r"last.safetensors \(step 5\) and state.pt \(step 4\) disagree"):
        train(TrainConfig(resume=str(run), max_steps=6))
    (run / "state.pt").write_bytes(newer_state)

    # a train split of another size would change every epoch's order: refused, naming both
    four = write_fake_avsbench(tmp_path / "four", "s4", videos_per_split=4, seed=4, image_hw=(SIZE, SIZE))
    with pytest.raises(AvsegError, match=r"data order changed.*'clips': 6.*'clips': 4"):
        train(TrainConfig(resume=str(run), data=str(four), max_steps=6))
    # the same split under another path is fine, and the guards left the run resumable
    moved = tmp_path / "moved"
    shutil.copytree(s4_six, moved)
    res = train(TrainConfig(resume=str(run), data=str(moved), max_steps=6))
    assert res.step == 6


def test_fp16_needs_cuda_on_this_machine(s4_two, tmp_path):
    """On the CPU, fp16 (which needs loss scaling) is refused before anything runs; bf16 trains."""
    if torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 runs (see test_fp16_resume_restores_the_loss_scale)")
    with pytest.raises(AvsegError, match="--precision fp16 needs a CUDA device"):
        train(cfg(s4_two, tmp_path / "run", precision="fp16", device="cpu", max_steps=1))
    assert not (tmp_path / "run" / "state.pt").exists()
    res = train(cfg(s4_two, tmp_path / "bf16", precision="bf16", device="cpu", max_steps=1))
    assert res.step == 1 and torch.load(tmp_path / "bf16" / "state.pt", weights_only=True)["scaler"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 loss scaling needs CUDA (refused on the CPU)")
def test_fp16_resume_restores_the_loss_scale(s4_six, tmp_path):
    kw = dict(precision="fp16", device="cuda", epochs=4)
    train(cfg(s4_six, tmp_path / "a", max_steps=6, **kw))
    train(cfg(s4_six, tmp_path / "b", max_steps=4, **kw))
    st = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert st["scaler"] is not None and st["scaler"]["scale"] > 0
    train(TrainConfig(resume=str(tmp_path / "b"), max_steps=6))
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)["scaler"]
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)["scaler"]
    assert a == b
    la, lb = _no_seconds(read_log(tmp_path / "a")), _no_seconds(read_log(tmp_path / "b"))
    assert la == lb


# ------------------------------------------------------------------------------------------------ the recipe


def test_per_task_recipe_defaults():
    for task, freeze, val_every, val_start, epochs, batch in (("s4", 5, 1, 0, 30, 2), ("ms3", 10, 1, 0, 60, 2),
                                                               ("avss", 0, 2, 10, 30, 4)):
        r = resolve(TrainConfig(task=task))
        assert (r.freeze_epochs, r.val_every, r.val_start, r.epochs, r.batch_size) == (freeze, val_every, val_start, epochs, batch)
        assert (r.lr, r.weight_decay, r.seed, r.optimizer, r.train_vggish) == (2e-5, 0.01, 123, "adamw", False)


def test_s4_backbone_frozen_for_the_first_five_epochs(s4_two, tmp_path):
    """S4 default: the backbone is frozen for epochs 0-4 (1 step each here) and trains from epoch 5."""
    run = tmp_path / "run"
    train(cfg(s4_two, run, freeze_epochs=None, max_steps=5, epochs=8))
    start, w5 = _initial_weights(run), load_file(str(run / "last.safetensors"))
    assert all(torch.equal(w5[k], start[k]) for k in w5 if k.startswith("backbone."))
    assert any(not torch.equal(w5[k], start[k]) for k in w5 if k.startswith("head."))
    train(TrainConfig(resume=str(run), max_steps=6))
    w6 = load_file(str(run / "last.safetensors"))
    moved = {k for k in w6 if k.startswith("backbone.") and not torch.equal(w6[k], w5[k])}
    assert len(moved) > 10
    assert all(torch.equal(w6[k], start[k]) for k in w6 if k.startswith("vggish."))  # VGGish stays frozen


def test_avss_validates_from_epoch_10_every_2(tmp_path, monkeypatch):
    """AVSS recipe: validation after epochs 10, 12, ... (0-based) only. The engine's loop, data and validation run
    for real; the optimiser step is replaced by a counter so that 13 epochs cost little."""
    from avsegcli.train import engine

    data = write_fake_avsbench(tmp_path / "avss", "avss", videos_per_split=1, seed=3, image_hw=(SIZE, SIZE))
    res = train(cfg(data, tmp_path / "one", task="avss", batch_size=3, freeze_epochs=None, max_steps=1))
    start, end = _initial_weights(tmp_path / "one"), load_file(str(tmp_path / "one" / "last.safetensors"))
    assert any(not torch.equal(end[k], start[k]) for k in end if k.startswith("backbone."))  # never frozen

    def count_only(self, batch):
        self.step += 1
        self.batch += 1

    monkeypatch.setattr(engine._Trainer, "_train_step", count_only)
    run = tmp_path / "run"
    # 3 train clips, batch 3: one step per epoch; validation settings left to the AVSS recipe
    res = train(cfg(data, run, task="avss", batch_size=3, epochs=15, val_every=None, freeze_epochs=None))
    assert res.step == 15
    vals = read_log(run, "val")
    assert [v["epoch"] for v in vals] == [10, 12, 14]
    assert [v["step"] for v in vals] == [11, 13, 15]


def test_best_checkpoint_is_the_best_validation(s4_two, tmp_path):
    run = tmp_path / "run"
    train(cfg(s4_two, run, epochs=3, val_every=1, lr=3e-3))
    vals = read_log(run, "val")
    mious = [v["miou"] for v in vals]
    assert [v["epoch"] for v in vals] == [0, 1, 2]
    assert len(set(mious)) > 1, mious  # otherwise "best" proves nothing
    best = max(range(len(vals)), key=lambda i: (mious[i], -i))  # the first of equal maxima
    assert [v["best"] for v in vals] == [i == 0 or mious[i] > max(mious[:i]) for i in range(len(vals))]
    assert _step_of(run / "best.safetensors") == vals[best]["step"]
    print(f"val mIoU per epoch {mious}; best epoch {best}")
    # a second code path scores the saved file: avseg eval, official protocol, 2 clips a batch like the recipe
    proc = run_cli("eval", "--task", "s4", "--data", s4_two, "--split", "val", "--weights", run / "best.safetensors",
                   "--protocol", "official", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--json", "-",
                   cwd=REPO, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    scored = json.loads(proc.stdout)["overall"]["official"]["miou"]
    assert scored == pytest.approx(vals[best]["miou"], abs=1e-6)


def _one_step_update(run: Path) -> dict[str, torch.Tensor]:
    start, end = _initial_weights(run), load_file(str(run / "last.safetensors"))
    return {k: (end[k] - start[k]).double() for k in end if end[k].is_floating_point()}


def test_grad_clip_bounds_the_update_norm(s4_two, tmp_path):
    """SGD's first step (momentum buffer = gradient, no weight decay) moves the weights by exactly lr x gradient:
    the update's norm / lr is the clipped gradient norm, min(logged pre-clip norm, --grad-clip)."""
    lr, small = 0.01, 0.05
    norms = {}
    for clip in (1e9, small):
        run = tmp_path / f"clip{clip:g}"
        train(cfg(s4_two, run, optimizer="sgd", lr=lr, weight_decay=0.0, grad_clip=clip, max_steps=1))
        (rec,) = read_log(run)
        delta = _one_step_update(run)
        norms[clip] = (float(torch.sqrt(sum((d ** 2).sum() for d in delta.values()))) / lr, rec["grad_norm"])
        assert all(float(delta[k].abs().max()) == 0 for k in delta if k.startswith("vggish."))
    (free, g1), (clipped, g2) = norms[1e9], norms[small]
    print(f"gradient norm {g1:.4f}; update norm / lr: {free:.4f} unclipped, {clipped:.5f} clipped to {small}")
    assert g1 == pytest.approx(g2, rel=1e-6) and g1 > 2 * small  # same first gradient; the clip really bites
    assert free == pytest.approx(g1, rel=1e-3)
    assert clipped == pytest.approx(small, rel=1e-3)


def test_train_vggish_moves_vggish(s4_two, tmp_path):
    train(cfg(s4_two, tmp_path / "run", train_vggish=True, max_steps=1))
    delta = _one_step_update(tmp_path / "run")
    moved = [k for k in delta if k.startswith("vggish.") and float(delta[k].abs().max()) > 0]
    assert len(moved) >= len([k for k in delta if k.startswith("vggish.")]) // 2, moved


def test_init_from_an_authors_pth(reference_dir, tmp_path):
    """--init with a released-layout .pth (no --preset): the model is that checkpoint's preset, every value loaded."""
    layout = json.loads((reference_dir / "official_checkpoint_keys.json").read_text())["ms3_res50"]["state_dict"]
    g = torch.Generator().manual_seed(9)
    state = {k: (torch.tensor(3) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
             for k, s in layout.items()}
    pth = tmp_path / "AVSegFormer_res50_ms3.pth"
    torch.save(state, pth)
    data = write_fake_avsbench(tmp_path / "ms3", "ms3", videos_per_split=1, seed=2, image_hw=(SIZE, SIZE))
    c, model_cfg, resuming = prepare(TrainConfig(task="ms3", data=str(data), out=str(tmp_path / "run"), init=str(pth)))
    assert model_cfg["name"] == "ms3-r50" and model_cfg["head"]["num_classes"] == 1 and not resuming
    model = build_model(model_cfg)
    assert initialise(model, init=c.init) == []  # no "random weights" warning
    ours = model.state_dict()
    for k, v in state.items():
        if k.startswith(("backbone.layer3_2.", "backbone.layer4_2.")):
            continue
        name = k.replace("backbone.layer3_1.", "backbone.layer3.").replace("backbone.layer4_1.", "backbone.layer4.")
        assert torch.equal(ours[name], v.to(ours[name].dtype)), k
