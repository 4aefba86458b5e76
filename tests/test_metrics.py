"""Metrics: the official AVSegFormer numbers (shared/reference/metrics_reference.pt), protocol behaviour, tiny cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avsegcli.eval.metrics import (
    BinaryMetrics, SemanticMetrics, binary_f_curves, f_thresholds, semantic_frame_areas,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
REF = SHARED / "reference" / "metrics_reference.pt"


@pytest.fixture(scope="module")
def ref() -> dict:
    if not REF.is_file():
        pytest.skip(f"reference data not found: {REF} (shared/ is absent beside the checkout)")
    return torch.load(REF, weights_only=False)


# ------------------------------------------------------------------------------------------- official reference


def test_binary_official_matches_reference(ref: dict) -> None:
    b = ref["binary"]
    m = BinaryMetrics("official")
    for batch in b["batches"]:
        got = m.update(batch["logits"], batch["gt"])
        assert got["miou"] == pytest.approx(batch["miou"], abs=1e-6)
        assert got["fscore"] == pytest.approx(batch["fscore"], abs=1e-6)
    out = m.compute()
    assert out["miou"] == pytest.approx(b["miou"], abs=1e-6)
    assert out["fscore"] == pytest.approx(b["fscore"], abs=1e-6)
    assert out["batches"] == 3 and out["frames"] == 30 and out["fscore_frames"] == 24
    assert out["batch_miou"] == pytest.approx([x["miou"] for x in b["batches"]], abs=1e-6)


def test_semantic_official_matches_reference(ref: dict) -> None:
    s = ref["semantic"]
    m = SemanticMetrics(71, "official")
    for batch in s["batches"]:
        m.update(batch["logits"], batch["target"])
    out = m.compute()
    assert out["miou"] == pytest.approx(s["miou"], abs=1e-6)
    assert out["fscore"] == pytest.approx(s["fscore"], abs=1e-6)
    np.testing.assert_allclose(out["per_class_iou"], s["per_class_iou"].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["per_class_fscore"], s["per_class_fscore"].numpy(), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(out["class_count"], s["class_count"].numpy().astype(np.int64))
    assert out["frames"] == 20


# ------------------------------------------------------------------------------ literal versions of the scripts


def _literal_binary_batch(logits: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    """The official per-batch computation written out naively (255 comparisons per frame)."""
    probs = torch.sigmoid(logits)
    n, num_pixels = probs.shape[0], probs.shape[1] * probs.shape[2]
    pred = (probs > 0.5).int()
    ious = []
    for i in range(n):
        if gt[i].sum() == 0:
            inter, union = ((1 - gt[i]) * (1 - pred[i])).sum(), torch.tensor(float(num_pixels))
        else:
            inter, union = (pred[i] * gt[i]).sum(), torch.max(pred[i].float(), gt[i]).sum()
        ious.append(inter / (union + 1e-7))
    th = torch.linspace(0, 1 - 1e-10, 255)
    curves = []
    for i in range(n):
        if torch.mean(gt[i]) == 0.0:
            continue
        prec, rec = torch.zeros(255), torch.zeros(255)
        for j in range(255):
            y = (probs[i] >= th[j]).float()
            tp = (y * gt[i]).sum()
            prec[j], rec[j] = tp / (y.sum() + 1e-20), tp / (gt[i].sum() + 1e-20)
        f = 1.3 * prec * rec / (0.3 * prec + rec)
        f[f != f] = 0
        curves.append(f)
    fscore = torch.stack(curves).mean(0).max().item() if curves else 0.0
    return torch.stack(ious).mean().item(), fscore


def _random_binary(n: int, seed: int, hw: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, hw, hw, generator=g) * 3
    gt = (torch.rand(n, hw, hw, generator=g) > 0.6).float()
    gt[::4] = 0  # some empty-gt frames
    return logits, gt


def test_binary_matches_literal_script() -> None:
    logits, gt = _random_binary(10, 1)
    # probabilities exactly on thresholds exercise the >= comparison
    th = f_thresholds()
    logits[1, :3, :3] = torch.logit(th[100].double()).float()
    miou, fscore = _literal_binary_batch(logits, gt)
    got = BinaryMetrics().update(logits, gt)
    assert got["miou"] == pytest.approx(miou, abs=1e-6)
    assert got["fscore"] == pytest.approx(fscore, abs=1e-6)


def test_f_curves_count_like_comparisons() -> None:
    th = f_thresholds()
    probs = th[torch.randint(0, 255, (3, 10, 10), generator=torch.Generator().manual_seed(0))]
    probs[0, 0, :4] = torch.tensor([0.0, 1.0, 0.99999, 0.5])
    gt = (torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    curves = binary_f_curves(probs, gt, th)
    for i in range(3):
        for j in (0, 1, 57, 127, 253, 254):
            y = (probs[i] >= th[j]).float()
            tp = (y * gt[i]).sum()
            p, r = tp / (y.sum() + 1e-20), tp / (gt[i].sum() + 1e-20)
            f = torch.nan_to_num(1.3 * p * r / (0.3 * p + r), nan=0.0)
            assert curves[i, j].item() == pytest.approx(f.item(), abs=1e-7)


def test_semantic_areas_match_histc() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 71, (4, 16, 16), generator=g)
    target = torch.randint(0, 71, (4, 16, 16), generator=g)
    inter, area_pred, area_lab = semantic_frame_areas(pred, target, 71)
    p, t = pred.float() + 1, target.float() + 1
    i_map = p * (p == t).float()
    for i in range(4):
        assert torch.equal(inter[i], torch.histc(i_map[i], bins=71, min=1, max=71))
        assert torch.equal(area_pred[i], torch.histc(p[i], bins=71, min=1, max=71))
        assert torch.equal(area_lab[i], torch.histc(t[i], bins=71, min=1, max=71))


# ------------------------------------------------------------------------------------------------ protocols


def _feed(metric, logits: torch.Tensor, gt: torch.Tensor, bs: int, **kw) -> dict:
    metric.reset()
    for s in range(0, logits.shape[0], bs):
        metric.update(logits[s:s + bs], gt[s:s + bs], **kw)
    return metric.compute()


def test_binary_per_frame_is_batch_size_independent() -> None:
    logits, gt = _random_binary(30, 2)
    per_frame = [_feed(BinaryMetrics("per-frame"), logits, gt, bs) for bs in (1, 3, 10)]
    official = [_feed(BinaryMetrics("official"), logits, gt, bs) for bs in (1, 3, 10)]
    for r in per_frame[1:]:
        assert r["miou"] == pytest.approx(per_frame[0]["miou"], abs=1e-9)
        assert r["fscore"] == pytest.approx(per_frame[0]["fscore"], abs=1e-9)
    assert abs(official[0]["fscore"] - official[2]["fscore"]) > 1e-4  # bs 1: empty-gt frames score F = 0
    # batch size 10 and a single pooled batch: per-frame miou == official miou
    assert per_frame[0]["miou"] == pytest.approx(official[2]["miou"], abs=1e-6)


def test_semantic_per_frame_is_batch_size_independent() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 5, 8, 8, generator=g)
    target = torch.randint(0, 5, (12, 8, 8), generator=g)
    for proto in ("per-frame", "official"):  # the official AVSS metric sums per frame: independent too
        rs = [_feed(SemanticMetrics(5, proto), logits, target, bs) for bs in (1, 3, 10)]
        for r in rs[1:]:
            assert r["miou"] == pytest.approx(rs[0]["miou"], abs=1e-6)
            assert r["fscore"] == pytest.approx(rs[0]["fscore"], abs=1e-6)


# ------------------------------------------------------------------------------------------------ tiny cases


def test_binary_hand_cases() -> None:
    gt = torch.zeros(2, 4, 4)
    gt[0, :2] = 1
    perfect = BinaryMetrics()
    perfect.update_masks(gt.clone(), gt)
    assert perfect.compute()["miou"] == 1.0 and perfect.compute()["fscore"] == pytest.approx(1.0)
    # empty gt and empty prediction: IoU of the complements = 1
    m = BinaryMetrics()
    r = m.update(torch.full((1, 4, 4), -10.0), torch.zeros(1, 4, 4))
    assert r["miou"] == pytest.approx(1.0) and r["fscore"] == 0.0  # all-empty batch: F = 0
    # empty gt, full prediction: 0; half right on an object frame: 8/16
    r = BinaryMetrics().update(torch.full((1, 4, 4), 10.0), torch.zeros(1, 4, 4))
    assert r["miou"] == pytest.approx(0.0, abs=1e-6)
    r = BinaryMetrics().update(torch.full((1, 4, 4), 10.0), gt[:1])
    assert r["miou"] == pytest.approx(0.5, abs=1e-6)
    assert r["fscore"] == pytest.approx(1.3 * 0.5 / (0.3 * 0.5 + 1), abs=1e-6)  # P = 0.5, R = 1


def test_binary_valid_and_keys() -> None:
    logits, gt = _random_binary(6, 4)
    m = BinaryMetrics("per-frame")
    keys = ["dog", "cat", "dog", "cat", "dog", "cat"]
    m.update(logits, gt, keys=keys, valid=torch.tensor([1, 1, 1, 1, 0, 0]).bool())
    out = m.compute()
    assert out["frames"] == 4 and set(out["per_key"]) == {"dog", "cat"}
    dog = BinaryMetrics("per-frame")
    dog.update(logits[[0, 2]], gt[[0, 2]])
    assert out["per_key"]["dog"]["miou"] == pytest.approx(dog.compute()["miou"], abs=1e-9)
    assert out["per_key"]["dog"]["fscore"] == pytest.approx(dog.compute()["fscore"], abs=1e-9)
    assert len(out["per_frame_iou"]) == 4


def test_semantic_hand_cases() -> None:
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    target[1, 2:] = 2
    onehot = torch.nn.functional.one_hot(target, 71).permute(0, 3, 1, 2).float() * 5
    off = SemanticMetrics(71, "official")
    off.update(onehot, target)
    r = off.compute()
    assert r["miou"] == pytest.approx(3 / 71) and r["fscore"] == pytest.approx(3 / 71)  # unseen classes count 0
    assert r["classes_seen"] == 3 and r["miou_seen"] == pytest.approx(1.0)
    assert r["class_count"][:3].tolist() == [2, 1, 1]
    pf = SemanticMetrics(71, "per-frame")
    pf.update(onehot, target)
    assert pf.compute()["miou"] == pytest.approx(1.0) and pf.compute()["fscore"] == pytest.approx(1.0)
    # padded frames: all-zero logits predict background; official counts them, per-frame skips invalid ones
    off.reset()
    pf.reset()
    zeros, bg = torch.zeros(1, 71, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    for m in (off, pf):
        m.update(zeros, bg, valid=torch.tensor([False]))
    assert off.compute()["class_count"][0] == 1 and off.compute()["per_class_iou"][0] == pytest.approx(1.0)
    assert pf.compute()["frames"] == 0
    # argmax of predicted ids path
    ids = SemanticMetrics(71)
    ids.update_ids(target, target, keys=["v1s", "v2"])
    assert set(ids.compute()["per_key"]) == {"v1s", "v2"}
    assert ids.compute()["miou"] == pytest.approx(3 / 71)


def test_protocol_checked() -> None:
    with pytest.raises(ValueError):
        BinaryMetrics("nope")
    with pytest.raises(ValueError):
        SemanticMetrics(71).update(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_segmentation_loss_takes_a_task_or_its_name():
    """losses.SegmentationLoss: a Task (avsegcli.tasks) or its name, the same terms; the AVSS mix term is the dice
    against any object."""
    from avsegcli.losses import SegmentationLoss, check_loss_type
    from avsegcli.tasks import task_of

    g = torch.Generator().manual_seed(0)
    supervised = torch.tensor([True, False, True, True])
    feature = torch.randn(4, 6, 4, 4, generator=g)
    for name, k in (("s4", 1), ("avss", 71)):
        outputs = {"pred_masks": torch.randn(4, k, 8, 8, generator=g), "mask_feature": feature}
        masks = (torch.rand(4, 8, 8, generator=g) > 0.5).float() if k == 1 else torch.randint(0, k, (4, 8, 8), generator=g)
        by_name = SegmentationLoss(name, aux="mix")(outputs, masks, supervised)
        by_task = SegmentationLoss(task_of(name), aux="mix")(outputs, masks, supervised)
        assert by_name.keys() == by_task.keys() == {"loss_main", "loss_mix", "total"}
        assert all(torch.equal(by_name[t], by_task[t]) for t in by_name)
        assert SegmentationLoss(name).task is task_of(name)
    assert check_loss_type(task_of("avss"), None) == "ce" and check_loss_type("ms3", "bce") == "bce"
    with pytest.raises(ValueError, match="does not fit task avss; choose ce"):
        check_loss_type(task_of("avss"), "dice")
    with pytest.raises(ValueError, match="task must be one of s4, ms3, avss, got 'x'"):
        check_loss_type("x", None)
