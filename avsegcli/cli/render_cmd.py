"""``avseg render``: draw an ``avseg run`` mask folder over its video (flags map one to one onto render_video)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from avsegcli.cli.common import Quiet, Verbose, detail, set_verbosity
from avsegcli.errors import AvsegError


class Hold(str, Enum):
    """Which mask a frame between sampled frames shows."""

    second = "second"
    nearest = "nearest"


def render(
    video: Path = typer.Argument(..., help="The source video the masks were made from."),
    masks_dir: Path = typer.Argument(..., help="Its mask folder, as written by `avseg run` (DIR/<stem>)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output video (.mp4, .m4v, .mov or .mkv; H.264 + the source audio)."),
    hold: Hold = typer.Option(Hold.second, "--hold", help="second: each frame shows the mask of its second; "
                              "nearest: the mask sampled nearest in time."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Opacity of the mask fill."),
    contour: bool = typer.Option(True, "--contour/--no-contour", help="Draw the mask boundary."),
    side_by_side: bool = typer.Option(False, "--side-by-side", help="Original on the left, overlay on the right."),
    timestamp: bool = typer.Option(False, "--timestamp", help="Print each frame's time (top right)."),
    audio_bar: bool = typer.Option(False, "--audio-bar", help="Show the audio level of each frame (bottom left)."),
    frames: Optional[Path] = typer.Option(None, "--frames", help="Write one overlay PNG per frame into this folder "
                                          "(instead of, or as well as, -o)."),
    crf: int = typer.Option(18, "--crf", min=0, max=51, help="libx264 quality: lower is better and bigger."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Also (or only) write one PNG with every sampled frame "
                                         "and its mask in a grid, with timestamps (and the AVSS legend)."),
    columns: Optional[int] = typer.Option(None, "--columns", min=1, help="Tiles per row of --sheet (default: about square)."),
    tile_width: int = typer.Option(240, "--tile-width", min=16, help="Width in pixels of each --sheet tile."),
    start: Optional[float] = typer.Option(None, "--start", help="Draw only frames at or after this time (seconds on the source's timeline)."),
    end: Optional[float] = typer.Option(None, "--end", help="Draw only frames before this time (seconds)."),
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Draw the sounding-object masks over every frame of VIDEO and encode an MP4 (or PNG frames, or a contact sheet)."""
    # lazy: the library (torch) only once a command runs, not for --help
    from avsegcli.media.sampling import check_window
    from avsegcli.render import render_video
    from avsegcli.render.sheet import contact_sheet

    set_verbosity(verbose, quiet)
    check_window(start, end)
    console = Console(highlight=False, soft_wrap=True)
    if sheet is not None:
        st = contact_sheet(video, masks_dir, sheet, columns=columns, tile_width=tile_width, start=start, end=end)
        if not quiet:
            console.print(f"wrote {st['out']}: {st['tiles']} tiles in {st['rows']}x{st['columns']} ({st['size'][0]}x{st['size'][1]} px)",
                          markup=False)
        if out is None and frames is None:
            return
    if out is None and frames is None:
        raise AvsegError("nothing to write: give an output video (-o), a frames folder (--frames) or --sheet")
    detail(f"rendering {video} with {masks_dir}: hold {hold.value}, alpha {alpha}, window {start}..{end}")
    stats = render_video(video, masks_dir, out, hold=hold.value, alpha=alpha, contour=contour, side_by_side=side_by_side,
                         timestamp=timestamp, audio_bar=audio_bar, frames_dir=frames, progress=progress and not quiet,
                         crf=crf, start=start, end=end)
    if quiet:
        return
    audio = {"copied": f", audio copied ({stats['audio_codec']})", "none": ", no audio",
             "re-encoded": f", audio re-encoded to AAC (was {stats['audio_codec']})"}[stats["audio"]] if out else ""
    where = " and ".join(p for p in (stats["out"], stats["frames_dir"] and f"{stats['frames_dir']}/ (PNG)") if p)
    console.print(
        f"wrote {where}: {stats['frames']} frames at {stats['fps_rational']} fps ({stats['duration']:.2f} s), "
        f"{stats['masks']} masks held by {stats['hold']}{audio}, in {stats['seconds']:.1f} s", markup=False)
