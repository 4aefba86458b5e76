"""``avseg eval --pred`` on perfect and on all-background predictions, against the official formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avsegcli.data import make_dataset, save_binary_prediction, write_fake_avsbench
from avsegcli.eval.evaluate import evaluate

SIZE = 512  # non-square fake frames are scored at the S4/MS3 size


@pytest.fixture(scope="module", params=["s4", "ms3"])
def data(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"extremes_{request.param}")
    write_fake_avsbench(root, request.param, videos_per_split=3, seed=5)
    ds = make_dataset(request.param, root, "test", image_size=SIZE, load_audio=False)
    return request.param, root, ds


def _save(ds, pred_root: Path, fn) -> None:
    for i in range(len(ds)):
        item = ds[i]
        save_binary_prediction(fn(item["masks"]), pred_root, item["name"], item["category"] or None)


def test_perfect_predictions_score_one(data, tmp_path):
    task, root, ds = data
    _save(ds, tmp_path / "pred", lambda m: m)
    res = evaluate(task, root, "test", pred_dir=tmp_path / "pred")
    for proto in ("official", "per-frame"):
        assert res["overall"][proto]["miou"] == pytest.approx(1.0, abs=1e-6)
        assert res["overall"][proto]["fscore"] == pytest.approx(1.0, abs=1e-6)


def test_all_background_scores_the_official_formula(data, tmp_path):
    task, root, ds = data
    assert any(bool((ds[i]["masks"].flatten(1).sum(1) == 0).any()) for i in range(len(ds))), "want an empty-gt frame"
    _save(ds, tmp_path / "pred", torch.zeros_like)
    res = evaluate(task, root, "test", pred_dir=tmp_path / "pred", batch_clips=2)
    # official: per test batch of 2 clips, IoU is 1 on empty-gt frames (complement IoU) and 0 elsewhere; the
    # F-curve is non-zero only at threshold 0 (every pixel predicted): F = 1.3 P / (0.3 P + 1), P = gt fraction
    mious, fscores = [], []
    for start in range(0, len(ds), 2):
        gts = torch.cat([ds[i]["masks"] for i in range(start, min(start + 2, len(ds)))]).flatten(1)
        empty = gts.sum(1) == 0
        mious.append(empty.double().mean().item())
        p = gts[~empty].double().mean(1)
        fscores.append((1.3 * p / (0.3 * p + 1)).mean().item() if len(p) else 0.0)
    official = res["overall"]["official"]
    assert official["miou"] == pytest.approx(float(np.mean(mious)), abs=1e-6)
    assert official["fscore"] == pytest.approx(float(np.mean(fscores)), abs=1e-6)
    assert 0 < official["miou"] < 1 and 0 < official["fscore"] < 1
