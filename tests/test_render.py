"""avseg render: hold rules, drawing, encoding (frames, fps, audio), PNG frames, mismatch errors, the sample image.

``python tests/test_render.py`` regenerates ``samples/overlay_example.png``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from avsegcli import media
from avsegcli.errors import AvsegError
from avsegcli.masks.io import VideoMaskWriter
from avsegcli.palette import voc_palette
from avsegcli.render import BINARY_COLOUR, audio_rms, draw_overlay, frame_to_mask, open_masks, render_video
from avsegcli.render.draw import level_fraction
from media_gen import cached

W, H, FPS, SECONDS = 96, 64, 25, 3
#: one square per second (x0, x1), all in rows 16..48: second k's mask is square k
SQUARES = [(4, 28), (36, 60), (68, 92)]
ROWS = (16, 48)
PAL = voc_palette(256).astype(np.float32)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """3 s, 25 fps, 96x64 testsrc2 with a 440 Hz tone from 1.0 s (AAC in MP4)."""
    return cached(tmp_path_factory, "render_96x64_3s.mp4", seconds=SECONDS, fps=FPS, size=(W, H), tone_start=1.0)


@pytest.fixture(scope="module")
def source_frames(video) -> np.ndarray:
    with media.VideoSource(video) as src:
        return src.get(np.arange(src.num_frames))


def square(k: int, shape=(H, W), value: int = 1) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[ROWS[0]:ROWS[1], SQUARES[k][0]:SQUARES[k][1]] = value
    return m


def write_masks(video: Path, out_root: Path, *, stem: str = "clip", masks=None, size=(H, W), meta=None,
                semantic: bool = False, fmt: str = "png") -> Path:
    """Masks at the 1-fps sampled frames: square k in second k (or ``masks[k]``), chunk = floor(t)."""
    idx, ts = media.sample_times(media.probe(video), 1)
    writer = VideoMaskWriter(out_root, stem, semantic=semantic, fmt=fmt)
    for k, (i, t) in enumerate(zip(idx, ts)):
        mask = masks[k] if masks is not None else square(k, size)
        writer.add(frame_index=int(i), timestamp=float(t), chunk=int(np.floor(t)), mask=mask)
    return writer.finish({"source": video.name, "size": list(size), "fps": FPS, **(meta or {})})


def blend_expected(frame: np.ndarray, colour, alpha: float) -> np.ndarray:
    return (1 - alpha) * frame.astype(np.float32) + alpha * np.asarray(colour, np.float32)


def interior(k: int, margin: int = 3) -> tuple[slice, slice]:
    return slice(ROWS[0] + margin, ROWS[1] - margin), slice(SQUARES[k][0] + margin, SQUARES[k][1] - margin)


# --- hold rules -------------------------------------------------------------------------------------------------

def test_hold_second_and_nearest():
    frame_times = np.arange(75) / 25.0
    mask_times, chunks = np.array([0.92, 1.92, 2.92]), np.array([0, 1, 2])
    second = frame_to_mask(frame_times, mask_times, chunks, "second")
    assert (second == np.floor(frame_times)).all()  # every frame shows the mask of its own second
    nearest = frame_to_mask(frame_times, mask_times, chunks, "nearest")
    assert nearest[35] == 0 and second[35] == 1  # t = 1.40: 0.92 is nearer, but the frame is in second 1
    assert nearest[0] == 0 and nearest[74] == 2 and nearest[36] == 1  # 1.44 -> 1.92 (the midpoint is 1.42)
    # a second without a mask falls back to the nearest; two masks in one second: the nearer one
    gap = frame_to_mask(np.array([0.1, 1.2, 1.9, 2.5]), np.array([0.5, 2.1, 2.9]), np.array([0, 2, 2]), "second")
    assert gap.tolist() == [0, 0, 1, 1]
    with pytest.raises(AvsegError):
        frame_to_mask(frame_times, mask_times, chunks, "previous")


def test_open_masks_png_and_npz(video, tmp_path):
    tracks = [open_masks(write_masks(video, tmp_path, stem=fmt, fmt=fmt, semantic=True,
                                     masks=[square(k, value=k + 5) for k in range(3)])) for fmt in ("png", "npz")]
    for track in tracks:
        assert track.size == (H, W) and track.semantic and len(track) == 3
        assert track.frame_indices.tolist() == [23, 48, 73] and track.chunks.tolist() == [0, 1, 2]
        assert all((track.get(k) == square(k, value=k + 5)).all() for k in range(3))


# --- drawing ----------------------------------------------------------------------------------------------------

def test_semantic_colours_and_legend():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[70:110, 10:60] = 7     # bird
    mask[70:110, 90:150] = 28   # guitar
    img, names = draw_overlay(frame, mask, semantic=True, alpha=0.6, contour=True)
    assert names == ["bird", "guitar"]
    for cls, (ys, xs) in {7: (slice(73, 107), slice(13, 57)), 28: (slice(73, 107), slice(93, 147))}.items():
        want = blend_expected(frame[ys, xs], PAL[cls], 0.6)
        assert np.abs(img[ys, xs].astype(np.float32) - want).max() <= 1.0
        assert (img[70, xs] == PAL[cls]).all()  # contour in the full class colour
    assert (img[60:68, 60:80] == frame[60:68, 60:80]).all()  # background untouched
    assert not (img[:10, :10] == frame[:10, :10]).all()      # the legend is drawn at the top left
    # legend lists exactly the classes of this frame; none for an empty mask; no legend for binary masks
    mask[70:110, 10:60] = 0
    assert draw_overlay(frame, mask, semantic=True)[1] == ["guitar"]
    empty, none = draw_overlay(frame, np.zeros_like(mask), semantic=True)
    assert none == [] and (empty == frame).all()
    assert draw_overlay(frame, (mask > 0).astype(np.uint8), semantic=False)[1] == []
    out, _ = draw_overlay(frame, mask, semantic=True, legend=False, contour=False, alpha=0.0)
    assert (out == frame).all()


def test_side_by_side_and_decorations():
    frame = np.full((64, 96, 3), 100, np.uint8)
    img, _ = draw_overlay(frame, square(1), side_by_side=True, timestamp=1.5, audio_rms=0.35)
    assert img.shape == (64, 192, 3)
    assert (img[:, :96] == frame).all()  # original on the left
    ys, xs = interior(1)
    assert np.abs(img[ys, 96 + xs.start:96 + xs.stop].astype(np.float32) - blend_expected(frame[ys, xs], BINARY_COLOUR, 0.5)).max() <= 1
    assert not (img[:12, 150:] == 100).all()   # timestamp top right
    assert not (img[50:, 96:130] == 100).all()  # audio bar bottom left
    assert level_fraction(0.0) == 0.0 and level_fraction(1 / np.sqrt(2)) == pytest.approx(1.0)


def test_audio_rms_windows(video):
    t = np.arange(75) / 25.0
    rms = audio_rms(video, t, t + 0.04, channels=1)
    assert rms.shape == (75,)
    assert rms[:24].max() < 0.02                       # silent before 1.0 s
    assert np.allclose(rms[27:74], 0.5 / np.sqrt(2), atol=0.03)  # 0.5-amplitude sine after
    assert audio_rms(video, np.array([10.0]), np.array([10.04]), channels=1)[0] == 0.0  # past the end


# --- rendering --------------------------------------------------------------------------------------------------

def test_render_binary_mp4(video, source_frames, tmp_path):
    masks = write_masks(video, tmp_path / "masks")
    out = tmp_path / "out.mp4"
    seen: list[tuple[int, int]] = []
    stats = render_video(video, masks, out, alpha=0.5, crf=12, preset="fast", progress=lambda d, n: seen.append((d, n)))
    src, got = media.probe(video), media.probe(out)
    assert stats["frames"] == src.num_frames == got.num_frames == 75
    assert stats["fps_rational"] == "25/1" and got.fps == pytest.approx(src.fps)
    assert abs(got.duration - src.duration) <= 1 / FPS
    assert got.has_audio and got.audio_streams[0].codec == "aac" and stats["audio"] == "copied"
    assert seen[-1] == (75, 75)
    assert not list(tmp_path.glob(".*partial*"))
    with media.VideoSource(out) as vs:
        frames = vs.get(np.arange(75)).astype(np.float32)
    sf = source_frames.astype(np.float32)
    for i in range(75):
        k = i // FPS  # hold="second": frame i shows the square of second floor(i / 25)
        ys, xs = interior(k)
        want = blend_expected(source_frames[i][ys, xs], BINARY_COLOUR, 0.5)
        assert np.abs(frames[i][ys, xs] - want).mean() < 6, i  # measured 3.5 (4:2:0 chroma at testsrc2 edges)
        outside = np.ones((H, W), bool)
        outside[ROWS[0] - 3:ROWS[1] + 3, SQUARES[k][0] - 3:SQUARES[k][1] + 3] = False
        assert np.abs(frames[i][outside] - sf[i][outside]).mean() < 6, i


def test_frames_dir_semantic_exact(video, source_frames, tmp_path):
    classes = [7, 28, 41]
    masks = write_masks(video, tmp_path / "masks", semantic=True, masks=[square(k, value=c) for k, c in enumerate(classes)])
    stats = render_video(video, masks, None, frames_dir=tmp_path / "frames", hold="nearest", alpha=0.4, timestamp=True)
    pngs = sorted((tmp_path / "frames").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(75)] and stats["semantic"]
    for i in (0, 30, 35, 36, 74):
        k = 0 if i <= 35 else (1 if i <= 60 else 2)  # nearest of 0.92 / 1.92 / 2.92 (midpoints 1.42, 2.42)
        want, names = draw_overlay(source_frames[i], square(k, value=classes[k]), semantic=True, alpha=0.4,
                                   timestamp=i / FPS)
        assert names == [["bird", "guitar", "man"][k]]
        assert (np.asarray(Image.open(pngs[i])) == want).all(), i


def test_odd_size_side_by_side_reencodes_audio(tmp_path_factory, tmp_path):
    src = cached(tmp_path_factory, "render_95x63_2s.mkv", seconds=2, fps=10, size=(95, 63))  # FLAC audio
    masks = write_masks(src, tmp_path / "masks", masks=[np.ones((63, 95), np.uint8)] * 2, size=(63, 95))
    stats = render_video(src, masks, tmp_path / "sbs.mp4", side_by_side=True, audio_bar=True, preset="ultrafast")
    got = media.probe(tmp_path / "sbs.mp4")
    assert (got.width, got.height) == (190, 64) and stats["size"] == [190, 64]
    assert got.num_frames == 20 and stats["audio"] == "re-encoded" and got.audio_streams[0].codec == "aac"
    assert abs(got.duration - media.probe(src).duration) <= 0.1 + 0.05


def test_cli_render_flags(video, source_frames, tmp_path):
    from typer.testing import CliRunner
    import typer

    from avsegcli.cli import render_cmd

    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("render")(render_cmd.render)
    masks = write_masks(video, tmp_path / "masks")
    res = CliRunner().invoke(app, ["render", str(video), str(masks), "--frames", str(tmp_path / "f"), "--side-by-side",
                                   "--no-contour", "--alpha", "0.3", "--hold", "nearest", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "75 frames at 25/1 fps" in res.output
    assert len(list((tmp_path / "f").glob("*.png"))) == 75
    # each flag reached the drawing: frame i is exactly the side-by-side overlay of the nearest mask (masks at
    # 0.92, 1.92, 2.92 s: frames 0..35 -> 0, 36..60 -> 1, 61.. -> 2), alpha 0.3, no contour
    for i in (0, 24, 35, 36, 60, 61, 74):
        k = 0 if i <= 35 else (1 if i <= 60 else 2)
        got = np.asarray(Image.open(tmp_path / "f" / f"{i:06d}.png"))
        want, _ = draw_overlay(source_frames[i], square(k), alpha=0.3, contour=False, side_by_side=True)
        assert got.shape == (H, 2 * W, 3) and (got == want).all(), i
    got35 = np.asarray(Image.open(tmp_path / "f" / "000035.png"))
    for other in (dict(alpha=0.5, contour=False), dict(alpha=0.3, contour=True)):  # the defaults would differ
        assert not (draw_overlay(source_frames[35], square(0), side_by_side=True, **other)[0] == got35).all(), other
    assert not (draw_overlay(source_frames[35], square(1), alpha=0.3, contour=False, side_by_side=True)[0] == got35).all()
    assert CliRunner().invoke(app, ["render", str(video), str(masks), "--alpha", "2"]).exit_code == 2


# --- masks that do not belong to the video ---------------------------------------------------------------------

@pytest.mark.parametrize("case, reason", [
    ("small", "masks are 32x32 but render_96x64_3s.mp4 is 96x64"),
    ("past_end", "mask for frame 80 but render_96x64_3s.mp4 has 75 frames (0..74)"),
    ("source", "meta.json says these masks are of 'other.mp4', not 'render_96x64_3s.mp4'"),
    ("meta_size", "meta.json says the source is 128x72 but render_96x64_3s.mp4 is 96x64"),
    ("missing", "1 mask file(s) listed in meta.json are missing, e.g. 000048.png"),
    ("times", "frame 23 is at 0.920 s in render_96x64_3s.mp4 but at 0.460 s in meta.json"),
])
def test_mismatch_errors(video, tmp_path, case, reason):
    if case == "small":
        folder = write_masks(video, tmp_path, masks=[np.ones((32, 32), np.uint8)] * 3, size=(32, 32))
    else:
        folder = write_masks(video, tmp_path, meta={"source": "other.mp4"} if case == "source" else
                             {"size": [72, 128]} if case == "meta_size" else None)
        meta = json.loads((folder / "meta.json").read_text())
        if case == "past_end":
            meta["frames"][-1]["frame_index"] = 80
            (folder / meta["frames"][-1]["file"]).rename(folder / "000080.png")
            meta["frames"][-1]["file"] = "000080.png"
        elif case == "missing":
            (folder / "000048.png").unlink()
        elif case == "times":
            for f in meta["frames"]:
                f["timestamp"] /= 2
        (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(AvsegError) as exc:
        render_video(video, folder, tmp_path / "out.mp4")
    assert reason in exc.value.reason and exc.value.path == str(folder)
    assert "\n" not in str(exc.value)


def test_refuses_to_overwrite_source_or_write_nothing(video, tmp_path):
    masks = write_masks(video, tmp_path / "masks")
    with pytest.raises(AvsegError, match="overwrite the source"):
        render_video(video, masks, video)
    with pytest.raises(AvsegError, match="nothing to write"):
        render_video(video, masks)
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*.mp4"))


def test_cli_mismatch_exit_code(video, tmp_path):
    folder = write_masks(video, tmp_path, masks=[np.ones((32, 32), np.uint8)] * 3, size=(32, 32))
    code = ("from avsegcli.cli import app, main, render_cmd; app.command('render')(render_cmd.render); main()")
    proc = subprocess.run([sys.executable, "-c", code, "render", str(video), str(folder), "-o", str(tmp_path / "o.mp4")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}: masks are 32x32"), proc.stderr


# --- the README sample ------------------------------------------------------------------------------------------

def make_sample(path: Path, scale: float = 1.5) -> list[str]:
    """A drawn scene (a man playing guitar beside a dog, a silent sun) with its semantic mask, side by side."""
    h, w = int(240 * scale), int(320 * scale)
    y = np.linspace(0, 1, h)[:, None, None]
    img = ((1 - y) * np.array([70, 130, 215]) + y * np.array([205, 228, 248])).repeat(w, axis=1).astype(np.uint8)
    g0 = int(170 * scale)
    img[g0:] = (np.linspace(0, 1, h - g0)[:, None, None] * np.array([-40, -50, -20])
                + np.array([96, 160, 80])).repeat(w, axis=1).astype(np.uint8)
    scene, labels = Image.fromarray(img), Image.new("L", (w, h), 0)
    parts = [  # (class id, shape, box at 320x240, colour)
        (41, "ellipse", (96, 40, 136, 82), (236, 196, 160)),      # head
        (41, "rectangle", (92, 78, 140, 170), (60, 90, 160)),     # body
        (41, "rectangle", (96, 168, 112, 214), (50, 50, 70)),     # legs
        (41, "rectangle", (120, 168, 136, 214), (50, 50, 70)),
        (28, "ellipse", (100, 118, 150, 160), (190, 120, 50)),    # guitar body
        (28, "rectangle", (146, 128, 200, 136), (120, 80, 40)),   # neck
        (17, "ellipse", (214, 150, 286, 190), (235, 228, 215)),   # dog body
        (17, "ellipse", (268, 128, 298, 158), (235, 228, 215)),   # dog head
        (17, "rectangle", (222, 182, 232, 214), (220, 212, 200)),  # dog legs
        (17, "rectangle", (266, 182, 276, 214), (220, 212, 200)),
    ]
    d_img, d_lab = ImageDraw.Draw(scene), ImageDraw.Draw(labels)
    d_img.ellipse(tuple(int(v * scale) for v in (250, 20, 290, 60)), fill=(255, 220, 90))  # the sun: not sounding
    for cls, shape, box, colour in parts:
        box = tuple(int(v * scale) for v in box)
        getattr(d_img, shape)(box, fill=colour)
        getattr(d_lab, shape)(box, fill=cls)
    out, names = draw_overlay(np.asarray(scene), np.asarray(labels), semantic=True, alpha=0.5, side_by_side=True,
                              timestamp=3.0, audio_rms=0.12)
    Image.fromarray(out).save(path, optimize=True)
    return names


def test_sample_image(tmp_path):
    """The README's sample is what make_sample draws today (pixel for pixel against the committed PNG), and its
    pixels are right: the sounding man blended with his class colour, the silent sun untouched."""
    names = make_sample(tmp_path / "s.png")
    assert names == ["dog", "guitar", "man"]
    assert (tmp_path / "s.png").stat().st_size < 200_000
    got = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))
    committed = Path(__file__).resolve().parents[1] / "samples" / "overlay_example.png"
    assert (got == np.asarray(Image.open(committed).convert("RGB"))).all()
    w = got.shape[1] // 2  # original left, overlay right
    body = (slice(int(90 * 1.5), int(110 * 1.5)), slice(int(95 * 1.5), int(100 * 1.5)))  # inside the man's body
    want = blend_expected(got[body], PAL[41], 0.5)
    right = got[body[0], w + body[1].start:w + body[1].stop].astype(np.float32)
    assert np.abs(right - want).max() <= 1.0
    sun = (slice(int(35 * 1.5), int(45 * 1.5)), slice(int(265 * 1.5), int(275 * 1.5)))
    assert (got[sun[0], w + sun[1].start:w + sun[1].stop] == got[sun]).all() and (got[sun] == (255, 220, 90)).all()


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "samples" / "overlay_example.png"
    print(make_sample(target), target, target.stat().st_size)
