"""``avseg eval``: score a checkpoint or saved masks on an AVSBench split.

The flags become one :class:`~avsegcli.eval.options.EvalOptions` (one field each), handed to
:func:`avsegcli.eval.evaluate.evaluate_options`; this module only draws the progress bar, the tables and the JSON.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from avsegcli.cli.common import WEIGHTS_NAMES, Offline, Quiet, Verbose, detail, set_offline, set_verbosity
from avsegcli.tasks import task_of


def _pct(x: Any) -> str:
    return "-" if x is None or x != x else f"{100 * x:.2f}"


def _tables(res: dict[str, Any]) -> list[Table]:
    """Overall scores per protocol; per category (S4) or per subset and per class (AVSS)."""
    protos = res["protocols"]
    c = res["counts"]
    title = f"avseg eval {res['task']} {res['split']}: {c['clips']} clips, {c['frames']} frames"
    overall = Table(title=title)
    for col in ("protocol", "mIoU %", "F-score %", "frames scored"):
        overall.add_column(col, justify="left" if col == "protocol" else "right")
    for p in protos:
        r = res["overall"][p]
        overall.add_row(p, _pct(r["miou"]), _pct(r["fscore"]), str(r["frames"]))
    source = res["model"]["weights"] if res["model"] else f"{res['pred_dir']} ({res['pred_layout']} layout)"
    notes = [f"scored: {source}", f"{res['batch_clips']} clip(s) per batch, masks at {res['image_size']} px"]
    task = task_of(res["task"])
    if task.semantic and "official" in protos:
        notes.append(f"official: mean over all {task.num_classes} classes (absent classes count as 0), padded frames "
                     "included")
    if not task.semantic and res["mode"] == "pred":
        notes.append("F-score of saved 0/1 masks: only two threshold levels, not the model's probabilities")
    overall.caption = "; ".join(notes)
    tables = [overall]
    if res.get("per_category"):
        cat = Table(title="per category (per-frame protocol)")
        for col in ("category", "frames", "mIoU %", "F-score %"):
            cat.add_column(col, justify="left" if col == "category" else "right")
        for k, v in res["per_category"].items():
            cat.add_row(k, str(v["frames"]), _pct(v["miou"]), _pct(v["fscore"]))
        tables.append(cat)
    if res.get("per_subset"):
        sub = Table(title="per subset")
        sub.add_column("subset")
        for p in protos:
            sub.add_column(f"frames ({p})", justify="right")
            sub.add_column(f"mIoU % ({p})", justify="right")
            sub.add_column(f"F % ({p})", justify="right")
        for key in res["per_subset"][protos[0]]:
            row = [key]
            for p in protos:
                v = res["per_subset"][p].get(key, {})
                row += [str(v.get("frames", "-")), _pct(v.get("miou")), _pct(v.get("fscore"))]
            sub.add_row(*row)
        tables.append(sub)
    if res.get("per_class"):
        pc = res["per_class"]
        first = protos[0]
        seen = [i for i, n in enumerate(pc[first]["count"]) if n]  # frames where label or prediction has it
        seen.sort(key=lambda i: (-pc[first]["iou"][i], i))
        cls = Table(title=f"per class, by IoU ({first})")
        for col in ("class", "id", "frames"):
            cls.add_column(col, justify="left" if col == "class" else "right")
        for p in protos:
            cls.add_column(f"IoU % ({p})", justify="right")
            cls.add_column(f"F % ({p})", justify="right")
        for i in seen:
            row = [pc["names"][i], str(i), str(pc[first]["count"][i])]
            for p in protos:
                row += [_pct(pc[p]["iou"][i]), _pct(pc[p]["fscore"][i])]
            cls.add_row(*row)
        cls.caption = (f"{len(seen)} of {len(pc['names'])} classes present (frames: frames where the class is in "
                       f"the label or the prediction)")
        tables.append(cls)
    if res.get("negative_audio"):
        tables.append(_negative_table(res))
    return tables


def _negative_table(res: dict[str, Any]) -> Table:
    """One row per negative-audio condition, the positive area for comparison, g_miou / g_fscore in the caption."""
    info = res["negative_audio_info"]
    neg = Table(title=f"negative audio (ground truth empty; seed {info['seed']})")
    for col in ("audio", "FPR %", "frames with any %", "frames"):
        neg.add_column(col, justify="left" if col == "audio" else "right")
    for c, v in res["negative_audio"].items():
        neg.add_row(c, _pct(v["fpr"]), _pct(v["frames_with_any"]), str(v["frames"]))
    neg.add_row("(original: predicted area)", _pct(info["positive_area"]), _pct(info["positive_frames_with_any"]), "")
    notes = [f"g_miou {_pct(res['g_miou'])}, g_fscore {_pct(res['g_fscore'])} = sqrt({info['positive_protocol']} "
             f"score x (1 - mean FPR {_pct(info['mean_fpr'])}%))", f"noise RMS {info['noise_rms']} of full scale"]
    off = info.get("offscreen")
    if off:
        rules = ", ".join(f"{k} {v}" for k, v in sorted(off["rules"].items()))
        notes.append(f"offscreen donors by {off['category_source']}: {rules}")
    neg.caption = "; ".join(notes)
    return neg


def evaluate(
    task: str = typer.Option(..., "--task", "-t", help="s4, ms3 or avss."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="AVSBench root (holds Single-source/, Multi-sources/, AVSS/). Default: $AVSBENCH_ROOT, else ./data."),
    split: str = typer.Option("test", "--split", help="train, val or test."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", metavar="PATH|NAME", help="Checkpoint to run over the split: PATH or NAME, " + WEIGHTS_NAMES + " (default: the bundled model, when neither --weights nor --pred is given)."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="Score saved masks instead: the benchmark's layout or `avseg run` output folders."),
    protocol: str = typer.Option("both", "--protocol", help="official (the paper's numbers), per-frame (batch independent) or both."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Clips per batch (default 2 for S4/MS3 = the official 10 frames, 4 for AVSS)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (default here: the paper's numbers), auto, tf32 (CUDA), bf16 or fp16."),
    backend: str = typer.Option("torch", "--backend", help="torch (default), onnxruntime or openvino: score an exported model (--weights FILE.onnx/.xml, or a checkpoint exported on first use)."),
    save_pred: Optional[Path] = typer.Option(None, "--save-pred", help="With --weights: also save the predicted masks here, in the benchmark's layout."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write every number as JSON to this file ('-' for stdout, no table)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N clips of the split."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Scoring size in pixels (default: the checkpoint's; with --pred the saved masks' own size when square, else 512 S4/MS3, 224 AVSS)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data loading processes (0 = in the main process; default from the cores: none with 2 or fewer)."),
    forward_batch: Optional[int] = typer.Option(None, "--forward-batch", help="Frames per forward pass, independent of the metric batch (default: one metric batch; e.g. 32 on a GPU)."),
    negative_audio: Optional[str] = typer.Option(None, "--negative-audio", help="Also score the clips with their audio replaced (comma list of silence, noise, offscreen) against empty ground truth: false-positive rate per condition, g_miou, g_fscore. With --pred: each condition's masks in DIR/<condition>/."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise and of the offscreen pairing (--negative-audio)."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write PNG plots into this folder: F-measure curve over the 255 thresholds (S4/MS3), IoU per category/clip/class (sorted), per-frame IoU histogram, FPR per --negative-audio condition."),
    offline: Offline = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Score mIoU and F-score on AVSBench (S4, MS3, AVSS) with the official protocol and a per-frame one."""
    from avsegcli.eval.evaluate import evaluate_options  # lazy: the library imports torch (not for --help)
    from avsegcli.eval.options import EvalOptions

    opts = EvalOptions(task=task, data=data, split=split, weights=weights, pred=pred, protocol=protocol,
                       batch_size=batch_size, device=device, precision=precision, backend=backend, save_pred=save_pred, json_out=json_out,
                       limit=limit, image_size=image_size, workers=workers, forward_batch=forward_batch,
                       negative_audio=negative_audio, seed=seed, plots=plots, quiet=quiet, verbose=verbose)
    set_verbosity(opts.verbose, opts.quiet)
    set_offline(offline)
    silent = opts.quiet or opts.to_stdout
    res = evaluate_options(opts, display=None if silent else lambda: _progress_bar(f"{opts.task} {opts.split} clips"), note=detail)
    text = json.dumps(res, indent=1)
    if opts.to_stdout:
        print(text)
    elif opts.json_out is not None:
        Path(opts.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json_out).write_text(text + "\n")
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for w in res["warnings"]:
        err.print(f"warning: {w}", markup=False)
    if opts.plots is not None:
        from avsegcli.eval.plots import write_plots  # lazy: only --plots needs it

        made = write_plots(res, opts.plots)
        if not silent:
            err.print(f"plots: {', '.join(made.values()) or 'none apply'}", markup=False)
    detail(f"scored in {res['seconds']} s")
    if not silent:
        out = Console()
        for t in _tables(res):
            out.print(t)


@contextmanager
def _progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar on stderr (clips scored); yields its ``progress(done, total)`` callback."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        bar = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(bar, completed=done, total=total)
