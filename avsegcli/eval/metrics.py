"""AVSBench scores: mIoU and F-score for binary (S4/MS3) and semantic (AVSS) masks, accumulated batch by batch.

Pure torch, no I/O. Two protocols:

``"official"`` reproduces the released AVSegFormer test scripts number for number (float32 arithmetic, same
epsilons, same order of accumulation):

* Binary (``scripts/s4|ms3/utility.py``): per batch, ``miou`` is the mean over the batch's frames of
  IoU(sigmoid(logit) > 0.5, gt) with ``inter / (union + 1e-7)``; a frame whose gt is empty scores the IoU of the
  complements (true negatives / all pixels). ``fscore`` is, over the frames of the batch whose gt is non-empty,
  the mean F-curve (precision and recall of ``sigmoid >= t`` for the 255 float32 thresholds
  ``linspace(0, 1 - 1e-10, 255)`` -- the last one is exactly 1.0 in float32 --, ``P = tp / (npred + 1e-20)``,
  ``R = tp / (ngt + 1e-20)``, ``F = 1.3 P R / (0.3 P + R)``, NaN -> 0), then its maximum over thresholds.
  A batch whose frames all have empty gt scores an F-score of 0 (and still counts as a batch). The reported
  numbers are plain means of the per-batch values, so they depend on the batch size (2 clips = 10 frames in the
  official scripts) and a short last batch weighs as much as a full one.
* Semantic (``utils/compute_color_metrics.py`` + ``scripts/avss/test.py``): per frame, prediction =
  argmax(softmax(logits)); per class c in 0..C-1: intersection, prediction area, label area; IoU_c =
  inter / (2.2e-16 + union) added to a running sum, and class c counted for the frame when its union is
  non-zero; F_c (beta^2 = 0.3, NaN -> 0) summed likewise. Final per-class value = sum / count (NaN -> 0) and the
  reported mIoU / F-score are means over *all* C classes, so a class never seen counts as 0. This protocol
  already is batch-size independent; every frame counts, padded ones included (``valid`` is ignored, as the
  script scores the zero-padded frames of 5-frame clips, which predict background on all-zero logits).

``"per-frame"`` is batch-size independent:

* Binary: ``miou`` = mean over all frames of the same per-frame IoU; ``fscore`` = maximum over thresholds of the
  mean F-curve over all frames with non-empty gt (the official per-frame quantities, pooled over the dataset
  instead of per batch). Frames with ``valid`` False are skipped (in both protocols).
* Semantic: dataset-level accumulation over valid frames: per class, IoU_c = sum(inter) / sum(union) and F_c from
  P_c = sum(inter)/sum(pred), R_c = sum(inter)/sum(label); ``miou`` / ``fscore`` = mean over the classes present
  (non-zero accumulated union). Absent classes report 0 in the per-class arrays.

Per-key tables (``update(..., keys=[...])`` -> ``compute()["per_key"]``): binary keys are always scored with the
per-frame protocol (a per-batch mean has no meaning inside one category); semantic keys use the metric's protocol.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

PROTOCOLS = ("official", "per-frame")
_BETA2 = 0.3


def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def f_thresholds(num: int = 255) -> torch.Tensor:
    """The official float32 thresholds ``linspace(0, 1 - 1e-10, num)`` (last one rounds to 1.0)."""
    return torch.linspace(0, 1 - 1e-10, num, dtype=torch.float32)


def binary_frame_iou(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Official per-frame IoU. ``probs`` ``[N,H,W]`` in [0,1], ``target`` ``[N,H,W]`` float 0/1 -> ``[N]`` float32."""
    num_pixels = probs.shape[-1] * probs.shape[-2]
    no_obj = target.sum(2).sum(1) == 0
    pred = (probs > 0.5).int()
    inter = (pred * target).sum(2).sum(1)
    union = torch.max(pred.to(target.dtype), target).sum(2).sum(1)
    inter_no_obj = ((1 - target) * (1 - pred)).sum(2).sum(1)
    inter[no_obj] = inter_no_obj[no_obj]
    union[no_obj] = num_pixels
    return inter / (union + eps)


def binary_f_curves(probs: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Official F-curves ``[N,K]`` float32 (NaN -> 0) of ``probs >= t`` against ``target``, both ``[N,H,W]``.

    Counts per threshold come from one bucketize + bincount instead of K comparisons; the comparison
    ``probs >= t`` is the same float32 one, so the counts are identical.
    """
    n, k = probs.shape[0], thresholds.numel()
    if n == 0:
        return torch.zeros(0, k)
    p = probs.reshape(n, -1)
    y = target.reshape(n, -1).to(torch.float64)
    idx = torch.bucketize(p, thresholds, right=True)  # number of thresholds <= p, in 0..K
    flat = (idx + torch.arange(n).unsqueeze(1) * (k + 1)).reshape(-1)
    hist = torch.bincount(flat, minlength=n * (k + 1)).reshape(n, k + 1)
    hist_tp = torch.bincount(flat, weights=y.reshape(-1), minlength=n * (k + 1)).reshape(n, k + 1)
    # pixels counted at threshold j are those with idx > j: reversed cumulative sums of bins 1..K
    npred = hist[:, 1:].flip(1).cumsum(1).flip(1).to(torch.float32)
    tp = hist_tp[:, 1:].flip(1).cumsum(1).flip(1).to(torch.float32)
    ngt = y.sum(1, keepdim=True).to(torch.float32)
    prec = tp / (npred + 1e-20)
    recall = tp / (ngt + 1e-20)
    f = (1 + _BETA2) * prec * recall / (_BETA2 * prec + recall)
    f[f != f] = 0
    return f


class _KeyStats:
    """Per-frame sums for one key: IoU sum/count and F-curve sum/count (float64)."""

    def __init__(self, k: int) -> None:
        self.iou_sum, self.frames = 0.0, 0
        self.f_sum, self.f_frames = torch.zeros(k, dtype=torch.float64), 0

    def add(self, iou: torch.Tensor, curves: torch.Tensor) -> None:
        self.iou_sum += float(iou.double().sum())
        self.frames += iou.numel()
        if curves.numel():
            self.f_sum += curves.double().sum(0)
            self.f_frames += curves.shape[0]

    def result(self) -> dict[str, Any]:
        miou = self.iou_sum / self.frames if self.frames else 0.0
        fscore = float((self.f_sum / self.f_frames).max()) if self.f_frames else 0.0
        return {"miou": miou, "fscore": fscore, "frames": self.frames, "fscore_frames": self.f_frames}


class BinaryMetrics:
    """S4/MS3 mIoU and F-score. Feed ``update(logits [N,H,W], target [N,H,W] 0/1)`` batch by batch.

    ``compute()`` returns ``miou``, ``fscore`` (floats), ``protocol``, ``frames`` (frames scored),
    ``fscore_frames`` (frames with non-empty gt), ``batches``, ``batch_miou`` / ``batch_fscore`` (official
    per-batch values, lists), ``per_frame_iou`` (list, in update order) and ``per_key`` ({key: {miou, fscore,
    frames, fscore_frames}}, per-frame protocol) when keys were given.
    """

    def __init__(self, protocol: str = "official", num_thresholds: int = 255) -> None:
        self.protocol = _check_protocol(protocol)
        self.thresholds = f_thresholds(num_thresholds)
        self.reset()

    def reset(self) -> None:
        k = self.thresholds.numel()
        self._all = _KeyStats(k)
        self._keys: dict[str, _KeyStats] = {}
        self._batch_miou: list[torch.Tensor] = []
        self._batch_f: list[float] = []
        self._frame_iou: list[float] = []

    def update(self, logits: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None,
               keys: Sequence[str] | None = None) -> dict[str, float]:
        """Add a batch of logits ``[N,H,W]`` (or ``[N,1,H,W]``); returns this batch's official ``miou``/``fscore``."""
        return self.update_probs(torch.sigmoid(logits.detach().float()), target, valid=valid, keys=keys)

    def update_masks(self, masks: torch.Tensor, target: torch.Tensor, **kw: Any) -> dict[str, float]:
        """Add hard predictions ``[N,H,W]`` (non-zero = object), e.g. saved masks, as probabilities 0/1."""
        return self.update_probs((masks.detach() != 0).float(), target, **kw)

    def update_probs(self, probs: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None,
                     keys: Sequence[str] | None = None) -> dict[str, float]:
        """Add probabilities ``[N,H,W]`` in [0,1]; ``valid`` ``[N]`` bool drops frames without ground truth."""
        probs, target = _squeeze_channel(probs).float().cpu(), _squeeze_channel(target).float().cpu()
        if probs.shape != target.shape or probs.dim() != 3:
            raise ValueError(f"expected [N,H,W] prediction and target, got {tuple(probs.shape)} and "
                             f"{tuple(target.shape)}")
        if keys is not None and len(keys) != probs.shape[0]:
            raise ValueError(f"{len(keys)} keys for {probs.shape[0]} frames")
        if valid is not None:
            sel = valid.reshape(-1).bool().cpu()
            probs, target = probs[sel], target[sel]
            if keys is not None:
                keys = [k for k, s in zip(keys, sel.tolist()) if s]
        n = probs.shape[0]
        if n == 0:
            return {"miou": float("nan"), "fscore": float("nan")}
        iou = binary_frame_iou(probs, target)
        has_obj = target.reshape(n, -1).mean(1) != 0  # official: torch.mean(gt) == 0 -> skipped
        curves = binary_f_curves(probs[has_obj], target[has_obj], self.thresholds)
        # official batch values, accumulated exactly as the script does (float32, frame order)
        batch_miou = torch.sum(iou) / n
        if curves.shape[0]:
            avg_f: Any = 0.0
            for row in curves:
                avg_f = avg_f + row
            batch_f = (avg_f / curves.shape[0]).max().item()
        else:
            batch_f = 0.0
        self._batch_miou.append(batch_miou)
        self._batch_f.append(batch_f)
        self._all.add(iou, curves)
        self._frame_iou.extend(iou.tolist())
        if keys is not None:
            for key in dict.fromkeys(keys):
                m = torch.tensor([k == key for k in keys])
                stats = self._keys.setdefault(str(key), _KeyStats(self.thresholds.numel()))
                stats.add(iou[m], curves[m[has_obj]])
        return {"miou": batch_miou.item(), "fscore": batch_f}

    def compute(self) -> dict[str, Any]:
        """Scores so far (see class docstring for keys); NaN scores when nothing was added."""
        pooled = self._all.result()
        if not self._batch_miou:
            miou = fscore = float("nan")
        elif self.protocol == "official":
            total: Any = 0.0
            for m in self._batch_miou:  # pyutils.AverageMeter: float32 tensor sum, then / count
                total = total + m
            miou = (total / len(self._batch_miou)).item()
            fscore = sum(self._batch_f) / len(self._batch_f)
        else:
            miou, fscore = pooled["miou"], pooled["fscore"]
        out: dict[str, Any] = {
            "protocol": self.protocol, "miou": float(miou), "fscore": float(fscore),
            "frames": pooled["frames"], "fscore_frames": pooled["fscore_frames"], "batches": len(self._batch_f),
            "batch_miou": [m.item() for m in self._batch_miou], "batch_fscore": list(self._batch_f),
            "per_frame_iou": list(self._frame_iou),
            # the mean F-curve over every frame with an object (per-frame protocol; its max is that F-score)
            "f_curve": (self._all.f_sum / self._all.f_frames).tolist() if self._all.f_frames else [],
            "thresholds": self.thresholds.tolist(),
        }
        if self._keys:
            out["per_key"] = {k: s.result() for k, s in self._keys.items()}
        return out


def _squeeze_channel(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0] if x.dim() == 4 and x.shape[1] == 1 else x


def semantic_frame_areas(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, ...]:
    """Per-frame class areas ``(inter, pred_area, label_area)``, each ``[N,C]`` float32.

    ``pred`` and ``target`` are ``[N,H,W]`` class ids. Same counts as the official ``torch.histc`` over 1..C after
    shifting by one (ids outside 0..C-1 are not counted; a negative target id also removes the pixel's prediction).
    """
    n, c = pred.shape[0], num_classes
    p = pred.reshape(n, -1).long() + 1
    t = target.reshape(n, -1).long() + 1
    p = p * (t > 0)
    inter = p * (p == t)

    def hist(v: torch.Tensor) -> torch.Tensor:
        ok = (v >= 1) & (v <= c)
        flat = (v - 1 + torch.arange(n).unsqueeze(1) * c)[ok]
        return torch.bincount(flat, minlength=n * c).reshape(n, c).float()

    return hist(inter), hist(p), hist(t)


class SemanticMetrics:
    """AVSS mIoU and F-score over ``num_classes`` classes (class 0 = background).

    ``update(logits [N,C,H,W], target [N,H,W] int ids)`` batch by batch; ``compute()`` returns ``miou``,
    ``fscore`` (floats), ``per_class_iou``, ``per_class_fscore`` (numpy float64 ``[C]``), ``class_count``
    (numpy int64 ``[C]``: frames in which the class's union is non-zero), ``classes_seen``, ``frames``,
    ``protocol``, ``miou_seen`` / ``fscore_seen`` (means over seen classes, what the official script logs per
    batch), ``per_frame_miou`` (list: each scored frame's mean IoU over the classes in its label or
    prediction) and ``per_key`` ({key: same dict without per_key}) when keys were given.
    """

    def __init__(self, num_classes: int = 71, protocol: str = "official") -> None:
        self.num_classes = int(num_classes)
        self.protocol = _check_protocol(protocol)
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self._iou_sum = torch.zeros(c)  # float32, as the script
        self._f_sum = torch.zeros(c)
        self._count = torch.zeros(c)
        self._areas = torch.zeros(3, c, dtype=torch.float64)  # inter, pred, label over the dataset
        self._frames = 0
        self._frame_miou: list[float] = []
        self._keys: dict[str, SemanticMetrics] = {}

    def update(self, logits: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None,
               keys: Sequence[str] | None = None) -> None:
        """Add logits ``[N,C,H,W]``; prediction = argmax(softmax(logits)) like the official script."""
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits [N,{self.num_classes},H,W], got {tuple(logits.shape)}")
        pred = torch.argmax(torch.softmax(logits.detach().float(), dim=1), dim=1)
        self.update_ids(pred, target, valid=valid, keys=keys)

    def update_ids(self, pred: torch.Tensor, target: torch.Tensor, *, valid: torch.Tensor | None = None,
                   keys: Sequence[str] | None = None) -> None:
        """Add predicted class ids ``[N,H,W]`` (e.g. saved masks). ``valid`` ``[N]`` only affects per-frame."""
        pred, target = pred.detach().cpu(), target.detach().cpu()
        valid = None if valid is None else valid.detach().reshape(-1).bool().cpu()
        if pred.shape != target.shape or pred.dim() != 3:
            raise ValueError(f"expected [N,H,W] prediction and target, got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        n = pred.shape[0]
        if keys is not None:
            if len(keys) != n:
                raise ValueError(f"{len(keys)} keys for {n} frames")
            for key in dict.fromkeys(keys):
                m = torch.tensor([k == key for k in keys])
                child = self._keys.setdefault(str(key), SemanticMetrics(self.num_classes, self.protocol))
                child.update_ids(pred[m], target[m], valid=None if valid is None else valid[m])
        if self.protocol == "per-frame" and valid is not None:
            pred, target = pred[valid], target[valid]
            n = pred.shape[0]
        if n == 0:
            return
        inter, area_pred, area_lab = semantic_frame_areas(pred, target, self.num_classes)
        union = area_pred + area_lab - inter
        iou = 1.0 * inter / (2.220446049250313e-16 + union)
        precision = inter / area_pred
        recall = inter / area_lab
        f = (1 + _BETA2) * precision * recall / (_BETA2 * precision + recall)
        f[torch.isnan(f)] = 0.0
        batch_iou, batch_f, batch_count = torch.zeros_like(self._iou_sum), torch.zeros_like(self._f_sum), \
            torch.zeros_like(self._count)
        for i in range(n):  # frame by frame in float32, as the script accumulates
            batch_iou += iou[i]
            batch_f += f[i]
            batch_count[union[i] != 0] += 1
            present = union[i] != 0
            self._frame_miou.append(float(iou[i][present].double().mean()) if bool(present.any()) else float("nan"))
        self._iou_sum += batch_iou
        self._f_sum += batch_f
        self._count += batch_count
        self._areas += torch.stack([inter.double().sum(0), area_pred.double().sum(0), area_lab.double().sum(0)])
        self._frames += n

    def compute(self) -> dict[str, Any]:
        """Scores so far (see class docstring for keys)."""
        if self.protocol == "official":
            iou_pc = self._iou_sum / self._count
            iou_pc[torch.isnan(iou_pc)] = 0
            f_pc = self._f_sum / self._count
            f_pc[torch.isnan(f_pc)] = 0
            seen = self._count != 0
            miou, fscore = torch.mean(iou_pc).item(), torch.mean(f_pc).item()
        else:
            inter, a_pred, a_lab = self._areas
            union = a_pred + a_lab - inter
            seen = union > 0
            iou_pc = torch.where(seen, inter / union.clamp_min(1), torch.zeros_like(inter))
            p, r = inter / a_pred, inter / a_lab
            f_pc = (1 + _BETA2) * p * r / (_BETA2 * p + r)
            f_pc[torch.isnan(f_pc)] = 0
            nseen = int(seen.sum())
            miou = float(iou_pc[seen].mean()) if nseen else float("nan")
            fscore = float(f_pc[seen].mean()) if nseen else float("nan")
        nseen = int(seen.sum())
        out: dict[str, Any] = {
            "protocol": self.protocol, "miou": float(miou), "fscore": float(fscore),
            "per_class_iou": iou_pc.double().numpy(), "per_class_fscore": f_pc.double().numpy(),
            "class_count": self._count.numpy().astype(np.int64), "classes_seen": nseen, "frames": self._frames,
            "miou_seen": float(iou_pc[seen].double().mean()) if nseen else float("nan"),
            "fscore_seen": float(f_pc[seen].double().mean()) if nseen else float("nan"),
            "per_frame_miou": list(self._frame_miou),
        }
        if self._keys:
            out["per_key"] = {k: m.compute() for k, m in self._keys.items()}
        return out

