"""``avseg weights``: the named weights (list, get) and checkpoint files (info, convert)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from avsegcli.cli.common import Offline, Quiet, Verbose, detail, print_fields, set_offline, set_verbosity

app = typer.Typer(help="Named weights (list, get: fetched once into a cache) and checkpoint files (info, convert).", no_args_is_help=True)


@app.command("info")
def info(
    path: str = typer.Argument(..., metavar="PATH|NAME", help="A checkpoint: the authors' .pth, our .safetensors, or a name from `avseg weights list` (fetched first unless cached)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    offline: Offline = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Preset, classes, parameter counts and sha256 of a checkpoint."""
    from avsegcli.weights import checkpoint_info

    set_verbosity(verbose, quiet)
    set_offline(offline)
    data = checkpoint_info(path)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    if quiet:  # the check ran (a bad file is still an error); nothing to show
        return
    detail(json.dumps(data, indent=2))
    rows = [
        ("format", data["format"]),
        ("preset", data["preset"]),
        ("task / classes", f"{data['task']} / {data['num_classes']}"),
        ("image size", str(data["image_size"])),
        ("values in file", f"{data['values_in_file'] / 1e6:.1f} M ({data['keys_in_file']} tensors, buffers included)"),
        ("used by the forward pass", f"{data['values_used_by_forward'] / 1e6:.1f} M"),
        ("used only by intermediate masks", f"{data['values_intermediate_only'] / 1e6:.1f} M"),
        ("never used", f"{data['values_unused'] / 1e6:.1f} M ({data['keys_unused']} tensors)"),
        ("sha256", data["sha256"]),
    ]
    print_fields(data["path"], rows)


@app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="The authors' .pth checkpoint (or one of ours)."),
    dst: Path = typer.Argument(..., help="Output .safetensors file (our format, config inside)."),
    half: bool = typer.Option(False, "--half", help="Store the values as float16 (half the size; loaded back as float32)."),
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Convert a checkpoint to our safetensors format (a strict load first: every key accounted for)."""
    from avsegcli.weights import read_checkpoint, save_checkpoint, sha256sum

    set_verbosity(verbose, quiet)

    model, report = read_checkpoint(src)
    import torch

    save_checkpoint(model, dst, extra_metadata={"converted_from": src.name, "source_format": report.source_format},
                    dtype=torch.float16 if half else None)
    detail(f"unused tensors dropped: {', '.join(sorted(report.unused)) or 'none'}")
    if quiet:
        return
    Console().print(f"wrote {dst} (preset {report.config['name']}, {report.values_loaded / 1e6:.1f} M values, "
                    f"{len(report.unused)} unused tensors dropped, sha256 {sha256sum(dst)[:16]})")


def _size(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.1f} MB"


@app.command("list")
def list_weights(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The named weights: task, backbone, input size, the authors' mIoU and F, and what is in the cache."""
    from avsegcli.hub.cache import weights_dir
    from avsegcli.hub.resolve import listing

    rows = listing()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"named weights (cache: {weights_dir()})")
    for col in ("name", "task", "backbone", "input", "mIoU", "F", "size", "cached", "hash", "file (in the cache)"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(r["name"], r["task"] or r["kind"], r["backbone"] or "", r["input_size"],
                      "" if r["miou"] is None else f"{r['miou']:.2f}", "" if r["fscore"] is None else f"{r['fscore']:.1f}",
                      _size(r["size"]), "yes" if r["cached"] else "no", r["hash"], r["filename"])
    Console().print(table)


@app.command("get")
def get_weights(
    name: str = typer.Argument(..., metavar="NAME|all", help="A name from `avseg weights list`, or all."),
    offline: Offline = False,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a summary."),
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Fetch named weights into the cache ahead of time (for clusters and offline machines); checked by hash."""
    from avsegcli.hub.resolve import get_many

    set_verbosity(verbose, quiet)
    set_offline(offline)
    rows = get_many(name)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if quiet:
        return
    for r in rows:
        Console(highlight=False).print(f"{r['name']}: {'fetched' if r['fetched'] else 'already cached'}, "
                                       f"{_size(r['size'])}, hash {r['hash']}: {r['path']}", markup=False)
