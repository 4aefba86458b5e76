"""``avseg weights``: inspect and convert checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from avsegcli.cli.common import Quiet, Verbose, detail, set_verbosity

app = typer.Typer(help="Inspect and convert checkpoints (the authors' .pth files or ours).", no_args_is_help=True)


@app.command("info")
def info(
    path: Path = typer.Argument(..., help="A checkpoint: the authors' .pth or our .safetensors."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Preset, classes, parameter counts and sha256 of a checkpoint."""
    from avsegcli.weights import checkpoint_info

    set_verbosity(verbose, quiet)
    data = checkpoint_info(path)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    if quiet:  # the check ran (a bad file is still an error); nothing to show
        return
    detail(json.dumps(data, indent=2))
    table = Table(title=str(path), show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
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
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


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
