"""``avseg eval``: score a checkpoint (``predictor``) or saved masks (``pred_dir``) on an AVSBench split.

    from avsegcli.eval.evaluate import evaluate
    res = evaluate("s4", "/data/AVSBench", "test", predictor=Predictor("AVSegFormer_res50_s4.pth"))
    res["overall"]["official"]["miou"]        # the number the paper reports (as a fraction)

The command line's way in is :func:`evaluate_options` (one :class:`~avsegcli.eval.options.EvalOptions` record:
the flags, checked; it loads the model the flags name and calls :func:`evaluate`).

Both protocols of :mod:`avsegcli.eval.metrics` are fed the same batches: ``batch_clips`` clips concatenated to
frames (2 clips = the official 10-frame S4/MS3 test batch; the official per-batch average depends on it, the
per-frame protocol and the AVSS protocol do not). Scoring with a model and scoring the masks it saved give:

* S4/MS3: the same mIoU (both protocols, per frame, per clip, per category), because IoU only sees
  ``sigmoid(logit) > 0.5`` and that is what is saved. The F-score differs: it sweeps 255 thresholds over the
  probabilities, and a saved 0/1 mask has only two levels.
* AVSS: every number is the same, because every number only sees ``argmax(softmax(logits))``, which is what is
  saved (padded frames of 5-frame clips predict class 0 and may be saved or left out).

The prediction readers live in :mod:`avsegcli.eval.saved`, the model's batches in :mod:`avsegcli.eval.forward`.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from avsegcli.data import make_dataset
from avsegcli.errors import AvsegError
from avsegcli.eval.forward import predictions, save_masks
from avsegcli.eval.metrics import PROTOCOLS, BinaryMetrics, SemanticMetrics
from avsegcli.eval.negative import NegativeAudioScorer
from avsegcli.eval.options import SAVE_PRED_NEEDS_WEIGHTS, EvalOptions, check_sizes
from avsegcli.eval.saved import PredictionSource, load_targets
from avsegcli.inference.feed import available_cores, default_workers, device_guard
from avsegcli.inference.predictor import Predictor
from avsegcli.palette import AVSS_CLASS_NAMES
from avsegcli.tasks import Task, task_of

ENV_ROOT = "AVSBENCH_ROOT"
Progress = Callable[[int, int], None]  # (clips done, clips in all)


def resolve_data_root(data: str | Path | None = None, *, env: dict[str, str] | None = None) -> Path:
    """``data`` if given, else ``$AVSBENCH_ROOT`` if that folder exists, else ``./data`` if it exists.

    Raises one AvsegError naming both default places when neither exists (and ``data`` was not given).
    """
    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise AvsegError("dataset root not found (expected the AVSBench folder)", path=root)
        return root
    env = dict(os.environ) if env is None else env
    from_env = env.get(ENV_ROOT)
    if from_env and Path(from_env).is_dir():
        return Path(from_env)
    local = Path("data")
    if local.is_dir():
        return local
    where = f"${ENV_ROOT} ({from_env}) does not exist" if from_env else f"${ENV_ROOT} is not set"
    raise AvsegError(f"no dataset: --data not given, {where}, and {local.resolve()} does not exist; "
                     f"pass --data DIR or set {ENV_ROOT}")


def check_task(task: str | Task) -> Task:
    """The :class:`~avsegcli.tasks.Task` of a name; AvsegError naming the choices otherwise."""
    return task_of(task)


def check_classes(task: Task, num_classes: int, weights: str | Path | None = None) -> None:
    """A binary checkpoint (1 class) for S4/MS3, a 71-class one for AVSS (``task.num_classes``); else an AvsegError
    naming both."""
    need = task.num_classes
    if num_classes != need:
        kind = "semantic" if task.semantic else "binary"
        raise AvsegError(f"checkpoint has {num_classes} output class(es) but task {task} needs {need} ({kind} masks)",
                         path=weights)


class _Scorer:
    """Feeds every batch to one metric per protocol; remembers which clip/frame each scored frame was."""

    def __init__(self, task: Task, protocols: Sequence[str]) -> None:
        self.task, self.semantic = task, task.semantic
        self.metrics: dict[str, BinaryMetrics | SemanticMetrics] = {
            p: SemanticMetrics(task.num_classes, p) if self.semantic else BinaryMetrics(p) for p in protocols}
        self.frame_ids: list[tuple[str, int]] = []  # binary: (clip, frame) of each scored frame, in order
        self.clip_keys: dict[str, str] = {}
        self.frames = 0

    def key(self, item: dict[str, Any]) -> str | None:
        return item["subset"] if self.semantic else (item["category"] or None)

    def add(self, items: list[dict[str, Any]], pred: torch.Tensor) -> None:
        """``pred`` ``[B*T,S,S]``: probabilities (or 0/1 masks) for S4/MS3, class ids for AVSS."""
        target = torch.cat([it["masks"] for it in items])
        valid = torch.cat([it["mask_valid"] for it in items])
        keys_ = [self.key(it) for it in items]
        keys = None if keys_[0] is None else [k for k, it in zip(keys_, items) for _ in range(it["masks"].shape[0])]
        for it, k in zip(items, keys_):
            self.clip_keys[it["name"]] = k or ""
        self.frames += target.shape[0]
        for m in self.metrics.values():
            if isinstance(m, SemanticMetrics):
                m.update_ids(pred, target, valid=valid, keys=keys)
            else:
                m.update_probs(pred, target, valid=valid, keys=keys)
        if not self.semantic:
            self.frame_ids += [(it["name"], j) for it in items for j in range(len(it["mask_valid"]))
                               if it["mask_valid"][j]]

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"overall": {}}
        computed = {p: m.compute() for p, m in self.metrics.items()}
        for p, r in computed.items():
            if self.semantic:
                out["overall"][p] = {k: r[k] for k in ("miou", "fscore", "miou_seen", "fscore_seen", "classes_seen",
                                                       "frames")}
            else:
                out["overall"][p] = {k: r[k] for k in ("miou", "fscore", "frames", "fscore_frames", "batches",
                                                       "batch_miou", "batch_fscore")}
        if self.semantic:
            out["per_subset"] = {p: {k: {f: v[f] for f in ("miou", "fscore", "classes_seen", "frames")}
                                     for k, v in sorted(r.get("per_key", {}).items())} for p, r in computed.items()}
            out["per_class"] = {"names": list(AVSS_CLASS_NAMES), **{p: {
                "iou": r["per_class_iou"].tolist(), "fscore": r["per_class_fscore"].tolist(),
                "count": r["class_count"].tolist()} for p, r in computed.items()}}
            frame_proto = "per-frame" if "per-frame" in computed else next(iter(computed))
            out["per_frame_miou"] = {"protocol": frame_proto, "values": computed[frame_proto]["per_frame_miou"]}
            return out
        first = next(iter(computed.values()))
        # pooled F-curve (the same whatever the protocol): its maximum is the per-frame protocol's F-score
        out["f_curve"] = {"thresholds": first["thresholds"], "fscore": first["f_curve"], "frames": first["fscore_frames"]}
        if "per_key" in first:  # binary keys are scored per frame whatever the protocol
            out["per_category"] = dict(sorted(first["per_key"].items()))
        per_clip: dict[str, dict[str, Any]] = {}
        for (name, j), iou in zip(self.frame_ids, first["per_frame_iou"]):
            rec = per_clip.setdefault(name, {"category": self.clip_keys[name], "frames": [], "iou": []})
            rec["frames"].append(j)
            rec["iou"].append(iou)
        for rec in per_clip.values():
            rec["miou"] = float(np.mean(rec["iou"]))
        out["per_clip"] = per_clip
        return out


class _Clips(Dataset):
    """The clips to score, in split order: dataset items (with a model) or ground truth plus the saved masks
    (``pred``). A user error (or an unreadable image) is returned, not raised, so that it leaves a loader worker
    as one line."""

    def __init__(self, ds: Any, indices: list[int], source: PredictionSource | None, size: int) -> None:
        self.ds, self.indices, self.source, self.size = ds, indices, source, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any] | AvsegError:
        i = self.indices[k]
        try:
            if self.source is None:
                return self.ds[i]
            item = load_targets(self.ds, i)
            item["pred"] = self.source.load(self.ds.clip_info(i), self.size)
            return item
        except AvsegError as err:
            return err
        except (OSError, SyntaxError) as err:  # a corrupt image (PIL raises these): the user's file, not a bug
            where = self.source.dir if self.source is not None else self.ds.root
            return AvsegError(f"cannot read a file of clip {self.ds.clip_info(i).name}: {err}", path=where)


def evaluate(task: str | Task, root: str | Path, split: str = "test", *, predictor: Any = None,
             pred_dir: str | Path | None = None, protocols: Sequence[str] = PROTOCOLS,
             batch_clips: int | None = None, save_pred: str | Path | None = None, progress: Progress | None = None,
             limit: int | None = None, image_size: int | None = None, workers: int | None = None,
             forward_batch: int | None = None, dataset_kw: dict[str, Any] | None = None, negative_audio: Sequence[str] = (),
             negative_seed: int = 0) -> dict[str, Any]:
    """Score ``predictor`` (a :class:`~avsegcli.inference.predictor.Predictor`) or the masks in ``pred_dir`` on a split.

    ``task``: a :class:`~avsegcli.tasks.Task` or its name. ``batch_clips``: clips per metric batch (default
    ``task.batch_clips``: 2 for S4/MS3 = the official 10 frames, 4 for AVSS).
    ``forward_batch``: frames per forward pass with a predictor, independent of the metric batch (default: one
    metric batch per forward); larger values run several metric batches together, which are then scored one by one
    exactly as before. ``image_size``: scoring size; default the checkpoint's, or for saved
    masks their own size when square, else the task's (512 S4/MS3, 224 AVSS). ``save_pred``: with a predictor,
    also write its masks in the benchmark's layout. ``limit``: first N clips only. ``progress(done, total)``
    is called after each batch. ``workers``: data-loading processes (default: none on machines with 2 cores or
    fewer, else :func:`avsegcli.inference.feed.default_workers`, at most 8; pinned memory when the model is on CUDA).
    ``dataset_kw`` goes to the dataset (e.g.
    ``log_mel_fn`` for AVSS). ``negative_audio`` (conditions of :mod:`avsegcli.data.negatives`) also scores the
    clips with replaced audio against empty ground truth (:mod:`avsegcli.eval.negative`; seeded by
    ``negative_seed``), adding ``negative_audio``, ``g_miou``, ``g_fscore`` and ``negative_audio_info``.

    Returns a JSON-ready dict: ``task``, ``split``, ``root``, ``mode`` ('weights'/'pred'), ``model`` (or None),
    ``pred_dir``, ``pred_layout``, ``protocols``, ``batch_clips``, ``image_size``, ``counts`` (clips, frames,
    frames_scored), ``overall`` ({protocol: {miou, fscore, ...}}), ``per_category`` + ``per_clip`` (S4/MS3),
    ``per_subset`` + ``per_class`` (AVSS), ``saved_predictions``, ``warnings``, ``seconds``.
    """
    t0 = time.perf_counter()
    task = check_task(task)
    protocols = tuple(dict.fromkeys(protocols))
    if not protocols or any(p not in PROTOCOLS for p in protocols):
        raise AvsegError(f"protocol must be {', '.join(PROTOCOLS)} or both, got {', '.join(protocols) or 'none'}")
    if (predictor is None) == (pred_dir is None):
        raise AvsegError("give a model (--weights) or saved masks (--pred), not both" if predictor is not None
                         else "nothing to score: give --weights CKPT or --pred DIR")
    if save_pred is not None and predictor is None:
        raise AvsegError(SAVE_PRED_NEEDS_WEIGHTS)
    batch_clips = check_sizes(task, batch_clips, limit, forward_batch)
    semantic = task.semantic
    warnings: list[str] = []
    kw = dict(dataset_kw or {})
    if predictor is not None:
        check_classes(task, predictor.num_classes, getattr(predictor, "weights", None))
        ckpt_task = predictor.config.get("task")
        if ckpt_task and str(ckpt_task) != str(task):  # the checkpoint's config records the name
            warnings.append(f"the checkpoint was made for {ckpt_task}, scoring it on {task}")
        size = int(image_size or predictor.image_size)
        ds = make_dataset(task, root, split, image_size=size, load_audio=True, **kw)
    else:
        ds = make_dataset(task, root, split, load_audio=False, **kw)
    indices = list(range(len(ds)))[:limit]
    source = None
    if pred_dir is not None:
        source = PredictionSource(task, pred_dir, [ds.clip_info(i) for i in indices])
        size = int(image_size or source.square_size() or ds.image_size)
        ds.image_size = size  # ground truth resized like the saved masks (nearest), as the readers do
    scorer = _Scorer(task, protocols)
    save_dir = None if save_pred is None else Path(save_pred)
    negative = None
    if negative_audio:
        negative = NegativeAudioScorer(task, ds, indices, negative_audio, negative_seed, pred_dir=pred_dir,
                                       save_dir=save_dir)
        warnings += negative.warnings
    clips = _Clips(ds, indices, source, size)
    on_cuda = predictor is not None and predictor.device.type == "cuda"
    if workers is None:
        batches = -(-len(indices) // batch_clips)
        workers = 0 if available_cores() <= 2 else min(8, default_workers(predictor.device if predictor is not None
                                                                          else "cpu", jobs=batches))
    with device_guard(predictor.device if predictor is not None else "cpu"):  # pinning on the model's GPU
        loader = DataLoader(clips, batch_size=batch_clips, shuffle=False, num_workers=max(0, int(workers)),
                            collate_fn=list, pin_memory=on_cuda)
        done = 0
        if progress:
            progress(0, len(indices))
        for items, pred in predictions(loader, predictor, semantic, forward_batch):
            if predictor is not None and save_dir is not None:
                save_masks(items, pred, save_dir, semantic)
            scorer.add(items, pred)
            if negative is not None:
                negative.add(items, pred, predictor)
            done += len(items)
            if progress:
                progress(done, len(indices))
    res = scorer.result()
    if negative is not None:
        res.update(negative.result(res["overall"]))
    scored = next(iter(res["overall"].values()))["frames"]
    return {
        "task": str(task), "split": split, "root": str(Path(root).resolve()),
        "mode": "weights" if predictor is not None else "pred",
        "model": predictor.model_info() if predictor is not None else None,
        "pred_dir": None if pred_dir is None else str(Path(pred_dir).resolve()),
        "pred_layout": None if source is None else source.layout,
        "protocols": list(protocols), "batch_clips": batch_clips, "image_size": size,
        "counts": {"clips": len(indices), "clips_in_split": len(ds), "frames": scorer.frames,
                   "frames_scored": scored},
        **res,
        "saved_predictions": None if save_dir is None else str(save_dir.resolve()),
        "warnings": warnings, "seconds": round(time.perf_counter() - t0, 3),
    }


def evaluate_options(opts: EvalOptions, *, display: Callable[[], AbstractContextManager[Progress | None]] | None = None,
                     note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``avseg eval``: check ``opts`` (:meth:`EvalOptions.validate`), find the dataset (:func:`resolve_data_root`),
    load the model the flags name (``--weights``, else the bundled one; none with ``--pred``) and :func:`evaluate`.

    ``display()`` (entered once the model is loaded, around the scoring) gives the ``progress(done, total)``
    callback, or None; ``note(line)`` hears what was loaded (the command line prints it with ``--verbose``).
    Returns :func:`evaluate`'s dict."""
    opts.validate()
    root = resolve_data_root(opts.data)
    predictor = None
    if opts.pred is None:
        predictor = Predictor(opts.weights, device=opts.device, precision=opts.precision, backend=opts.backend)
        if note:
            note(f"model {predictor.model_info()}")
    if note:
        note(f"data {root} split {opts.split}; "
             f"{'saved masks ' + str(opts.pred) if opts.pred is not None else 'scoring the model'}")
    with (display or nullcontext)() as progress:
        return evaluate(opts.task, root, opts.split, predictor=predictor, pred_dir=opts.pred, protocols=opts.protocols,
                        batch_clips=opts.batch_size, save_pred=opts.save_pred, limit=opts.limit,
                        image_size=opts.image_size, workers=opts.workers, forward_batch=opts.forward_batch,
                        negative_audio=opts.conditions, negative_seed=opts.seed, progress=progress)
