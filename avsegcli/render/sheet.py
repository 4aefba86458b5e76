"""A contact sheet: every sampled frame of a video with its mask, in one PNG grid (``avseg render --sheet``).

Each tile is the frame the mask was made from (source frame ``frame_index`` of ``meta.json``), with the mask drawn
as :func:`avsegcli.render.draw.draw_overlay` draws it (fill + contour, AVSS palette colours), scaled to
``tile_width`` pixels, and a caption under it: the timestamp (``mm:ss.ss``) and the source frame number. Tiles run
left to right, top to bottom in time order. Semantic masks get one legend strip at the bottom listing every class
present anywhere in the sheet. Frames are decoded in small windows, so memory holds the sheet, not the video.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from avsegcli.errors import AvsegError
from avsegcli.media.probe import probe
from avsegcli.media.sampling import check_window, in_window
from avsegcli.media.video import VideoSource
from avsegcli.palette import AVSS_CLASS_NAMES, voc_palette
from avsegcli.render.draw import class_name, draw_overlay, font, format_time, prepare_mask
from avsegcli.render.timeline import check_match, open_masks

BACKGROUND = (24, 24, 24)
GAP = 4  # pixels between tiles and around the sheet
MAX_PIXELS = 150_000_000  # refuse sheets above this (450 MB of RGB): a long video needs smaller tiles or a window
_PALETTE = voc_palette(256)


def default_columns(n: int, tile_w: int, tile_h: int) -> int:
    """About a 4:3 sheet: ``ceil(sqrt(n * 4/3 * tile_h / tile_w))`` columns, at most ``n``."""
    return max(1, min(n, math.ceil(math.sqrt(n * (4 / 3) * tile_h / max(1, tile_w)))))


def _legend_rows(classes: list[int], names: list[str], width: int, size: int) -> list[list[tuple[int, str]]]:
    """Greedy line wrapping of ``swatch name`` items into rows no wider than ``width``."""
    fnt = font(size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows: list[list[tuple[int, str]]] = [[]]
    used = GAP
    for c, n in zip(classes, names):
        w = size + 4 + int(draw.textlength(n, font=fnt)) + 3 * GAP
        if rows[-1] and used + w > width:
            rows.append([])
            used = GAP
        rows[-1].append((c, n))
        used += w
    return rows if rows[0] else []


def contact_sheet(video: str | Path, masks_dir: str | Path, out: str | Path, *, columns: int | None = None,
                  tile_width: int = 240, alpha: float = 0.5, start: float | None = None,
                  end: float | None = None) -> dict[str, Any]:
    """Write ``out`` (PNG): one tile per saved mask of ``masks_dir`` (an ``avseg run`` folder of ``video``).

    ``start``/``end`` (seconds) keep the masks with ``start <= t < end``. Returns ``out``, ``tiles``,
    ``columns``, ``rows``, ``size`` (``[W, H]``), ``tile`` (``[w, h]`` of a tile's picture), ``boxes`` (one
    ``[x0, y0, x1, y1]`` per tile picture, in time order), ``timestamps``, ``frame_indices``, ``legend`` (names).
    """
    check_window(start, end)
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise AvsegError("the contact sheet is a PNG: give a file name ending in .png", path=out)
    if not out.parent.is_dir():
        raise AvsegError("output folder does not exist", path=out.parent)
    info = probe(video)
    if not info.has_video:
        raise AvsegError("has no video stream", path=video)
    track = open_masks(masks_dir)
    check_match(track, video, info.num_frames, info.size, np.asarray(info.frame_times, dtype=np.float64))
    order = np.argsort(track.timestamps, kind="stable")
    rows_kept = order[in_window(track.timestamps[order], start, end)]
    n = int(rows_kept.size)
    if n == 0:
        raise AvsegError("no sampled frame in the time window", path=masks_dir)
    h, w = track.size
    tile_w = int(max(16, tile_width))
    tile_h = max(1, round(h * tile_w / w))
    size = max(10, tile_w // 16)
    cap_h = size + 2 * GAP
    cols = int(columns) if columns else default_columns(n, tile_w, tile_h + cap_h)
    nrows = math.ceil(n / cols)
    names = list(track.meta.get("class_names") or AVSS_CLASS_NAMES)
    sheet_w = GAP + cols * (tile_w + GAP)
    grid_h = GAP + nrows * (tile_h + cap_h + GAP)
    if sheet_w * grid_h > MAX_PIXELS:
        raise AvsegError(f"a sheet of {n} tiles {tile_w} px wide would be {sheet_w}x{grid_h} px; use a smaller "
                         "--tile-width or a --start/--end window", path=masks_dir)

    canvas = np.empty((grid_h, sheet_w, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    boxes: list[list[int]] = []
    present: set[int] = set()
    fnt = font(size)
    with VideoSource(video) as src:
        for sl, frames in src.iter_windows(track.frame_indices[rows_kept], 16):
            for k, frame in zip(range(sl.start, sl.stop), frames):
                row = int(rows_kept[k])
                mask = track.get(row)
                if track.semantic:
                    present.update(int(c) for c in np.unique(mask) if c != 0)
                layer = prepare_mask(mask, semantic=track.semantic, class_names=names)
                img, _ = draw_overlay(frame, layer, alpha=alpha, legend=False)
                tile = np.asarray(Image.fromarray(img).resize((tile_w, tile_h), Image.BILINEAR))
                r, c = divmod(k, cols)
                x0, y0 = GAP + c * (tile_w + GAP), GAP + r * (tile_h + cap_h + GAP)
                canvas[y0:y0 + tile_h, x0:x0 + tile_w] = tile
                boxes.append([x0, y0, x0 + tile_w, y0 + tile_h])
    sheet = Image.fromarray(canvas)
    draw = ImageDraw.Draw(sheet)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        row = int(rows_kept[k])
        caption = f"{format_time(track.timestamps[row])}  #{int(track.frame_indices[row])}"
        draw.text((x0, y1 + GAP), caption, font=fnt, fill=(235, 235, 235), anchor="lt")

    legend = [class_name(c, names) for c in sorted(present)]
    if legend:
        lrows = _legend_rows(sorted(present), legend, sheet_w, size)
        band = Image.new("RGB", (sheet_w, GAP + len(lrows) * (size + GAP)), BACKGROUND)
        bd = ImageDraw.Draw(band)
        for i, items in enumerate(lrows):
            x, y = GAP, GAP + i * (size + GAP)
            for cls, name in items:
                bd.rectangle([x, y, x + size - 1, y + size - 1], fill=tuple(int(v) for v in _PALETTE[cls]),
                             outline=(255, 255, 255))
                bd.text((x + size + 4, y + size // 2), name, font=fnt, fill=(235, 235, 235), anchor="lm")
                x += size + 4 + int(bd.textlength(name, font=fnt)) + 3 * GAP
        full = Image.new("RGB", (sheet_w, grid_h + band.height), BACKGROUND)
        full.paste(sheet, (0, 0))
        full.paste(band, (0, grid_h))
        sheet = full
    tmp = out.with_name(f".{out.stem}.partial.png")
    try:
        sheet.save(tmp, optimize=False)
        os.replace(tmp, out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise AvsegError(f"cannot write the sheet ({err.strerror or err})", path=out) from None
    return {"out": str(out), "tiles": n, "columns": cols, "rows": nrows, "size": [sheet.width, sheet.height],
            "tile": [tile_w, tile_h], "boxes": boxes, "legend": legend,
            "timestamps": [float(track.timestamps[r]) for r in rows_kept],
            "frame_indices": [int(track.frame_indices[r]) for r in rows_kept]}
