"""``avseg eval`` end to end on tiny fake AVSBench folders and tiny random checkpoints.

What must be equal between ``--weights`` (scores from logits) and ``--pred`` on the masks that run saved:
* S4/MS3: every IoU (overall in both protocols, per batch, per frame, per clip, per category), because the IoU
  only uses ``sigmoid(logit) > 0.5`` and exactly that mask is saved (0/255 PNG round trip is lossless). The
  F-score is not: it sweeps 255 thresholds over probabilities, a saved mask has two levels. It must equal the
  F-score of those hard masks fed to ``BinaryMetrics.update_masks``.
* AVSS: every number, since all of them only use ``argmax(softmax(logits))``, which is what is saved.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import avsegcli.cli
from avsegcli.build import build_model, preset
from avsegcli.cli import eval_cmd
from avsegcli.data import load_binary_prediction, load_semantic_prediction, make_dataset, write_fake_avsbench
from avsegcli.errors import AvsegError
from avsegcli.eval.evaluate import resolve_data_root
from avsegcli.masks.io import VideoMaskWriter
from avsegcli.eval.metrics import PROTOCOLS, BinaryMetrics, SemanticMetrics
from avsegcli.weights import load_model, save_checkpoint
from conftest import run_cli

SIZE = 32
APP = typer.Typer()
APP.command("eval")(eval_cmd.evaluate)
APP.command("noop")(lambda: None)  # two commands, so "eval" stays a subcommand as in the real app


def invoke(*args: object):
    return CliRunner().invoke(APP, ["eval", *map(str, args)])


def ok_json(tmp: Path, *args: object) -> dict:
    out = tmp / f"r{len(list(tmp.glob('r*.json')))}.json"
    res = invoke(*args, "--json", out, "-q")
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(out.read_text())


def user_error(*args: object) -> str:
    res = invoke(*args)
    assert isinstance(res.exception, AvsegError), (res.output, res.exception)
    msg = str(res.exception)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("eval")
    data = base / "data"
    write_fake_avsbench(data, "s4", videos_per_split=3, seed=0)
    write_fake_avsbench(data, "ms3", videos_per_split=3, seed=1)
    write_fake_avsbench(data, "avss", videos_per_split=1, seed=2)  # 3 test clips: v1s, v1m, v2
    torch.manual_seed(0)
    binary = save_checkpoint(build_model(preset("tiny", image_size=SIZE)), base / "binary.safetensors")
    semantic = save_checkpoint(build_model(preset("tiny", task="avss", image_size=SIZE, head={"num_classes": 71})),
                               base / "semantic.safetensors")
    return SimpleNamespace(base=base, data=data, ckpt={"s4": binary, "ms3": binary, "avss": semantic}, runs={})


def weights_run(env: SimpleNamespace, task: str) -> tuple[dict, Path]:
    """``--weights --save-pred`` once per task (cached): the JSON and the saved-mask folder."""
    if task not in env.runs:
        pred = env.base / f"pred_{task}"
        batch = ["--batch-size", 2] if task == "avss" else []
        res = ok_json(env.base, "--task", task, "--data", env.data, "--weights", env.ckpt[task], "--save-pred", pred,
                      *batch)
        env.runs[task] = (res, pred)
    return env.runs[task]


@torch.inference_mode()
def independent_logits(env: SimpleNamespace, task: str, batch_clips: int):
    """Yield (items, logits [B*T,K,S,S]) batch by batch, straight from the model and the dataset."""
    model = load_model(env.ckpt[task])
    ds = make_dataset(task, env.data, "test", image_size=SIZE)
    for i in range(0, len(ds), batch_clips):
        items = [ds[j] for j in range(i, min(i + batch_clips, len(ds)))]
        valid = torch.cat([it["frame_valid"] for it in items]) if task == "avss" else None
        out = model(torch.cat([it["frames"] for it in items]), torch.cat([it["log_mel"] for it in items]),
                    frame_valid=valid)
        yield items, out["pred_masks"].float()


# ------------------------------------------------------------------------------------------ weights vs saved masks


@pytest.mark.parametrize("task", ["s4", "ms3"])
def test_binary_weights_then_pred(env: SimpleNamespace, task: str, tmp_path: Path) -> None:
    res_w, pred = weights_run(env, task)
    soft = {p: BinaryMetrics(p) for p in PROTOCOLS}
    hard = {p: BinaryMetrics(p) for p in PROTOCOLS}
    fg = []
    for items, logits in independent_logits(env, task, 2):
        target, valid = torch.cat([it["masks"] for it in items]), torch.cat([it["mask_valid"] for it in items])
        masks = torch.sigmoid(logits[:, 0]) > 0.5
        for p in PROTOCOLS:
            soft[p].update(logits, target, valid=valid)
            hard[p].update_masks(masks, target, valid=valid)
        for k, it in enumerate(items):  # the saved PNGs are exactly the thresholded logits
            saved = load_binary_prediction(pred, it["name"], 5, it["category"] or None)
            assert torch.equal(saved.bool(), masks[5 * k:5 * k + 5])
        fg.append(masks.float().mean())
    assert 0 < float(torch.stack(fg).mean()) < 1  # the random model predicts both classes: a real check

    res_p = ok_json(tmp_path, "--task", task, "--data", env.data, "--pred", pred)
    assert res_p["pred_layout"] == "benchmark" and res_p["image_size"] == SIZE
    for p in PROTOCOLS:
        ref_soft, ref_hard = soft[p].compute(), hard[p].compute()
        w, pr = res_w["overall"][p], res_p["overall"][p]
        assert w["miou"] == pytest.approx(ref_soft["miou"], rel=1e-6, abs=1e-9)
        assert w["fscore"] == pytest.approx(ref_soft["fscore"], rel=1e-6, abs=1e-9)
        assert pr["miou"] == w["miou"] and pr["batch_miou"] == w["batch_miou"]  # exactly: same masks, same batches
        assert pr["fscore"] == pytest.approx(ref_hard["fscore"], rel=1e-6, abs=1e-9)
        assert w["frames"] == pr["frames"] == 15 and w["batches"] == 2  # 3 clips, 2 per batch
    assert {n: c["iou"] for n, c in res_p["per_clip"].items()} == {n: c["iou"] for n, c in res_w["per_clip"].items()}
    if task == "s4":
        assert set(res_w["per_category"]) == {"dog_barking", "baby_laughter", "lawn_mowing"}
        for k, v in res_w["per_category"].items():
            assert res_p["per_category"][k]["miou"] == v["miou"]
    else:
        assert "per_category" not in res_w


def test_avss_weights_then_pred(env: SimpleNamespace, tmp_path: Path) -> None:
    res_w, pred = weights_run(env, "avss")
    ref = {p: SemanticMetrics(71, p) for p in PROTOCOLS}
    for items, logits in independent_logits(env, "avss", 2):
        target, valid = torch.cat([it["masks"] for it in items]), torch.cat([it["mask_valid"] for it in items])
        assert not logits[~torch.cat([it["frame_valid"] for it in items])].any()  # padded frames: zero logits
        for p in PROTOCOLS:
            ref[p].update(logits, target, valid=valid, keys=[it["subset"] for it in items for _ in range(10)])
        ids = torch.argmax(torch.softmax(logits, 1), 1)
        for k, it in enumerate(items):
            assert torch.equal(load_semantic_prediction(pred, it["name"]), ids[10 * k:10 * k + 10])
    for p in PROTOCOLS:
        r = ref[p].compute()
        assert res_w["overall"][p]["miou"] == pytest.approx(r["miou"], rel=1e-6, abs=1e-9)
        assert res_w["overall"][p]["fscore"] == pytest.approx(r["fscore"], rel=1e-6, abs=1e-9)
        np.testing.assert_allclose(res_w["per_class"][p]["iou"], r["per_class_iou"], rtol=1e-6, atol=1e-9)
        for k, v in r["per_key"].items():
            assert res_w["per_subset"][p][k]["miou"] == pytest.approx(v["miou"], rel=1e-6, abs=1e-9)
    assert res_w["overall"]["official"]["frames"] == 30 and res_w["overall"]["per-frame"]["frames"] == 20

    # same batches: the official sums are float32, accumulated per batch as the script does, so a different
    # batch size changes the last bits (not the value)
    res_p = ok_json(tmp_path, "--task", "avss", "--data", env.data, "--pred", pred, "--batch-size", 2)
    for key in ("overall", "per_subset", "per_class"):
        assert res_p[key] == res_w[key]  # every number, exactly
    # the official script saves all 10 frames; without the padded ones (background) the scores are the same
    for d in pred.iterdir():
        if d.name.startswith(("fakev1s", "fakev1m")):
            for i in range(5, 10):
                (d / f"{d.name}_{i}.png").unlink()
    again = ok_json(tmp_path, "--task", "avss", "--data", env.data, "--pred", pred, "--batch-size", 2)
    assert again["overall"] == res_w["overall"]


@pytest.mark.parametrize("task", ["s4", "avss"])
def test_pred_avseg_run_layout(env: SimpleNamespace, task: str, tmp_path: Path) -> None:
    """``avseg run`` output folders (meta.json + masks, real frames only) score as the benchmark layout."""
    res_w, pred = weights_run(env, task)
    run_dir = tmp_path / "run"
    for i, c in enumerate(make_dataset(task, env.data, "test", load_audio=False).clips):
        n = len(c.frame_paths)
        if task == "avss":
            masks = load_semantic_prediction(pred, c.name, n).numpy().astype(np.uint8)
        else:
            masks = load_binary_prediction(pred, c.name, n, c.category).numpy()
        fmt = "npz" if i % 2 else "png"
        w = VideoMaskWriter(run_dir, c.name, fmt=fmt, semantic=task == "avss")
        # png: added in reverse, the reader sorts by frame index (npz: in order, see the report on maskio)
        for j in (reversed(range(n)) if fmt == "png" else range(n)):
            w.add(frame_index=25 * j, timestamp=float(j), chunk=j, mask=masks[j])
        w.finish({"source": c.name})
    res = ok_json(tmp_path, "--task", task, "--data", env.data, "--pred", run_dir, "--batch-size", res_w["batch_clips"])
    assert res["pred_layout"] == "avseg-run"
    assert {p: v["miou"] for p, v in res["overall"].items()} == {p: v["miou"] for p, v in res_w["overall"].items()}
    other = "s4" if task == "avss" else "avss"  # the same masks under the other task's clip names
    first = next(p for p in run_dir.iterdir() if not p.name.startswith("."))
    for name in make_dataset(other, env.data, "test", load_audio=False).names:
        shutil.copytree(first, tmp_path / "mixed" / name)
    msg = user_error("--task", other, "--data", env.data, "--pred", tmp_path / "mixed")
    assert ("holds class-id (semantic) masks but task s4 needs binary" if task == "avss"
            else "holds binary masks but task avss needs class-id (semantic)") in msg


def test_batch_size_protocol_and_limit(env: SimpleNamespace, tmp_path: Path) -> None:
    res_w, pred = weights_run(env, "s4")
    one = ok_json(tmp_path, "--task", "s4", "--data", env.data, "--pred", pred, "--batch-size", 1)
    two = ok_json(tmp_path, "--task", "s4", "--data", env.data, "--pred", pred)
    assert one["overall"]["official"]["batches"] == 3 and two["overall"]["official"]["batches"] == 2
    assert one["overall"]["per-frame"] == {**two["overall"]["per-frame"], "batches": 3,
                                           "batch_miou": one["overall"]["per-frame"]["batch_miou"],
                                           "batch_fscore": one["overall"]["per-frame"]["batch_fscore"]}
    only = ok_json(tmp_path, "--task", "s4", "--data", env.data, "--pred", pred, "--protocol", "official",
                   "--limit", 1)
    assert list(only["overall"]) == ["official"] and only["counts"]["clips"] == 1
    assert only["overall"]["official"]["frames"] == 5 and only["counts"]["clips_in_split"] == 3
    out = invoke("--task", "s4", "--data", env.data, "--pred", pred, "--json", "-")
    assert out.exit_code == 0 and json.loads(out.stdout)["overall"] == two["overall"]
    table = invoke("--task", "s4", "--data", env.data, "--pred", pred)
    assert table.exit_code == 0 and "per category" in table.stdout and "official" in table.stdout


def test_json_content(env: SimpleNamespace) -> None:
    res, pred = weights_run(env, "s4")
    assert res["task"] == "s4" and res["split"] == "test" and res["mode"] == "weights"
    assert res["root"] == str(env.data.resolve()) and res["saved_predictions"] == str(pred.resolve())
    assert res["model"]["weights"] == str(env.ckpt["s4"]) and res["model"]["num_classes"] == 1
    assert len(res["model"]["sha256"]) == 64 and res["image_size"] == SIZE and res["batch_clips"] == 2
    assert res["counts"] == {"clips": 3, "clips_in_split": 3, "frames": 15, "frames_scored": 15}
    assert res["protocols"] == ["official", "per-frame"] and res["warnings"] == []
    official = res["overall"]["official"]
    assert official["miou"] == pytest.approx(np.mean(official["batch_miou"]), rel=1e-6)
    assert sorted(res["per_clip"]) == [f"fakes4_test_{k:02d}" for k in range(3)]
    assert res["per_clip"]["fakes4_test_00"]["frames"] == [0, 1, 2, 3, 4]
    sem, _ = weights_run(env, "avss")
    assert len(sem["per_class"]["names"]) == 71 and sem["per_class"]["names"][0] == "background"
    assert all(len(sem["per_class"][p][k]) == 71 for p in PROTOCOLS for k in ("iou", "fscore", "count"))
    assert set(sem["per_subset"]["official"]) == {"v1s", "v1m", "v2"}


# ------------------------------------------------------------------------------------------------------ errors


def test_data_root_resolution(env: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, pred = weights_run(env, "s4")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.delenv("AVSBENCH_ROOT", raising=False)
    msg = user_error("--task", "s4", "--pred", pred)
    assert "AVSBENCH_ROOT is not set" in msg and str(empty.resolve() / "data") in msg
    monkeypatch.setenv("AVSBENCH_ROOT", str(tmp_path / "nowhere"))
    msg = user_error("--task", "s4", "--pred", pred)
    assert str(tmp_path / "nowhere") in msg and str(empty.resolve() / "data") in msg
    monkeypatch.setenv("AVSBENCH_ROOT", str(env.data))
    assert ok_json(tmp_path, "--task", "s4", "--pred", pred)["root"] == str(env.data.resolve())
    monkeypatch.delenv("AVSBENCH_ROOT")
    monkeypatch.chdir(env.base)  # holds ./data
    assert resolve_data_root(None) == Path("data")
    assert ok_json(tmp_path, "--task", "s4", "--pred", pred)["root"] == str(env.data.resolve())
    assert "dataset root not found" in user_error("--task", "s4", "--data", empty / "x", "--pred", pred)


def test_classes_mismatch(env: SimpleNamespace) -> None:
    msg = user_error("--task", "avss", "--data", env.data, "--weights", env.ckpt["s4"])
    assert "1 output class" in msg and "needs 71" in msg and str(env.ckpt["s4"]) in msg
    msg = user_error("--task", "s4", "--data", env.data, "--weights", env.ckpt["avss"])
    assert "71 output class" in msg and "needs 1" in msg


def test_missing_predictions(env: SimpleNamespace, tmp_path: Path) -> None:
    _, pred = weights_run(env, "s4")
    part = tmp_path / "part"
    shutil.copytree(pred, part)
    shutil.rmtree(part / "lawn_mowing")  # clip 02
    (part / "baby_laughter" / "fakes4_test_01" / "fakes4_test_01_3.png").unlink()
    msg = user_error("--task", "s4", "--data", env.data, "--pred", part)
    assert "predictions missing for 2 of 3 clip(s)" in msg and "6 mask file(s)" in msg and "(and 3 more)" in msg
    assert "fakes4_test_01_3.png" in msg
    assert ok_json(tmp_path, "--task", "s4", "--data", env.data, "--pred", part, "--limit", 1)["counts"]["clips"] == 1
    (part / "dog_barking" / "fakes4_test_00" / "fakes4_test_00_4.png").write_bytes(b"not a png")
    msg = user_error("--task", "s4", "--data", env.data, "--pred", part, "--limit", 1)
    assert "cannot read a file of clip fakes4_test_00" in msg and "fakes4_test_00_4.png" in msg
    assert "no such predictions folder" in user_error("--task", "s4", "--data", env.data, "--pred", tmp_path / "no")


def test_dataset_errors(env: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, pred = weights_run(env, "s4")
    data = write_fake_avsbench(tmp_path / "d", "s4", videos_per_split=2)
    meta = data / "Single-source" / "s4_meta_data.csv"
    rows = list(csv.reader(meta.open()))
    with meta.open("w", newline="") as f:
        csv.writer(f).writerows([r for r in rows if r[-1] != "test"])
    assert "no clips in split 'test'" in user_error("--task", "s4", "--data", data, "--pred", pred)
    assert "metadata csv not found" in user_error("--task", "ms3", "--data", data, "--pred", pred)
    frame = next((data / "Single-source" / "s4_data" / "visual_frames" / "val").rglob("*_2.png"))
    frame.unlink()
    assert "1 frame file(s) missing" in user_error("--task", "s4", "--split", "val", "--data", data, "--pred", pred)
    assert "unknown split" in user_error("--task", "s4", "--split", "dev", "--data", data, "--pred", pred)
    assert "unknown task" in user_error("--task", "s5", "--data", data, "--pred", pred)
    assert "not both" in user_error("--task", "s4", "--data", data, "--pred", pred, "--weights", env.ckpt["s4"])
    assert "--save-pred needs --weights" in user_error("--task", "s4", "--data", data, "--pred", pred,
                                                       "--save-pred", tmp_path / "s")
    monkeypatch.setattr("avsegcli.inference.predictor.REPO_WEIGHTS", tmp_path / "no-weights")
    assert "no --weights given" in user_error("--task", "s4", "--data", env.data)


# ------------------------------------------------------------------------------------------ the options record

#: EvalOptions field -> its flag
FLAGS = {"task": "--task", "data": "--data", "weights": "--weights", "pred": "--pred", "protocol": "--protocol",
         "save_pred": "--save-pred", "negative_audio": "--negative-audio", "batch_size": "--batch-size",
         "limit": "--limit", "forward_batch": "--forward-batch"}


def test_options_checked_in_one_place_before_any_work(env: SimpleNamespace, tmp_path: Path) -> None:
    """Every usage error of the flags comes from EvalOptions.validate, word for word what `avseg eval` says, before
    a model or a dataset is looked at (neither exists here); evaluate() says the same for the same mistake."""
    from avsegcli.eval.evaluate import evaluate, evaluate_options
    from avsegcli.eval.options import EvalOptions

    nowhere = tmp_path / "nowhere"
    cases = [
        ({"task": "s5"}, "unknown task 's5'; expected one of s4, ms3, avss"),
        ({"protocol": "bad"}, "--protocol must be official, per-frame or both, not 'bad'"),
        ({"pred": nowhere}, "give --weights or --pred, not both"),
        ({"weights": None, "pred": nowhere, "save_pred": nowhere},
         "--save-pred needs --weights (the masks come from the model)"),
        ({"negative_audio": ","}, "--negative-audio needs at least one of silence, noise, offscreen"),
        ({"negative_audio": "silence,bogus"},
         "unknown negative-audio condition(s) bogus; expected silence, noise, offscreen"),
        ({"batch_size": 0}, "batch size must be at least 1 clip, got 0"),
        ({"limit": 0}, "--limit must be at least 1, got 0"),
        ({"forward_batch": 0}, "forward batch must be at least 1 frame, got 0"),
    ]
    for kw, msg in cases:
        fields = {"task": "s4", "data": nowhere, "weights": nowhere, **kw}
        with pytest.raises(AvsegError) as got:
            EvalOptions(**fields).validate()
        assert str(got.value) == msg
        with pytest.raises(AvsegError) as got:
            evaluate_options(EvalOptions(**fields))
        assert str(got.value) == msg
        flags = [x for k, v in fields.items() if v is not None for x in (FLAGS[k], v)]
        assert user_error(*flags) == msg
    _, pred = weights_run(env, "s4")
    for kw, msg in [({"batch_clips": 0}, "batch size must be at least 1 clip, got 0"),
                    ({"limit": 0}, "--limit must be at least 1, got 0"),
                    ({"forward_batch": 0}, "forward batch must be at least 1 frame, got 0")]:
        with pytest.raises(AvsegError) as got:
            evaluate("s4", env.data, "test", pred_dir=pred, **kw)
        assert str(got.value) == msg


def test_options_record(env: SimpleNamespace, tmp_path: Path) -> None:
    """validate() makes the task a Task and parses --protocol and --negative-audio once; evaluate_options() scores
    what the command line scores, telling ``note`` what it loaded and ``display``'s callback how far it got."""
    from contextlib import contextmanager

    from avsegcli.eval.evaluate import evaluate_options
    from avsegcli.eval.options import EvalOptions
    from avsegcli.tasks import task_of

    _, pred = weights_run(env, "s4")
    opts = EvalOptions(task="avss", pred=pred, protocol="official", negative_audio="noise, silence,noise")
    assert opts.validate() is opts and opts.validate() is opts
    assert opts.task is task_of("avss") and opts.protocols == ("official",) and opts.conditions == ("noise", "silence")
    assert EvalOptions(task="s4").validate().conditions == () and not EvalOptions(task="s4").to_stdout
    notes: list[str] = []
    seen: list[tuple[int, int]] = []

    @contextmanager
    def display():
        yield lambda done, total: seen.append((done, total))

    res = evaluate_options(EvalOptions(task="s4", data=env.data, pred=pred, batch_size=1), display=display,
                           note=notes.append)
    assert res["task"] == "s4" and res["batch_clips"] == 1
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert notes == [f"data {env.data} split test; saved masks {pred}"]
    cli = ok_json(tmp_path, "--task", "s4", "--data", env.data, "--pred", pred, "--batch-size", 1)
    assert res["overall"] == cli["overall"] and res["per_clip"] == cli["per_clip"]


# ---------------------------------------------------------------------------------- as a user runs it (subprocess)

registered = pytest.mark.skipif('"eval"' not in Path(avsegcli.cli.__file__).read_text(),
                                reason="`avseg eval` is not registered in avsegcli/cli/__init__.py yet")


@registered
def test_subprocess_pred_table_and_json(env: SimpleNamespace, tmp_path: Path) -> None:
    res_w, pred = weights_run(env, "s4")
    out = tmp_path / "s4.json"
    p = run_cli("eval", "--task", "s4", "--data", env.data, "--pred", pred, "--json", out, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "mIoU" in p.stdout and "per category" in p.stdout and "Traceback" not in p.stderr
    assert json.loads(out.read_text())["overall"]["official"]["miou"] == res_w["overall"]["official"]["miou"]


@registered
def test_subprocess_user_error(env: SimpleNamespace, tmp_path: Path) -> None:
    p = run_cli("eval", "--task", "avss", "--data", env.data, "--weights", env.ckpt["s4"], timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {env.ckpt['s4']}: ") and "needs 71" in lines[0]
