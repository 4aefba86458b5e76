"""``avseg eval --negative-audio``: the same clips with their audio replaced, scored against empty ground truth.

    from avsegcli.eval.evaluate import evaluate
    res = evaluate("s4", root, "test", predictor=p, negative_audio=("silence", "noise", "offscreen"), negative_seed=0)
    res["negative_audio"]["silence"]["fpr"], res["g_miou"]

Per condition (see :mod:`avsegcli.data.negatives`): ``fpr`` = mean over the clip's real frames of the fraction of
pixels predicted as object (S4/MS3: ``sigmoid(logit) > 0.5``; AVSS: any class but background), the false-positive
rate of AVSBench-Robust (every frame's ground truth is empty); ``frames_with_any`` = the share of those frames with
at least one predicted pixel. Combined scores (our definition): ``g_miou = sqrt(miou * (1 - mean FPR))`` and
``g_fscore = sqrt(fscore * (1 - mean FPR))``, with the positive official-protocol scores (per-frame when only that
protocol is asked) and the mean over the conditions scored.

Saved predictions (``--pred DIR``): the positive masks in ``DIR`` as usual, each condition's in ``DIR/<condition>/``
in either layout ``avseg eval --pred`` reads (``--save-pred DIR`` writes exactly that).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch

from avsegcli.data.negatives import clip_categories, negative_log_mel, offscreen_pairs, require_conditions
from avsegcli.errors import AvsegError
from avsegcli.eval.forward import predict_batch, save_masks
from avsegcli.eval.saved import PredictionSource
from avsegcli.media.signals import NOISE_RMS
from avsegcli.tasks import Task, task_of


class _Rate:
    """Running per-frame predicted-area statistics."""

    def __init__(self) -> None:
        self.area: list[float] = []
        self.any: list[bool] = []

    def add(self, positive: torch.Tensor) -> None:
        """``positive`` ``[F,S,S]`` bool (real frames only)."""
        for m in positive:
            self.area.append(float(m.float().mean()))
            self.any.append(bool(m.any()))

    def result(self) -> dict[str, Any]:
        n = len(self.area)
        return {"fpr": sum(self.area) / n if n else float("nan"),
                "frames_with_any": sum(self.any) / n if n else float("nan"), "frames": n}


class NegativeAudioScorer:
    """Scores the conditions batch by batch next to the positive scorer of :func:`avsegcli.eval.evaluate.evaluate`."""

    def __init__(self, task: str | Task, ds: Any, indices: Sequence[int], conditions: Sequence[str], seed: int = 0, *,
                 pred_dir: str | Path | None = None, save_dir: str | Path | None = None) -> None:
        self.task = task_of(task)
        self.semantic, self.ds, self.seed = self.task.semantic, ds, int(seed)
        self.conditions = require_conditions(conditions)
        self.rates = {c: _Rate() for c in self.conditions}
        self.positive = _Rate()
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.warnings: list[str] = []
        self.pairs: dict[str, dict[str, str] | None] = {}
        self.category_source = None
        self._index = {ds.clip_info(i).name: i for i in range(len(ds))}
        if "offscreen" in self.conditions:
            shown, heard, self.category_source = clip_categories(ds)
            names = [ds.clip_info(i).name for i in indices]
            self.pairs = offscreen_pairs(names, ds.names, shown, heard, self.seed)
            if self.category_source == "none":
                self.warnings.append("MS3 clips have no class labels: offscreen audio comes from any other clip "
                                     "(a shared category cannot be ruled out)")
            lost = [n for n, p in self.pairs.items() if p is None]
            if lost:
                self.warnings.append(f"offscreen: no clip of the split sounds only categories absent from "
                                     f"{len(lost)} clip(s) ({', '.join(lost[:3])}); they are left out of that condition")
        self.sources: dict[str, Any] = {}
        if pred_dir is not None:
            infos = [ds.clip_info(i) for i in indices]
            for c in self.conditions:
                sub = Path(pred_dir) / c
                if not sub.is_dir():
                    raise AvsegError(f"--negative-audio {c}: no saved masks for it (expected {sub}/, as "
                                     f"--save-pred writes it)", path=pred_dir)
                keep = [i for i in infos if c != "offscreen" or self.pairs.get(i.name)]
                self.sources[c] = PredictionSource(self.task, sub, keep)

    # ------------------------------------------------------------------------------------------------ audio
    def _frames(self, item: dict[str, Any]) -> int:
        return int(item["frame_valid"].shape[0])

    def log_mel(self, condition: str, item: dict[str, Any]) -> torch.Tensor | None:
        """The replacement ``log_mel`` ``[T,1,96,64]`` of one dataset item under ``condition`` (None: no offscreen
        donor)."""
        if condition != "offscreen":
            return negative_log_mel(self.ds, item, condition, self.seed)
        pair = self.pairs.get(item["name"])
        if pair is None:
            return None
        return negative_log_mel(self.ds, item, condition, self.seed, donor=self._index[pair["donor"]])

    # ------------------------------------------------------------------------------------------------ scoring
    @staticmethod
    def _positive(pred: torch.Tensor, semantic: bool) -> torch.Tensor:
        return pred != 0 if semantic else pred > 0.5

    def _split(self, items: list[dict[str, Any]], pred: torch.Tensor) -> list[torch.Tensor]:
        out, start = [], 0
        for it in items:
            t = self._frames(it)
            out.append(pred[start:start + t][it["frame_valid"]])
            start += t
        return out

    def add(self, items: list[dict[str, Any]], pred: torch.Tensor, predictor: Any = None) -> None:
        """``pred``: the positive predictions of ``items`` as the positive scorer got them. With a ``predictor`` the
        model runs again per condition; without, the saved masks of each condition are read."""
        for p in self._split(items, pred):
            self.positive.add(self._positive(p, self.semantic))
        for c in self.conditions:
            use = [it for it in items if c != "offscreen" or self.pairs.get(it["name"])]
            if not use:
                continue
            if predictor is not None:
                swapped = [{**it, "log_mel": self.log_mel(c, it)} for it in use]
                neg = predict_batch(predictor, swapped, self.semantic)
                if self.save_dir is not None:
                    save_masks(use, neg, self.save_dir / c, self.semantic)
            else:
                size = int(use[0]["masks"].shape[-1])
                neg = torch.cat([self.sources[c].load(self.ds.clip_info(it["index"]), size) for it in use])
                neg = neg.long() if self.semantic else neg.float()
            for p in self._split(use, neg):
                self.rates[c].add(self._positive(p, self.semantic))

    def result(self, overall: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """``negative_audio``, ``g_miou``, ``g_fscore`` and ``negative_audio_info`` for the eval JSON."""
        neg = {c: self.rates[c].result() for c in self.conditions}
        fprs = [v["fpr"] for v in neg.values() if v["frames"]]
        mean_fpr = sum(fprs) / len(fprs) if fprs else float("nan")
        proto = "official" if "official" in overall else next(iter(overall))
        pos = overall[proto]

        def g(x: float) -> float:
            return math.sqrt(max(x, 0.0) * (1.0 - mean_fpr)) if fprs and x == x else float("nan")

        rules: dict[str, int] = {}
        for p in self.pairs.values():
            key = p["rule"] if p else "none"
            rules[key] = rules.get(key, 0) + 1
        info = {
            "conditions": list(self.conditions), "seed": self.seed, "noise_rms": NOISE_RMS, "mean_fpr": mean_fpr,
            "positive_protocol": proto, "positive_area": self.positive.result()["fpr"],
            "positive_frames_with_any": self.positive.result()["frames_with_any"],
            "g_formula": "g_miou = sqrt(miou * (1 - mean FPR over conditions)); g_fscore likewise (avseg's definition)",
            "offscreen": None if "offscreen" not in self.conditions else {
                "category_source": self.category_source, "rules": rules,
                "pairing": {n: (p["donor"] if p else None) for n, p in self.pairs.items()},
                "pairing_rule": {n: (p["rule"] if p else None) for n, p in self.pairs.items()}},
        }
        return {"negative_audio": neg, "g_miou": g(pos["miou"]), "g_fscore": g(pos["fscore"]),
                "negative_audio_info": info}
