"""``avseg synth``: procedural datasets read back through the AVSBench readers, ground truth, mp4s, sounds, seeds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avsegcli.data import make_dataset, write_fake_avsbench
from avsegcli.errors import AvsegError
from avsegcli.media import VideoSource, load_audio, log_mel_chunks, read_clip
from avsegcli.synth import CATEGORIES, clip_rng, generate, render_clip, split_seed
from avsegcli.synth.clip import SynthClip
from avsegcli.synth.sound import SAMPLE_RATE, category_sound, mel_band
from avsegcli.synth.writer import CLIP_KINDS

SIZE = 112
SEED = 3
CAT_BAND = {c.name: mel_band(c.sound.freq) for c in CATEGORIES}


def _rerender(manifest: dict, task: str, info: dict, video: bool = False) -> SynthClip:
    """The clip a manifest entry describes, rendered again in memory."""
    sub = info["subset"]
    mode, seconds = CLIP_KINDS[sub or task]
    rng = clip_rng(manifest["split_seeds"][info["split"]], task, sub, info["index"])
    return render_clip(rng, mode=mode, seconds=seconds, image_size=SIZE, fps=16, video=video)


def _pool2(frames: np.ndarray) -> np.ndarray:
    """``[N, H, W, 3]`` -> 2x2 block means ``[N, H/2, W/2, 3]``."""
    n, h, w, c = frames.shape
    return frames.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def s4_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_s4")
    generate("s4", root, videos_per_split=2, seed=SEED, image_size=SIZE)
    return root


@pytest.fixture(scope="module")
def avss_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_avss")
    generate("avss", root, videos_per_split=1, seed=SEED, image_size=SIZE, mp4=False)
    return root


def _manifest(root: Path, task: str) -> dict:
    return json.loads((root / f"synth_{task}.json").read_text())


@pytest.mark.parametrize("task", ["s4", "ms3"])
def test_object_tasks_read_back(task, s4_root, tmp_path):
    root = s4_root if task == "s4" else tmp_path
    if task == "ms3":
        generate("ms3", root, videos_per_split=1, seed=SEED, image_size=SIZE, mp4=False)
    man = _manifest(root, task)
    infos = {c["name"]: c for c in man["clips"]}
    for split in ("train", "val", "test"):
        ds = make_dataset(task, root, split, image_size=SIZE)
        assert len(ds) == man["videos"][split]
        for i in range(len(ds)):
            item, info = ds[i], infos[ds.names[i]]
            assert item["frames"].shape == (5, 3, SIZE, SIZE) and item["log_mel"].shape == (5, 1, 96, 64)
            clip = _rerender(man, task, info)
            gt = clip.masks()
            for l in range(5):
                sounding = info["sounding"][l]
                assert len(sounding) <= (1 if task == "s4" else 2) and (task == "s4" or len(sounding) >= 1)
                if not item["mask_valid"][l]:
                    continue
                mask = item["masks"][l].numpy().astype(bool)
                assert mask.any() == bool(sounding), (info["name"], l)
                np.testing.assert_array_equal(mask, gt[l])
            # the PNG frames are the rendered ground-truth frames, byte for byte
            for l, path in enumerate(ds.clip_info(i).frame_paths):
                np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), clip.gt_frames[l])
            if task == "s4":
                assert item["category"] == info["source"]
                assert item["mask_valid"].tolist() == ([True] + [False] * 4 if split == "train" else [True] * 5)


def test_avss_read_back(avss_root):
    man = _manifest(avss_root, "avss")
    ids = {c.name: c.avss_id for c in CATEGORIES}
    infos = {c["name"]: c for c in man["clips"]}
    for split in ("train", "val", "test"):
        ds = make_dataset("avss", avss_root, split, image_size=SIZE, load_audio=split == "test")
        assert sorted(ds.clip_info(i).subset for i in range(len(ds))) == ["v1m", "v1s", "v2"]
        for i in range(len(ds)):
            item, info = ds[i], infos[ds.names[i]]
            clip = _rerender(man, "avss", info)
            gt = clip.class_masks()
            assert item["frame_valid"].sum() == info["seconds"] == (10 if info["subset"] == "v2" else 5)
            if split == "test":
                assert item["log_mel"].shape == (10, 1, 96, 64)
                assert (item["log_mel"][info["seconds"]:] == 0).all()  # padding past the clip
            for l in range(info["seconds"]):
                if not item["mask_valid"][l]:
                    continue
                labels = item["masks"][l].numpy()
                present = set(np.unique(labels).tolist()) - {0}
                assert present == {ids[n] for n in info["sounding"][l]}, (info["name"], l)
                np.testing.assert_array_equal(labels, gt[l])


def test_same_seed_same_bytes_different_seed_differs(s4_root, tmp_path):
    again = tmp_path / "again"
    generate("s4", again, videos_per_split=2, seed=SEED, image_size=SIZE)
    first, second = _hashes(s4_root), _hashes(again)
    assert first == second
    assert any(k.endswith(".mp4") for k in first) and any(k.endswith(".pkl") for k in first)
    other = tmp_path / "other"
    generate("s4", other, videos_per_split=2, seed=SEED + 1, image_size=SIZE)
    third = _hashes(other)
    mp4s = [k for k in first if k.endswith(".mp4")]
    assert all(first[k] != third[k] for k in mp4s)


def test_mp4_frames_and_sound_match_ground_truth(s4_root):
    man = _manifest(s4_root, "s4")
    checked_silent = checked_sound = 0
    for info in man["clips"]:
        if info["split"] == "train":
            continue
        path = s4_root / "videos" / info["split"] / f"{info['name']}.mp4"
        clip = read_clip(path, fps=1, image_size=SIZE)
        assert len(clip) == 5 and clip.frame_indices.tolist() == [15, 31, 47, 63, 79]
        with VideoSource(path) as src:
            raw = src.get(clip.frame_indices)
        frames_dir = s4_root / "Single-source" / "s4_data" / "visual_frames" / info["split"] / info["source"]
        png = np.stack([np.asarray(Image.open(frames_dir / info["name"] / f"{info['name']}_{l}.png"))
                        for l in range(1, 6)])
        # codec tolerance: luma is kept per pixel; chroma (4:2:0) per 2x2 block
        raw, png = raw.astype(np.float64), png.astype(np.float64)
        luma = np.array([0.299, 0.587, 0.114])
        assert np.abs(raw @ luma - png @ luma).mean() < 3.0
        assert np.abs(_pool2(raw) - _pool2(png)).mean() < 4.0
        # per-second audio of the mp4: the source's band is loud exactly in its seconds
        spec = log_mel_chunks(load_audio(path), num_chunks=5)[:, 0].mean(1).numpy()  # [5, 64]
        band = CAT_BAND[info["source"]]
        level = spec[:, max(0, band - 1):band + 2].max(1)
        on = np.array([bool(s) for s in info["sounding"]])
        if (~on).any():
            assert level[on].min() > level[~on].max() + 2.0, (info["name"], level)
            # a silent second holds background noise only: no band stands out
            quiet = spec[~on]
            assert (quiet.max(1) - np.median(quiet, 1)).max() < 1.5
            checked_silent += int((~on).sum())
        checked_sound += int(on.sum())
        assert level[on].min() > -0.5
    assert checked_silent >= 1 and checked_sound >= 5


def test_category_sounds_are_distinct():
    rng = np.random.Generator(np.random.PCG64(0))
    noise = 0.0035 * rng.standard_normal(SAMPLE_RATE)
    floor = log_mel_chunks(noise)[0, 0].mean(0).numpy()
    spectra = []
    for cat in CATEGORIES:
        x = 0.1 * category_sound(cat.sound, 1, rng) + noise
        spec = log_mel_chunks(x)[0, 0].mean(0).numpy()
        assert abs(int((spec - floor).argmax()) - CAT_BAND[cat.name]) <= 1, cat.name
        spectra.append(spec)
    s = np.stack(spectra)
    dist = np.sqrt(((s[:, None] - s[None]) ** 2).mean(-1))
    off_diag = dist[~np.eye(len(s), dtype=bool)]
    assert off_diag.min() > 0.6, np.round(dist, 2)
    # in each category's band, that category is far louder than every other one
    bands = [CAT_BAND[c.name] for c in CATEGORIES]
    energy = s[:, bands]  # [category, band of category j]
    assert (np.diag(energy)[None, :] > energy + 1.5)[~np.eye(len(s), dtype=bool)].all(), np.round(energy, 1)


def test_render_clip_invariants():
    for seed in range(24):
        mode = ("single", "multi", "mixed")[seed % 3]
        clip = render_clip(seed, mode=mode, seconds=5, image_size=64, video=seed < 3)
        k = len(clip.objects)
        assert 2 <= k <= 4 and len({ob.category for ob in clip.objects}) == k
        n_on = clip.activity.sum(1)
        if mode == "single":
            assert n_on.max() <= 1 and n_on[0] == 1 and clip.activity[:, clip.source].sum() == n_on.sum()
        elif mode == "multi":
            assert ((n_on >= 1) & (n_on <= 2)).all()
        masks = clip.masks()
        assert (masks.reshape(5, -1).any(1) == (n_on > 0)).all()
        if clip.video is not None:
            np.testing.assert_array_equal(clip.video[clip.gt_indices], clip.gt_frames)
            assert clip.audio.dtype == np.int16 and clip.audio.shape == (5 * SAMPLE_RATE,)


def test_seeds_and_guards(tmp_path):
    seeds = {s: split_seed(0, s) for s in ("train", "val", "test")}
    assert len(set(seeds.values())) == 3 and split_seed(1, "test") != seeds["test"]
    with pytest.raises(AvsegError, match="different seeds"):
        generate("s4", tmp_path / "x", 1, split_seeds={"train": 5, "test": 5}, mp4=False, image_size=64)
    generate("ms3", tmp_path / "y", {"test": 1}, splits=("test",), mp4=False, image_size=64)
    with pytest.raises(AvsegError, match="already"):
        generate("ms3", tmp_path / "y", {"test": 1}, splits=("test",), mp4=False, image_size=64)
    # adding clips leaves the earlier ones unchanged: every file of clip 0 is byte-identical, only the lists change
    before, clips_before = _hashes(tmp_path / "y"), _manifest(tmp_path / "y", "ms3")["clips"]
    generate("ms3", tmp_path / "y", {"test": 2}, splits=("test",), mp4=False, image_size=64, overwrite=True)
    after, clips_after = _hashes(tmp_path / "y"), _manifest(tmp_path / "y", "ms3")["clips"]
    changed = {k for k in before if after.get(k) != before[k]}
    assert all(k.endswith((".csv", ".json")) for k in changed), changed  # the metadata csv and the manifest
    added = set(after) - set(before)
    assert len(added) >= 5 and len([k for k in before if not k.endswith((".csv", ".json"))]) >= 5, added
    assert len(clips_after) == 2 and clips_after[0] == clips_before[0]
    with pytest.raises(AvsegError):
        generate("s5", tmp_path / "z", 1)
    real = tmp_path / "real"  # a folder with a dataset synth did not write is never touched
    write_fake_avsbench(real, "ms3", videos_per_split=1)
    with pytest.raises(AvsegError, match="did not write"):
        generate("ms3", real, 1, mp4=False, image_size=64, overwrite=True)


def test_cli_synth(tmp_path):
    import typer
    from typer.testing import CliRunner

    from avsegcli.cli.synth_cmd import synth

    app = typer.Typer()
    app.command("synth")(synth)
    app.command("noop")(lambda: None)  # keep "synth" a subcommand
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["synth", "--task", "s4", "--out", str(out), "--split-videos", "train=1,test=2",
                                   "--splits", "train,test", "--seed", "7", "--no-mp4", "--image-size", "64",
                                   "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["splits"]["test"]["clips"] == 2 and summary["split_seeds"]["test"] == split_seed(7, "test")
    assert len(make_dataset("s4", out, "test", image_size=64)) == 2
    assert torch.is_tensor(make_dataset("s4", out, "train", image_size=64)[0]["log_mel"])


def test_s4_train_masks_all(s4_root):
    """Synthetic S4 train clips carry all five masks; the benchmark protocol still reads only the first."""
    first = make_dataset("s4", s4_root, "train", image_size=64, load_audio=False)
    every = make_dataset("s4", s4_root, "train", image_size=64, load_audio=False, train_masks="all")
    a, b = first[0], every[0]
    assert a["mask_valid"].tolist() == [True, False, False, False, False]
    assert b["mask_valid"].tolist() == [True] * 5
    assert torch.equal(a["masks"][0], b["masks"][0])
    with pytest.raises(ValueError):
        make_dataset("s4", s4_root, "train", train_masks="some")


def test_generate_takes_a_task_or_its_name(tmp_path):
    """``generate(Task)`` writes the same files as ``generate(name)``; the summary and the files record the name."""
    from avsegcli.tasks import MS3

    kw = dict(videos_per_split={"test": 1}, splits=("test",), seed=SEED, mp4=False, image_size=64)
    by_task, by_name = generate(MS3, tmp_path / "t", **kw), generate("ms3", tmp_path / "n", **kw)
    assert by_task["task"] == by_name["task"] == "ms3" and _hashes(tmp_path / "t") == _hashes(tmp_path / "n")
    assert _manifest(tmp_path / "t", "ms3")["task"] == "ms3"
