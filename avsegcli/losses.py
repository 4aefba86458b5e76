"""Training losses, DETR style: a criterion returns named, unweighted terms; one weight dict makes the total.

Terms (``T`` = frames per clip, ``N = B*T`` frames in the batch, ``K`` = classes, ``L`` = decoder layers):

``loss_main``
    the main criterion on ``pred_masks`` ``[N,K,H,W]``. S4/MS3 (``K = 1``): dice (the released configs'
    ``loss_type='dice'``) or BCE; AVSS (``K = 71``): cross-entropy over the classes.
``loss_mix``
    the released auxiliary loss (``IouSemanticAwareLoss`` of ``scripts/*/loss.py``): the channel mean of the mixed
    mask feature ``[N,1,H/4,W/4]``, resized bilinearly to the mask size, read as a logit map; S4/MS3: the main
    criterion (dice or BCE) against the ground truth; AVSS: dice against ``gt > 0`` (any sounding object).
``loss_inter_0 .. loss_inter_{L-1}``
    the paper's intermediate mask loss: the main criterion on every decoder layer's mask
    (``intermediate_masks``, each ``[N,K,H,W]``).

Weights (``loss_weights``): main 1.0 and mix 0.1 as released (``weight_dict=dict(iou_loss=1.0, mix_loss=0.1)``);
every intermediate term 1.0 (DETR's auxiliary-loss convention: the same weight as the main loss). ``total`` =
sum of weight x term over the terms that ``aux`` switches on.

Which frames count: only the supervised ones (``supervised`` ``[N]`` bool): S4 train has one annotated frame per clip
(the released loss picks frame 0 of every clip), MS3 all five, AVSS the frames of ``gt_temporal_mask_flag``.
Every term is ``sum over supervised frames of a per-frame loss / denom`` with ``denom`` = the number of supervised
frames by default, which equals the released means (dice: mean of per-frame dice; BCE: ``nn.BCELoss`` mean over
the pixels of equally sized frames; AVSS: per-frame pixel mean x flag, summed, / sum of flags). The training engine
passes the number of supervised frames of the *global* batch divided by the number of processes, so that the
gradients averaged by DistributedDataParallel equal those of one process over the whole batch.

Per-frame losses (``p = sigmoid(logit)``, ``g`` the 0/1 mask, sums over pixels):
dice ``1 - 2 sum(p g) / (sum(p^2) + 0.001 + sum(g^2) + 0.001)`` (released ``F1_Dice_loss``/``F5_Dice_loss``);
BCE the pixel mean of ``binary_cross_entropy_with_logits`` (the released ``nn.BCELoss`` on ``sigmoid`` differs only
where it clamps ``log`` at -100); CE the pixel mean of ``cross_entropy`` over the class logits.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from avsegcli.tasks import Task, task_of

AUX_CHOICES = ("both", "mix", "intermediate", "none")
#: task name -> the criteria that fit it (the first is the released one); keyed by name (``--loss`` is checked
#: against ``LOSS_TYPES[str(task)]``)
LOSS_TYPES = {"s4": ("dice", "bce"), "ms3": ("dice", "bce"), "avss": ("ce",)}
DEFAULT_LOSS = {name: types[0] for name, types in LOSS_TYPES.items()}
MAIN_WEIGHT = 1.0
MIX_WEIGHT = 0.1
INTER_WEIGHT = 1.0
DICE_EPS = 0.001


def dice_per_frame(logits: Tensor, target: Tensor) -> Tensor:
    """``logits`` ``[n,1,H,W]`` or ``[n,H,W]``, ``target`` ``[n,H,W]`` 0/1 -> ``[n]`` released dice loss."""
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    a = (p * g).sum(-1)
    b = (p * p).sum(-1) + DICE_EPS
    c = (g * g).sum(-1) + DICE_EPS
    return 1 - 2 * a / (b + c)


def bce_per_frame(logits: Tensor, target: Tensor) -> Tensor:
    """``logits`` ``[n,1,H,W]`` or ``[n,H,W]``, ``target`` ``[n,H,W]`` 0/1 -> ``[n]`` pixel-mean BCE."""
    x = logits.float().flatten(1)
    return F.binary_cross_entropy_with_logits(x, target.float().flatten(1), reduction="none").mean(-1)


def ce_per_frame(logits: Tensor, target: Tensor) -> Tensor:
    """``logits`` ``[n,K,H,W]``, ``target`` ``[n,H,W]`` int64 class ids -> ``[n]`` pixel-mean cross-entropy."""
    return F.cross_entropy(logits.float(), target.long(), reduction="none").flatten(1).mean(-1)


PER_FRAME = {"dice": dice_per_frame, "bce": bce_per_frame, "ce": ce_per_frame}


def check_loss_type(task: str | Task, loss_type: str | None) -> str:
    """The criterion name for ``task`` (a :class:`~avsegcli.tasks.Task` or its name; ``None`` -> the released
    one); ValueError for a mismatch."""
    name = str(task)
    if name not in LOSS_TYPES:
        raise ValueError(f"task must be one of {', '.join(LOSS_TYPES)}, got {task!r}")
    loss_type = loss_type or DEFAULT_LOSS[name]
    if loss_type not in LOSS_TYPES[name]:
        raise ValueError(f"loss {loss_type!r} does not fit task {name}; choose {' or '.join(LOSS_TYPES[name])}")
    return loss_type


def loss_weights(aux: str = "both", num_layers: int = 6, *, main_weight: float = MAIN_WEIGHT,
                 mix_weight: float = MIX_WEIGHT, inter_weight: float = INTER_WEIGHT) -> dict[str, float]:
    """The weight of every term that ``aux`` (both, mix, intermediate, none) switches on."""
    if aux not in AUX_CHOICES:
        raise ValueError(f"aux must be one of {', '.join(AUX_CHOICES)}, got {aux!r}")
    weights = {"loss_main": float(main_weight)}
    if aux in ("both", "mix"):
        weights["loss_mix"] = float(mix_weight)
    if aux in ("both", "intermediate"):
        weights.update({f"loss_inter_{i}": float(inter_weight) for i in range(num_layers)})
    return weights


class SegmentationLoss:
    """The training criterion of one task (a :class:`~avsegcli.tasks.Task`, or its name).

    ``criterion(outputs, masks, supervised, denom=None)`` -> ``{term: value, ..., "total": weighted sum}``;
    ``outputs`` is the model's dict (``pred_masks`` ``[N,K,H,W]``, ``mask_feature`` ``[N,C,h,w]``, and
    ``intermediate_masks`` when :attr:`needs_intermediate`); ``masks`` ``[N,H,W]`` (float 0/1 for S4/MS3, int64
    ids for AVSS); ``supervised`` ``[N]`` bool.
    """

    def __init__(self, task: str | Task, loss_type: str | None = None, aux: str = "both", num_layers: int = 6, *,
                 mix_weight: float = MIX_WEIGHT, inter_weight: float = INTER_WEIGHT) -> None:
        self.loss_type = check_loss_type(task, loss_type)
        self.task = task_of(task)
        self.aux = aux
        self.weights = loss_weights(aux, num_layers, mix_weight=mix_weight, inter_weight=inter_weight)
        self.main = PER_FRAME[self.loss_type]
        # AVSS: the released mix loss is a dice against "any object"; S4/MS3 reuse the main criterion
        self.mix = dice_per_frame if self.task.semantic else self.main

    @property
    def needs_intermediate(self) -> bool:
        return any(k.startswith("loss_inter_") for k in self.weights)

    def __call__(self, outputs: dict[str, Any], masks: Tensor, supervised: Tensor,
                 denom: float | Tensor | None = None) -> dict[str, Tensor]:
        idx = supervised.reshape(-1).nonzero().squeeze(1)
        if denom is None:
            denom = max(int(idx.numel()), 1)
        target = masks.index_select(0, idx.to(masks.device))
        idx = idx.to(outputs["pred_masks"].device)

        def reduce(per_frame_fn, logits: Tensor, tgt: Tensor) -> Tensor:
            if idx.numel() == 0:  # keep the graph (DDP needs every parameter to take part): a zero term
                return logits.float().sum() * 0.0
            return per_frame_fn(logits.index_select(0, idx), tgt).sum() / denom

        terms: dict[str, Tensor] = {"loss_main": reduce(self.main, outputs["pred_masks"], target)}
        if "loss_mix" in self.weights:
            mix = self.mix_logits(outputs["mask_feature"], masks.shape[-2:])
            terms["loss_mix"] = reduce(self.mix, mix, (target > 0).float() if self.task.semantic else target)
        if self.needs_intermediate:
            inter: Sequence[Tensor] = outputs.get("intermediate_masks") or ()
            names = [k for k in self.weights if k.startswith("loss_inter_")]
            if len(inter) != len(names):
                raise ValueError(f"expected {len(names)} intermediate masks (one per decoder layer), got {len(inter)}")
            for name, m in zip(names, inter):
                terms[name] = reduce(self.main, m, target)
        total = sum(self.weights[k] * v for k, v in terms.items())
        terms["total"] = total  # type: ignore[assignment]
        return terms

    @staticmethod
    def mix_logits(mask_feature: Tensor, size: Sequence[int]) -> Tensor:
        """``[N,C,h,w]`` -> channel mean ``[N,1,H,W]`` resized bilinearly (align_corners False), as released."""
        mean = mask_feature.float().mean(dim=1, keepdim=True)
        return F.interpolate(mean, size=tuple(size), mode="bilinear", align_corners=False)
