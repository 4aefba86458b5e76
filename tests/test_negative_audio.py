"""Negative audio (issue 15): ``avseg eval --negative-audio``, ``avseg run --audio``, ``avseg train --negative-audio``.

* FPR equals a hand computation from logits saved by a stub model whose logits are known (S4, MS3, AVSS);
* a model that ignores audio (audio projection zeroed) predicts the same masks under every condition, so its FPR
  equals its mean positive predicted area;
* offscreen never pairs clips that share a category; the same seed gives the same pairing;
* the bundled model on the sample: silence in, less sounding area out.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from avsegcli.build import build_model, preset
from avsegcli.data import make_dataset, write_fake_avsbench
from avsegcli.errors import AvsegError
from avsegcli.eval.evaluate import evaluate
from avsegcli.media.logmel import SILENCE_VALUE, waveform_to_examples
from avsegcli.data.negatives import GROUPS, clip_categories, offscreen_pairs, parse_conditions
from avsegcli.media.signals import NOISE_RMS
from avsegcli.palette import AVSS_CLASS_NAMES
from avsegcli.inference.predictor import Predictor
from avsegcli.weights import save_checkpoint
from conftest import REPO, run_cli

SIZE = 32
ALL = ("silence", "noise", "offscreen")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny-model modules: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("neg")
    write_fake_avsbench(root, "s4", videos_per_split=3, seed=0, image_hw=(SIZE, SIZE))
    write_fake_avsbench(root, "ms3", videos_per_split=3, seed=1, image_hw=(SIZE, SIZE))
    write_fake_avsbench(root, "avss", videos_per_split=1, seed=9, image_hw=(SIZE, SIZE))  # a seed whose 3 test
    # clips can all be paired offscreen (their random labels leave a class-disjoint donor)
    return root


# ------------------------------------------------------------------------------------------------ a stub model


class _Known(torch.nn.Module):
    """Logits known in closed form: ``w . frame + 0.1 * (mean log-mel of the frame's patch - log 0.01)`` per pixel
    (S4/MS3), or that as class 5's logit against 0 for background and -20 for the rest (AVSS); padded AVSS frames
    give all-zero logits (class 0), as the real model."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.w = torch.tensor([1.0, -0.7, 0.4])

    def score(self, frames: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
        audio = 0.1 * (log_mel.mean(dim=(1, 2, 3)) - SILENCE_VALUE)
        return (frames * self.w.view(1, 3, 1, 1)).sum(1) + audio.view(-1, 1, 1)

    def forward(self, frames, log_mel=None, *, frame_valid=None, **_):
        s = self.score(frames, log_mel)
        if self.classes == 1:
            out = s[:, None]
        else:
            out = torch.full((s.shape[0], self.classes, *s.shape[1:]), -20.0)
            out[:, 0] = 0.0
            out[:, 5] = s
        if frame_valid is not None:
            out = out * frame_valid.float().view(-1, 1, 1, 1)
        return {"pred_masks": out}


class _StubPredictor:
    def __init__(self, classes: int) -> None:
        self.model, self.num_classes, self.device = _Known(classes), classes, torch.device("cpu")
        self.image_size, self.config, self.weights = SIZE, {"task": None}, None

    def forward(self, frames, log_mel=None, *, frame_valid=None):
        """As ``Predictor.forward`` (the road avseg eval takes): ``[B,K,S,S]`` float32 logits."""
        return self.model(frames, log_mel, frame_valid=frame_valid)["pred_masks"].float()

    def model_info(self) -> dict:
        return {"weights": "stub"}


def _noise_examples(name: str, seed: int, seconds: int) -> torch.Tensor:
    """The documented noise: N(0, 0.1^2) at 16 kHz from SeedSequence([seed, crc32(name)]), clipped, VGGish framing."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))
    wave = np.clip(rng.standard_normal(seconds * 16000) * NOISE_RMS, -1, 1)
    return waveform_to_examples(wave)[:seconds]


def _hand_fpr(task: str, root: Path, res: dict, seed: int) -> dict[str, float]:
    """FPR per condition from the stub's logits, computed here from the clip files (frames, pickles, wavs)."""
    ds = make_dataset(task, root, "test", image_size=SIZE)
    model = _Known(1 if task != "avss" else 71)
    pairing = res["negative_audio_info"]["offscreen"]["pairing"]
    names = ds.names
    out: dict[str, list[float]] = {c: [] for c in ALL}
    for i in range(len(ds)):
        it = ds[i]
        real = int(it["frame_valid"].sum())
        frames = it["frames"][:real]
        mels = {"silence": torch.full((real, 1, 96, 64), SILENCE_VALUE),
                "noise": _noise_examples(it["name"], seed, real)}
        donor = pairing[it["name"]]
        if donor is not None:
            j = names.index(donor)
            mel = ds[j]["log_mel"]
            n_donor = int(ds[j]["frame_valid"].sum())
            mels["offscreen"] = mel[torch.arange(real) % n_donor]
        for c, mel in mels.items():
            logits = model.score(frames, mel)  # the "saved logits" of this condition
            out[c] += [float((torch.sigmoid(lg) > 0.5).float().mean()) for lg in logits]
    assert all(out.values()), {c: len(v) for c, v in out.items()}
    return {c: sum(v) / len(v) for c, v in out.items()}


@pytest.mark.parametrize("task", ["s4", "ms3", "avss"])
def test_fpr_equals_hand_computation(task, data):
    pred = _StubPredictor(1 if task != "avss" else 71)
    res = evaluate(task, data, "test", predictor=pred, negative_audio=ALL, negative_seed=3, batch_clips=2)
    hand = _hand_fpr(task, data, res, seed=3)
    for c in ALL:
        got = res["negative_audio"][c]
        assert got["fpr"] == pytest.approx(hand[c], abs=1e-9), (task, c)
        assert 0.0 < got["fpr"] < 1.0
    # the audio term moves the stub: silence (term 0) and noise (louder) differ
    assert res["negative_audio"]["noise"]["fpr"] > res["negative_audio"]["silence"]["fpr"]
    miou = res["overall"]["official"]["miou"]
    mean_fpr = sum(res["negative_audio"][c]["fpr"] for c in ALL) / 3
    assert res["g_miou"] == pytest.approx(math.sqrt(miou * (1 - mean_fpr)))
    assert res["g_fscore"] == pytest.approx(math.sqrt(res["overall"]["official"]["fscore"] * (1 - mean_fpr)))


# ------------------------------------------------------------------------------------------------ a deaf model


@pytest.fixture(scope="module")
def deaf(tmp_path_factory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("deaf")
    torch.manual_seed(0)
    out = {}
    for task, extra in (("s4", {}), ("avss", {"task": "avss", "head": {"num_classes": 71}})):
        model = build_model(preset("tiny", image_size=SIZE, **extra))
        with torch.no_grad():
            model.audio_proj.weight.zero_()
            model.audio_proj.bias.zero_()
        out[task] = save_checkpoint(model, base / f"deaf_{task}.safetensors")
    return SimpleNamespace(base=base, ckpt=out)


@pytest.mark.parametrize("task", ["s4", "avss"])
def test_model_ignoring_audio_has_fpr_equal_to_its_area(task, data, deaf, tmp_path):
    save = tmp_path / "pred"
    res = evaluate(task, data, "test", predictor=Predictor(deaf.ckpt[task], device="cpu"), negative_audio=ALL,
                   save_pred=save, batch_clips=2)
    area = res["negative_audio_info"]["positive_area"]
    assert 0.0 < area < 1.0
    for c in ALL:
        assert res["negative_audio"][c]["fpr"] == pytest.approx(area, abs=1e-12), c
    # the saved masks of every condition are the positive ones, file for file
    positives = sorted(p.relative_to(save) for p in save.rglob("*.png") if p.relative_to(save).parts[0] not in ALL)
    assert positives
    for c in ("silence", "noise"):
        for rel in positives:
            assert np.array_equal(np.asarray(Image.open(save / rel)), np.asarray(Image.open(save / c / rel)))
    # --pred reads DIR and DIR/<condition>/ and gives the same FPR (it only sees the thresholded masks)
    again = evaluate(task, data, "test", pred_dir=save, negative_audio=ALL, batch_clips=2, image_size=SIZE)
    for c in ALL:
        assert again["negative_audio"][c]["fpr"] == pytest.approx(res["negative_audio"][c]["fpr"], abs=1e-12)
    if task == "s4":  # the same masks as `avseg run` output folders: DIR/<clip>/ and DIR/<condition>/<clip>/
        from avsegcli.data import load_binary_prediction
        from avsegcli.masks.io import VideoMaskWriter

        run_dir = tmp_path / "run"
        for sub in ("", *ALL):
            for c in make_dataset(task, data, "test", load_audio=False).clips:
                masks = load_binary_prediction(save / sub, c.name, 5, c.category).numpy()
                w = VideoMaskWriter(run_dir / sub, c.name, fmt="png", semantic=False)
                for j in range(5):
                    w.add(frame_index=16 * j + 15, timestamp=j + 0.9375, chunk=j, mask=masks[j])
                w.finish({"source": c.name, "audio": {"source": sub or "original"}})
        ran = evaluate(task, data, "test", pred_dir=run_dir, negative_audio=ALL, batch_clips=2, image_size=SIZE)
        assert ran["pred_layout"] == "avseg-run"
        assert {c: v["fpr"] for c, v in ran["negative_audio"].items()} == \
            {c: v["fpr"] for c, v in again["negative_audio"].items()}
    shutil.rmtree(save / "noise")
    with pytest.raises(AvsegError, match="no saved masks"):
        evaluate(task, data, "test", pred_dir=save, negative_audio=("noise",), image_size=SIZE)


# ------------------------------------------------------------------------------------------------ pairing


def test_offscreen_never_shares_a_category(data):
    for task in ("s4", "avss"):
        ds = make_dataset(task, data, "test", image_size=SIZE, load_audio=False)
        shown, heard, source = clip_categories(ds)
        pairs = offscreen_pairs(ds.names, ds.names, shown, heard, seed=0)
        assert source == ("category folder" if task == "s4" else "labels")
        for name, p in pairs.items():
            if p is not None:
                assert p["donor"] != name and not (heard[p["donor"]] & shown[name]), (task, name, p)
        if task == "avss":  # the labels, read by hand from the colour PNGs
            for c in ds.clips:
                ids = set()
                for m in c.mask_paths:
                    if m is not None:
                        rgb = np.asarray(Image.open(m).convert("RGB"))
                        from avsegcli.palette import colours_to_classes

                        ids |= set(np.unique(colours_to_classes(rgb)).tolist()) - {0}
                assert shown[c.name] == {AVSS_CLASS_NAMES[i] for i in ids}
    # S4 fake categories are in three different groups: every donor is from another group
    ds = make_dataset("s4", data, "test", image_size=SIZE, load_audio=False)
    shown, heard, _ = clip_categories(ds)
    for name, p in offscreen_pairs(ds.names, ds.names, shown, heard, seed=5).items():
        assert p["rule"] == "group" and GROUPS[next(iter(heard[p["donor"]]))] != GROUPS[next(iter(shown[name]))]


def test_pairing_rules_and_seed():
    cats = ["guitar", "car", "dog", "piano", "violin", "bird", "drum", "bell"]
    rng = np.random.default_rng(0)
    names = [f"c{i:02d}" for i in range(40)]
    shown = {n: frozenset(rng.choice(cats, size=3, replace=False)) for n in names}
    heard = {n: frozenset([next(iter(shown[n]))]) for n in names}
    a = offscreen_pairs(names, names, shown, heard, seed=1)
    assert a == offscreen_pairs(names, names, shown, heard, seed=1)
    assert a != offscreen_pairs(names, names, shown, heard, seed=2)
    # a clip's donor does not depend on which other clips are scored
    assert offscreen_pairs(names[5:9], names, shown, heard, seed=1) == {n: a[n] for n in names[5:9]}
    for n, p in a.items():
        assert p is not None and not (heard[p["donor"]] & shown[n])
        groups = {GROUPS[c] for c in shown[n]}
        options = [d for d in names if d != n and not ({GROUPS[c] for c in heard[d]} & groups)]
        assert p["rule"] == ("group" if options else "category")
        if p["rule"] == "group":
            assert not ({GROUPS[c] for c in heard[p["donor"]]} & groups)
    # nobody qualifies -> None; no labels at all -> any other clip
    assert offscreen_pairs(["a", "b"], ["a", "b"], {"a": frozenset({"dog"}), "b": frozenset({"dog"})},
                           {"a": frozenset({"dog"}), "b": frozenset({"dog"})}, 0) == {"a": None, "b": None}
    free = offscreen_pairs(["a", "b"], ["a", "b"], {}, {}, 0)
    assert free == {"a": {"donor": "b", "rule": "unlabelled"}, "b": {"donor": "a", "rule": "unlabelled"}}


def test_cli_json_keys_and_errors(data, deaf, tmp_path):
    import typer
    from typer.testing import CliRunner

    from avsegcli.cli import eval_cmd

    app = typer.Typer()
    app.command("eval")(eval_cmd.evaluate)
    app.command("noop")(lambda: None)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["eval", "--task", "s4", "--data", str(data), "--weights", str(deaf.ckpt["s4"]),
                                   "--device", "cpu", "--negative-audio", "silence,offscreen", "--seed", "4",
                                   "--json", str(out), "-q"])
    assert res.exit_code == 0, (res.output, res.exception)
    res = json.loads(out.read_text())
    assert set(res["negative_audio"]) == {"silence", "offscreen"}
    assert set(res["negative_audio"]["silence"]) >= {"fpr", "frames_with_any"}
    assert {"g_miou", "g_fscore"} <= set(res) and res["negative_audio_info"]["seed"] == 4
    assert len(res["negative_audio_info"]["offscreen"]["pairing"]) == 3
    bad = CliRunner().invoke(app, ["eval", "--task", "s4", "--data", str(data), "--negative-audio", "musak"])
    assert isinstance(bad.exception, AvsegError) and "musak" in str(bad.exception)
    assert "\n" not in str(bad.exception) and bad.exception.exit_code == 2
    assert parse_conditions("noise, silence,noise") == ("noise", "silence")


def test_one_replacement_audio_for_eval_and_train(data):
    """avseg eval (eval.negative) and avseg train (train.negatives) take a clip's replacement log-mel from one
    function, data.negatives.negative_log_mel: same tensors for the same condition, seed and donor."""
    from avsegcli.data.negatives import donor_log_mel, negative_log_mel
    from avsegcli.eval.negative import NegativeAudioScorer
    from avsegcli.train.negatives import NegativeAudioClips

    for task in ("s4", "avss"):
        ds = make_dataset(task, data, "test", image_size=SIZE)
        scorer = NegativeAudioScorer(task, ds, range(len(ds)), ALL, seed=4)
        wrapped = NegativeAudioClips(ds, seed=4)
        donors = 0
        for i in range(len(ds)):
            item = ds[i]
            t, real = int(item["frame_valid"].shape[0]), int(item["frame_valid"].sum())
            for c in ("silence", "noise"):
                mel = scorer.log_mel(c, item)
                assert mel.shape == (t, 1, 96, 64) and torch.equal(mel, negative_log_mel(ds, item, c, 4))
                assert torch.equal(mel[:real], mel[torch.arange(real)])
            assert torch.equal(wrapped[(i, "silence", -1, 0)]["log_mel"], scorer.log_mel("silence", item))
            assert torch.equal(wrapped[(i, "noise", -1, 2)]["log_mel"], negative_log_mel(ds, item, "noise", 4, 2))
            pair = scorer.pairs[item["name"]]
            if pair is None:
                assert scorer.log_mel("offscreen", item) is None
                continue
            j = ds.names.index(pair["donor"])
            mel = scorer.log_mel("offscreen", item)
            assert torch.equal(mel, wrapped[(i, "offscreen", j, 0)]["log_mel"]) and torch.equal(mel, donor_log_mel(ds, j, t))
            own = ds[j]
            n = int(own["frame_valid"].sum())  # the donor's real seconds, repeated from the start
            assert torch.equal(mel, own["log_mel"][torch.arange(t) % n])
            donors += 1
        assert donors
    with pytest.raises(ValueError, match="donor"):
        negative_log_mel(ds, ds[0], "offscreen", 0)


# ------------------------------------------------------------------------------------------------ training


def test_train_negative_sampler(data, tmp_path):
    from avsegcli.train.engine import train
    from avsegcli.train import TrainConfig
    from avsegcli.train.data import epoch_batches
    from avsegcli.train.negatives import NegativeAudioClips, NegativeSampler, count_negative
    from avsegcli.train.state import read_log

    ds = make_dataset("s4", data, "train", image_size=SIZE)
    sampler = NegativeSampler(ds, 0.5, seed=3)
    batches = epoch_batches(len(ds), 1, 3, 0) * 20
    keys = sampler.assign(batches, epoch=0)
    assert keys == sampler.assign(batches, epoch=0) and keys != sampler.assign(batches, epoch=1)
    flat = [k for b in keys for k in b]
    assert 15 <= count_negative(flat) <= 45
    assert {k[1] for k in flat if isinstance(k, tuple)} == set(ALL)
    wrapped = NegativeAudioClips(ds, seed=3)
    for k in flat:
        if isinstance(k, tuple) and k[1] == "offscreen":
            assert ds.clips[k[2]].category != ds.clips[k[0]].category and ds.clips[k[2]].split == "train"
            item = wrapped[k]
            assert item["negative"] and not item["masks"].any()
            assert torch.equal(item["log_mel"], ds[k[2]]["log_mel"])
            break
    item = wrapped[(0, "silence", -1, 0)]
    assert torch.all(item["log_mel"] == SILENCE_VALUE) and torch.equal(item["mask_valid"], ds[0]["mask_valid"])
    # every clip negative: the log counts them
    cfg = TrainConfig(task="s4", data=str(data), out=str(tmp_path / "run"), preset="tiny", image_size=SIZE, lr=1e-3,
                      batch_size=2, log_every=1, num_workers=0, val_every=0, max_steps=2, negative_audio=1.0)
    result = train(cfg)
    assert [r["negative_clips"] for r in read_log(tmp_path / "run")] == [2, 4]
    # the released dice loss cannot learn from an empty target (constant 1): the run says so
    from avsegcli.losses import dice_per_frame

    logits = torch.randn(2, 8, 8, requires_grad=True)
    loss = dice_per_frame(logits, torch.zeros(2, 8, 8)).sum()
    loss.backward()
    assert float(loss.detach()) == 2.0 and not logits.grad.any()
    assert any("--loss bce" in w for w in result.warnings)
    with pytest.raises(AvsegError, match="probability"):
        train(TrainConfig(task="s4", data=str(data), out=str(tmp_path / "bad"), negative_audio=1.5))


# ------------------------------------------------------------------------------------------------ avseg run --audio

SAMPLE = REPO / "samples" / "demo.mp4"


def test_run_silence_lowers_the_sounding_area_and_overrides(tmp_path):
    out = tmp_path / "silence"
    proc = run_cli("run", SAMPLE, "--audio", "silence", "--out", out, "-q", "--workers", "0", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "demo" / "meta.json").read_text())
    assert meta["audio"] == {"source": "silence"}
    silent = float(np.mean([f["sounding_area"] for f in meta["frames"]]))
    pred = Predictor(device="cpu", batch_size=5)
    from avsegcli.run.local import run_videos

    (again,) = run_videos(pred, [SAMPLE], out, workers=0)  # the original audio into the silent run's folder
    assert again.status == "failed" and "--audio silence" in again.reason
    own = pred.predict_video(SAMPLE)  # what `avseg run` writes with the original audio (same masks, tested elsewhere)
    original = float(own.masks.astype(bool).mean())
    print(f"demo mean sounding area: original {original:.4f}, silence {silent:.4f}")
    assert silent < original
    _check_overrides(pred, own, tmp_path)


def _check_overrides(pred, own, tmp_path):
    # the video's own file as the override: same audio from the start, so the same masks
    assert np.array_equal(pred.predict_video(SAMPLE, audio=str(SAMPLE)).masks, own.masks)
    from avsegcli.media.override import parse_audio

    noise = parse_audio("noise")
    assert torch.equal(noise.stream().patch(2), noise.stream().patch(2))  # seeded per second
    assert not torch.equal(noise.stream().patch(2), noise.stream().patch(3))
    assert noise.describe() == {"source": "noise", "noise_rms": NOISE_RMS, "seed": 0}
    # a 1.3 s file loops: the patch of second k reads samples 16000k.. modulo its length

    short = tmp_path / "short.wav"
    import wave

    tone = (0.3 * np.sin(2 * np.pi * 926 * np.arange(20800) / 16000) * 32767).astype("<i2")
    with wave.open(str(short), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(tone.tobytes())
    stream = parse_audio(short).stream()
    from avsegcli.media.logmel import chunk_patch

    wave_f = tone.astype(np.float64) / 32768
    assert torch.allclose(stream.patch(3), chunk_patch(wave_f[(48000 + np.arange(15600)) % 20800]))
    with pytest.raises(AvsegError, match="no such file"):
        parse_audio(tmp_path / "missing.wav")
