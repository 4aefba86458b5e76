"""``avseg render``: draw an ``avseg run`` mask folder over its video (flags map one to one onto render_video)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer


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
) -> None:
    """Draw the sounding-object masks over every frame of VIDEO and encode an MP4 (or PNG frames)."""
    from rich.console import Console

    from avsegcli.render import render_video

    stats = render_video(video, masks_dir, out, hold=hold.value, alpha=alpha, contour=contour, side_by_side=side_by_side,
                         timestamp=timestamp, audio_bar=audio_bar, frames_dir=frames, progress=progress, crf=crf)
    audio = {"copied": f", audio copied ({stats['audio_codec']})", "none": ", no audio",
             "re-encoded": f", audio re-encoded to AAC (was {stats['audio_codec']})"}[stats["audio"]] if out else ""
    where = " and ".join(p for p in (stats["out"], stats["frames_dir"] and f"{stats['frames_dir']}/ (PNG)") if p)
    Console(highlight=False, soft_wrap=True).print(
        f"wrote {where}: {stats['frames']} frames at {stats['fps_rational']} fps ({stats['duration']:.2f} s), "
        f"{stats['masks']} masks held by {stats['hold']}{audio}, in {stats['seconds']:.1f} s", markup=False)
