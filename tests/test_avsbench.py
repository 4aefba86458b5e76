"""AVSBench readers on tiny fake datasets: layout, preprocessing, flags, errors and saved-prediction round trips."""

from __future__ import annotations

import csv
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avsegcli.data import (
    AVSSDataset, MS3Dataset, S4Dataset, load_binary_prediction, load_log_mel_pickle, load_semantic_prediction,
    make_dataset, save_binary_prediction, save_semantic_prediction, write_fake_avsbench,
)
from avsegcli.data.avss import colour_mask_to_ids
from avsegcli.errors import AvsegError
from avsegcli.eval.metrics import BinaryMetrics, SemanticMetrics
from avsegcli.palette import voc_palette

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def stub_log_mel(n: int = 7):
    return lambda path: torch.full((n, 1, 96, 64), 0.5)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("avsbench")
    for task in ("s4", "ms3", "avss"):
        write_fake_avsbench(r, task, videos_per_split=2, seed=0, image_hw=(48, 64))
    return r


def _fresh(tmp_path: Path, task: str) -> Path:
    return write_fake_avsbench(tmp_path / "ds", task, videos_per_split=2, seed=1)


def _pil_normalised(img: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    return (x - MEAN) / STD


# ------------------------------------------------------------------------------------------------ shapes and flags


@pytest.mark.parametrize("task,split,frames_valid,gt0", [
    ("s4", "train", [1] * 5, [1, 0, 0, 0, 0]), ("s4", "test", [1] * 5, [1] * 5),
    ("ms3", "train", [1] * 5, [1] * 5), ("ms3", "val", [1] * 5, [1] * 5),
])
def test_object_items(root: Path, task: str, split: str, frames_valid: list, gt0: list) -> None:
    ds = make_dataset(task, root, split, image_size=40)
    assert len(ds) == 2
    it = ds[0]
    assert it["frames"].shape == (5, 3, 40, 40) and it["frames"].dtype == torch.float32
    assert it["log_mel"].shape == (5, 1, 96, 64) and it["masks"].shape == (5, 40, 40)
    assert it["masks"].dtype == torch.float32 and set(it["masks"].unique().tolist()) <= {0.0, 1.0}
    assert it["frame_valid"].tolist() == [bool(v) for v in frames_valid]
    assert it["mask_valid"].tolist() == [bool(v) for v in gt0] == it["gt_valid"].tolist()
    assert it["task"] == task and it["split"] == split and it["name"] == ds.names[0]
    assert (it["category"] != "") == (task == "s4")
    if split == "train" and task == "s4":
        assert it["masks"][1:].sum() == 0


def test_avss_items_and_flags(root: Path) -> None:
    assert AVSSDataset(root, "test", log_mel_fn=stub_log_mel(7))[0]["frames"].shape == (10, 3, 224, 224)
    ds = AVSSDataset(root, "test", log_mel_fn=stub_log_mel(7), image_size=32)
    assert len(ds) == 6 and {ds.clip_info(i).subset for i in range(6)} == {"v1s", "v1m", "v2"}
    flags = {}
    for i in range(len(ds)):
        it = ds[i]
        assert it["frames"].shape == (10, 3, 32, 32) and it["masks"].dtype == torch.int64
        assert it["log_mel"].shape == (10, 1, 96, 64)
        assert it["log_mel"][:7].eq(0.5).all() and it["log_mel"][7:].eq(0).all()
        flags[it["subset"]] = (it["frame_valid"].sum().item(), it["gt_valid"].sum().item(),
                               it["mask_valid"].sum().item())
        nf = int(it["frame_valid"].sum())
        assert it["frames"][nf:].eq(0).all() and it["masks"][nf:].eq(0).all()
    assert flags == {"v1s": (5, 1, 5), "v1m": (5, 5, 5), "v2": (10, 10, 10)}
    train = AVSSDataset(root, "train", subsets=["v1s"], load_audio=False, image_size=32)
    it = train[0]
    assert "log_mel" not in it and it["mask_valid"].tolist() == [True] + [False] * 9
    assert it["frames"].shape == (10, 3, 32, 32)
    long = AVSSDataset(root, "val", subsets=["v2"], log_mel_fn=stub_log_mel(12), image_size=16)
    assert long[0]["log_mel"].eq(0.5).all()  # truncated to 10


def test_dataloader_collates(root: Path) -> None:
    ds = S4Dataset(root, "val", image_size=32)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["frames"].shape == (2, 5, 3, 32, 32) and batch["mask_valid"].shape == (2, 5)
    assert list(batch["name"]) == ds.names


# ------------------------------------------------------------------------------------------------ preprocessing


def test_object_frame_and_mask_preprocessing(root: Path) -> None:
    for cls in (S4Dataset, MS3Dataset):
        ds = cls(root, "test", image_size=50)
        info = ds.clip_info(1)
        it = ds[1]
        ref = _pil_normalised(Image.open(info.frame_paths[2]).convert("RGB").resize((50, 50), Image.BILINEAR))
        torch.testing.assert_close(it["frames"][2], ref, atol=1e-6, rtol=0)
        m = np.asarray(Image.open(info.mask_paths[4]).resize((50, 50), Image.NEAREST)) > 0
        assert torch.equal(it["masks"][4], torch.from_numpy(m).float())


def test_empty_mask_frame(root: Path) -> None:
    it = S4Dataset(root, "val", image_size=32)[0]
    assert it["masks"][2].sum() == 0 and it["masks"][0].sum() > 0


def test_avss_geometry(root: Path) -> None:
    for split in ("test", "train"):
        ds = AVSSDataset(root, split, subsets=["v1m"], load_audio=False, image_size=40)
        info = ds.clip_info(0)
        it = ds[0]
        img = Image.open(info.frame_paths[1]).convert("RGB")
        lab = Image.open(info.mask_paths[1]).convert("RGB")
        if split == "train":  # 48x64: short side 40 -> 40x53, centre crop x from round(6.5) = 6 (banker's)
            img = img.resize((53, 40), Image.BILINEAR).crop((6, 0, 46, 40))
            lab = lab.resize((53, 40), Image.NEAREST).crop((6, 0, 46, 40))
        else:
            img, lab = img.resize((40, 40), Image.BILINEAR), lab.resize((40, 40), Image.NEAREST)
        torch.testing.assert_close(it["frames"][1], _pil_normalised(img), atol=1e-6, rtol=0)
        assert torch.equal(it["masks"][1], colour_mask_to_ids(lab))


def test_colour_to_class(tmp_path: Path) -> None:
    pal = voc_palette(71)
    ids = np.array([[0, 1, 2, 70], [15, 64, 33, 0]])
    rgb = pal[ids]
    rgb[1, 3] = (1, 2, 3)  # in no palette entry -> background
    assert pal[1].tolist() == [128, 0, 0] and pal[2].tolist() == [0, 128, 0] and pal[15].tolist() == [192, 128, 128]
    Image.fromarray(rgb).save(tmp_path / "m.png")
    got = colour_mask_to_ids(Image.open(tmp_path / "m.png"))
    assert got.tolist() == [[0, 1, 2, 70], [15, 64, 33, 0]]


def test_log_mel_pickle(root: Path, tmp_path: Path) -> None:
    info = S4Dataset(root, "test").clip_info(0)
    with open(info.audio_path, "rb") as f:
        raw = pickle.load(f)
    assert torch.equal(load_log_mel_pickle(info.audio_path), raw)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(AvsegError, match="refusing"):
        load_log_mel_pickle(bad)
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps(torch.zeros(3, 1, 96, 64)))
    with pytest.raises(AvsegError, match="expected"):
        load_log_mel_pickle(wrong)


# ------------------------------------------------------------------------------------------------ errors


def test_missing_files_named(tmp_path: Path) -> None:
    r = _fresh(tmp_path, "s4")
    info = S4Dataset(r, "test").clip_info(0)
    for p in info.frame_paths[:4]:
        p.unlink()
    with pytest.raises(AvsegError) as e:
        S4Dataset(r, "test")
    msg = str(e.value)
    assert "4 frame file(s) missing" in msg and str(info.frame_paths[0]) in msg and "(and 1 more)" in msg
    S4Dataset(r, "val")  # other splits unaffected
    ra = _fresh(tmp_path / "a", "avss")
    shutil.rmtree(ra / "AVSS" / "v2" / "fakev2_val_01" / "labels_rgb")
    with pytest.raises(AvsegError, match="10 label file"):
        AVSSDataset(ra, "val", log_mel_fn=stub_log_mel())
    (ra / "AVSS" / "v1s" / "fakev1s_test_00" / "audio.wav").unlink()
    with pytest.raises(AvsegError, match="1 audio file"):
        AVSSDataset(ra, "test", log_mel_fn=stub_log_mel())
    AVSSDataset(ra, "test", load_audio=False)


def test_empty_split_and_bad_input(tmp_path: Path) -> None:
    r = _fresh(tmp_path, "ms3")
    csv_path = r / "Multi-sources" / "ms3_meta_data.csv"
    rows = list(csv.reader(open(csv_path)))
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([r_ for r_ in rows if r_[-1] != "test"])
    with pytest.raises(AvsegError, match="no clips in split 'test'"):
        MS3Dataset(r, "test")
    with pytest.raises(AvsegError, match="unknown split"):
        MS3Dataset(r, "dev")
    with pytest.raises(AvsegError, match="metadata csv not found"):
        S4Dataset(r, "test")
    with pytest.raises(AvsegError, match="subset"):
        AVSSDataset(r, "test", subsets=["v3"])


# ------------------------------------------------------------------------------------------------ predictions


def test_binary_prediction_round_trip(root: Path, tmp_path: Path) -> None:
    ds = S4Dataset(root, "test", image_size=32, load_audio=False)
    metric = BinaryMetrics()
    for i in range(len(ds)):
        it = ds[i]
        paths = save_binary_prediction(it["masks"], tmp_path / "pred", it["name"], it["category"])
        assert paths[0] == tmp_path / "pred" / it["category"] / it["name"] / f"{it['name']}_0.png"
        assert sorted(np.unique(np.asarray(Image.open(paths[1]))).tolist()) == [0, 255]
        back = load_binary_prediction(tmp_path / "pred", it["name"], 5, it["category"])
        assert torch.equal(back.float(), it["masks"])
        metric.update_masks(load_binary_prediction(tmp_path / "pred", it["name"], 5, it["category"], size=32),
                            it["masks"])
    assert metric.compute()["miou"] == pytest.approx(1.0) and metric.compute()["fscore"] == pytest.approx(1.0)
    ms3 = MS3Dataset(root, "test", image_size=24, load_audio=False)[0]
    paths = save_binary_prediction(ms3["masks"], tmp_path / "ms3", ms3["name"])
    assert paths[4] == tmp_path / "ms3" / ms3["name"] / f"{ms3['name']}_4.png"
    with pytest.raises(AvsegError, match="predicted mask"):
        load_binary_prediction(tmp_path / "ms3", "nope", 5)


def test_semantic_prediction_round_trip(root: Path, tmp_path: Path) -> None:
    ds = AVSSDataset(root, "test", image_size=32, load_audio=False)
    metric = SemanticMetrics(71)
    for i in range(len(ds)):
        it = ds[i]
        paths = save_semantic_prediction(it["masks"], tmp_path / "pred", it["name"])
        assert len(paths) == 10 and paths[9].name == f"{it['name']}_9.png"
        rgb = np.asarray(Image.open(paths[0]).convert("RGB"))
        assert (rgb == voc_palette(71)[it["masks"][0].numpy()]).all()  # official colours
        back = load_semantic_prediction(tmp_path / "pred", it["name"])
        assert torch.equal(back, it["masks"])
        metric.update_ids(back, it["masks"])
    assert metric.compute()["miou_seen"] == pytest.approx(1.0)
    resized = save_semantic_prediction(it["masks"], tmp_path / "big", it["name"], size=(36, 24))
    assert Image.open(resized[0]).size == (36, 24)
    assert load_semantic_prediction(tmp_path / "big", it["name"], size=32).shape == (10, 32, 32)


def test_avss_default_audio_uses_media(root: Path) -> None:
    media = pytest.importorskip("avsegcli.media", reason="avsegcli.media (VGGish framing) not available")
    ds = AVSSDataset(root, "val", subsets=["v1m", "v2"], image_size=16)
    for i in (0, 2):  # v1m (5 s -> 5 examples, padded to 10) and v2 (10 s -> 10 examples)
        info = ds.clip_info(i)
        want = torch.as_tensor(media.vggish_examples(info.audio_path)).float()
        got = ds[i]["log_mel"]
        assert got.shape == (10, 1, 96, 64)
        n = min(10, want.shape[0])
        assert torch.equal(got[:n], want[:n]) and got[n:].eq(0).all()
        assert n == (5 if info.subset == "v1m" else 10)
