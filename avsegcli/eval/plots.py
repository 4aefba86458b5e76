"""``avseg eval --plots DIR``: pictures of an evaluation result (the dict :func:`avsegcli.eval.evaluate.evaluate` returns).

Written with matplotlib's Agg canvas (no display, no pyplot state), one PNG each:

``fscore_curve.png`` (S4/MS3)
    the F-measure (beta^2 = 0.3) against the threshold, over the official protocol's 255 thresholds, averaged
    over every frame with an object (``res["f_curve"]``). Its maximum, marked, is the per-frame protocol's
    F-score; the official F-score (the mean over test batches of each batch's own maximum) is drawn as a line.
``per_category_iou.png`` / ``per_clip_iou.png`` / ``per_class_iou.png``
    mIoU per S4 category, per clip (MS3, which has no categories) or IoU per AVSS class present, sorted.
``frame_iou_hist.png``
    histogram of per-frame IoU (AVSS: each frame's mean IoU over the classes in its label or prediction).
``negative_audio_fpr.png`` (with ``--negative-audio``)
    false-positive rate per replaced-audio condition, next to the predicted area with the original audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from avsegcli.errors import AvsegError

DPI = 100


def _figure(width: float = 6.4, height: float = 4.0):
    # lazy: matplotlib is heavy and only --plots needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _title(res: dict[str, Any]) -> str:
    return f"{res['task']} {res['split']} ({res['counts']['frames']} frames)"


def fscore_curve(res: dict[str, Any], path: Path) -> Path | None:
    """The mean F-curve over thresholds; None when there is none (AVSS, or no frame with an object)."""
    curve = res.get("f_curve") or {}
    f = np.asarray(curve.get("fscore") or [], dtype=np.float64)
    if f.size == 0:
        return None
    t = np.asarray(curve["thresholds"], dtype=np.float64)
    best = int(np.argmax(f))
    fig, ax = _figure()
    ax.plot(t, f, color="#1f77b4", lw=1.8, label=f"mean over {curve['frames']} frames with an object")
    ax.plot([t[best]], [f[best]], "o", color="#d62728",
            label=f"max {f[best]:.4f} at {t[best]:.3f} (per-frame F-score)")
    official = res["overall"].get("official", {}).get("fscore")
    if official is not None and official == official:
        ax.axhline(official, color="#7f7f7f", ls="--", lw=1, label=f"official F-score {official:.4f} (mean of batch maxima)")
    ax.set(xlabel="threshold on the predicted probability", ylabel="F-measure (beta^2 = 0.3)", xlim=(0, 1),
           ylim=(0, max(1.0, float(f.max()) * 1.05)), title=f"F-measure curve, {len(t)} thresholds: {_title(res)}")
    if res.get("mode") == "pred":
        ax.text(0.5, 0.04, "saved 0/1 masks: the curve has two levels", transform=ax.transAxes, ha="center",
                fontsize=8, color="#555555")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _bars(names: list[str], values: list[float], path: Path, title: str, xlabel: str) -> Path:
    order = sorted(range(len(values)), key=lambda i: (-values[i], names[i]))
    names, values = [names[i] for i in order], [values[i] for i in order]
    fig, ax = _figure(6.4, max(2.5, 0.8 + 0.22 * len(names)))
    y = np.arange(len(names))
    ax.barh(y, values, color="#2ca02c")
    ax.set_yticks(y, labels=names, fontsize=7 if len(names) > 30 else 9)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel=xlabel, title=title)
    for yi, v in zip(y, values):  # the value at the bar's end: inside it (white) when the bar is long
        inside = v > 0.85
        ax.text(v - 0.01 if inside else v + 0.01, yi, f"{v:.3f}", va="center", ha="right" if inside else "left",
                fontsize=7, color="white" if inside else "black")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def iou_bars(res: dict[str, Any], out: Path) -> Path | None:
    """Per category (S4), per clip (MS3) or per class present (AVSS), sorted by IoU."""
    if res.get("per_class"):
        pc = res["per_class"]
        proto = "per-frame" if "per-frame" in pc else res["protocols"][0]
        seen = [i for i, n in enumerate(pc[proto]["count"]) if n and i > 0]
        if not seen:
            return None
        return _bars([pc["names"][i] for i in seen], [pc[proto]["iou"][i] for i in seen], out / "per_class_iou.png",
                     f"IoU per class ({proto}): {_title(res)}", "IoU")
    if res.get("per_category"):
        cats = res["per_category"]
        return _bars(list(cats), [v["miou"] for v in cats.values()], out / "per_category_iou.png",
                     f"mIoU per category (per-frame): {_title(res)}", "mIoU")
    if res.get("per_clip"):
        clips = res["per_clip"]
        return _bars(list(clips), [v["miou"] for v in clips.values()], out / "per_clip_iou.png",
                     f"mIoU per clip: {_title(res)}", "mIoU")
    return None


def frame_iou_hist(res: dict[str, Any], path: Path) -> Path | None:
    if res.get("per_frame_miou"):
        values, what = res["per_frame_miou"]["values"], f"mean IoU over the classes present ({res['per_frame_miou']['protocol']})"
    else:
        values = [v for rec in (res.get("per_clip") or {}).values() for v in rec["iou"]]
        what = "IoU (official per-frame rule: empty ground truth scored by the complement)"
    values = np.asarray([v for v in values if v == v], dtype=np.float64)
    if values.size == 0:
        return None
    fig, ax = _figure()
    ax.hist(values, bins=np.linspace(0, 1, 21), color="#9467bd", edgecolor="white")
    ax.axvline(values.mean(), color="#d62728", lw=1.5, label=f"mean {values.mean():.4f}")
    ax.set(xlim=(0, 1), xlabel=what, ylabel="frames", title=f"per-frame IoU, {values.size} frames: {_title(res)}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def negative_fpr(res: dict[str, Any], path: Path) -> Path | None:
    """FPR per negative-audio condition (``res["negative_audio"]``, from ``--negative-audio``)."""
    neg = res.get("negative_audio")
    if not neg:
        return None
    names = list(neg)
    values = [neg[c]["fpr"] for c in names]
    info = res.get("negative_audio_info") or {}
    fig, ax = _figure()
    x = np.arange(len(names))
    ax.bar(x, [v if v == v else 0.0 for v in values], color="#ff7f0e")
    for xi, v in zip(x, values):
        ax.text(xi, (v if v == v else 0.0), f"{100 * v:.2f}%" if v == v else "n/a", ha="center", va="bottom", fontsize=8)
    area = info.get("positive_area")
    if area is not None and area == area:
        ax.axhline(area, color="#1f77b4", ls="--", lw=1, label=f"predicted area with the true audio {100 * area:.2f}%")
        ax.legend(fontsize=8)
    top = max([v for v in values if v == v] + [area or 0.0, 1e-3])
    ax.set_xticks(x, labels=names)
    ax.set(ylim=(0, top * 1.25), ylabel="false-positive rate (fraction of pixels)",
           title=f"negative audio (empty ground truth): {_title(res)}")
    return _save(fig, path)


def write_plots(res: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write every plot that applies to ``res`` into ``out_dir`` (created); returns ``{plot: path}``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AvsegError(f"cannot create the plots folder ({err.strerror or err})", path=out) from None
    made = {
        "fscore_curve": fscore_curve(res, out / "fscore_curve.png"),
        "iou_bars": iou_bars(res, out),
        "frame_iou_hist": frame_iou_hist(res, out / "frame_iou_hist.png"),
        "negative_audio_fpr": negative_fpr(res, out / "negative_audio_fpr.png"),
    }
    return {k: str(v) for k, v in made.items() if v is not None}


__all__ = ["fscore_curve", "frame_iou_hist", "iou_bars", "negative_fpr", "write_plots"]
