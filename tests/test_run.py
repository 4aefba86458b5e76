"""``avseg run`` end to end on generated videos with the tiny preset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import avsegcli
from avsegcli.errors import CheckpointError
from avsegcli.masks.io import read_masks_dir
from avsegcli.run.plan import collect_inputs, output_stems
from conftest import run_cli
from media_gen import make_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "good1.mp4", seconds=3, fps=25, size=(96, 64), tone_hz=440)
    make_video(root / "good2.mkv", seconds=4, fps=30, size=(80, 60), tone_hz=880, channels=2, sample_rate=44100)
    make_video(root / "sub" / "good3.mov", seconds=2, fps=24, size=(64, 96), tone_hz=300)
    make_video(root / "silent.mp4", seconds=3, fps=25, size=(96, 64), audio=False)
    data = (root / "good1.mp4").read_bytes()
    (root / "corrupt.mp4").write_bytes(data[: len(data) // 3])
    return root


def test_folder_with_bad_and_silent_videos(videos, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", videos, "--out", out, "--weights", tiny_ckpt, "--batch-size", "4", "--workers", "1")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    status = {Path(v["path"]).name: v["status"] for v in summary["videos"]}
    assert status == {"corrupt.mp4": "failed", "good1.mp4": "done", "good2.mkv": "done", "good3.mov": "done", "silent.mp4": "done"}
    assert summary["counts"] == {"done": 4, "skipped": 0, "failed": 1}
    failed_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(failed_lines) == 1 and "corrupt.mp4" in failed_lines[0]
    assert not (out / "corrupt").exists() and not (out / ".corrupt.partial").exists()

    meta = json.loads((out / "silent" / "meta.json").read_text())
    assert meta["has_audio"] is False and any("audio" in w for w in meta["warnings"])
    meta1 = json.loads((out / "good1" / "meta.json").read_text())
    assert meta1["has_audio"] is True and meta1["width"] == 96 and meta1["height"] == 64
    assert [f["frame_index"] for f in meta1["frames"]] == [23, 48, 73]  # the benchmark's frame of each second
    assert meta1["model"]["sha256"] and meta1["model"]["preset"] == "tiny"
    masks = read_masks_dir(out / "good3")
    assert masks.masks.shape == (2, 96, 64) and set(np.unique(masks.masks)) <= {0, 1}
    png = (out / "good3" / meta["frames"][0]["file"]).name
    assert png.endswith(".png") and len(png) == len("000023.png")


def test_masks_equal_predictor_and_batch_size_independent(videos, tiny_ckpt, tmp_path):
    pred = avsegcli.Predictor(tiny_ckpt, device="cpu", batch_size=1)
    direct = pred.predict_video(videos / "good2.mkv")
    pred.batch_size = 32
    assert np.array_equal(pred.predict_video(videos / "good2.mkv").masks, direct.masks)
    assert direct.masks.shape == (4, 60, 80)
    assert list(direct.frame_indices) == [28, 58, 88, 118]  # int(l*30 + 15/16*30)
    assert np.allclose(direct.timestamps, direct.frame_indices / 30, atol=1e-3)  # mkv stores milliseconds

    for bs, fmt in (("1", "png"), ("32", "npz")):
        out = tmp_path / f"out{bs}"
        proc = run_cli("run", videos / "good2.mkv", videos / "good1.mp4", "--out", out, "--weights", tiny_ckpt,
                       "--batch-size", bs, "--workers", "0", "--format", fmt, "--quiet")
        assert proc.returncode == 0, proc.stderr
        saved = read_masks_dir(out / "good2")
        assert np.array_equal(saved.masks, direct.masks), f"batch size {bs}"
        assert np.array_equal(saved.frame_indices, direct.frame_indices)


def _published(out: Path) -> set[str]:
    """Finished video folders: ``<stem>/meta.json`` (a hidden ``.<stem>.partial`` folder is not one, even once
    its meta.json is written just before the rename)."""
    return {p.parent.name for p in out.glob("*/meta.json") if not p.parent.name.startswith(".")}


def _mask_files(folder: Path) -> dict[str, bytes]:
    """Every file of a video's output folder but meta.json (which holds timings), as bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "meta.json"}


def test_interrupted_run_resumes(videos, tiny_ckpt, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(6):  # two different videos, alternating, so a mix-up between outputs would show
        src = videos / ("good1.mp4" if i % 2 == 0 else "good2.mkv")
        os.link(src, many / f"clip{i}{src.suffix}")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "avsegcli", "run", str(many), "--out", str(out), "--weights", str(tiny_ckpt),
            "--batch-size", "1", "--workers", "0", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not _published(out):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _published(out)
    assert 1 <= len(done_before) < 6, done_before
    for folder in out.iterdir():  # no published folder lacks a mask
        if folder.is_dir() and not folder.name.startswith("."):
            ms = read_masks_dir(folder)
            assert len(ms.masks) == (3 if int(folder.name[4:]) % 2 == 0 else 4), folder.name

    proc2 = run_cli("run", many, "--out", out, "--weights", tiny_ckpt, "--workers", "0", "--json")
    assert proc2.returncode == 0, proc2.stderr
    summary = json.loads(proc2.stdout)
    status = {v["stem"]: v["status"] for v in summary["videos"]}
    assert {s for s, st in status.items() if st == "skipped"} == done_before
    assert {s for s, st in status.items() if st == "done"} == {f"clip{i}" for i in range(6)} - done_before
    assert not list(out.glob(".*.partial"))

    # the killed-then-resumed outputs equal an uninterrupted run's, byte for byte
    clean = tmp_path / "clean"
    proc3 = run_cli("run", many, "--out", clean, "--weights", tiny_ckpt, "--batch-size", "1", "--workers", "0", "--quiet")
    assert proc3.returncode == 0, proc3.stderr
    assert _published(clean) == _published(out) == {f"clip{i}" for i in range(6)}
    for i in range(6):
        a, b = out / f"clip{i}", clean / f"clip{i}"
        assert _mask_files(a) == _mask_files(b), f"clip{i}"
        assert json.loads((a / "meta.json").read_text())["frames"] == json.loads((b / "meta.json").read_text())["frames"]
    assert _mask_files(clean / "clip0") != _mask_files(clean / "clip1")


def test_inputs_list_and_usage_errors(videos, tiny_ckpt, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# my videos\n{videos / 'good1.mp4'}\n\n{videos / 'sub' / 'good3.mov'}\n")
    paths = collect_inputs([f"@{lst}", str(videos / "good1.mp4")])
    assert [p.name for p in paths] == ["good1.mp4", "good3.mov"]
    assert output_stems([Path("a/x.mp4"), Path("b/x.mp4")]) == ["x", "x-2"]
    assert [p.name for p in collect_inputs([str(videos)], glob="*.mov")] == ["good3.mov"]

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("run", empty, "--out", tmp_path / "o", "--weights", tiny_ckpt)
    assert proc.returncode == 2 and "no videos found" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("run", videos / "good1.mp4", "--out", tmp_path / "o", "--weights", tmp_path / "nope.pth")
    assert proc.returncode == 2 and "nope.pth" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("run", videos / "missing.mp4", videos / "good1.mp4", "--out", tmp_path / "o2", "--weights", tiny_ckpt, "--quiet")
    assert proc.returncode == 1 and "missing.mp4" in proc.stderr
    assert (tmp_path / "o2" / "good1" / "meta.json").is_file()


def test_no_weights_names_where_to_put_them(monkeypatch, tmp_path):
    """Without --weights and without the bundled file, the error says where to put a checkpoint."""
    import avsegcli.inference.predictor as predictor

    monkeypatch.setattr(predictor, "REPO_WEIGHTS", tmp_path / "weights")
    with pytest.raises(CheckpointError) as err:
        predictor.Predictor(None, device="cpu")
    assert "no --weights given" in str(err.value) and "AVSegFormer_res50_s4.pth" in str(err.value)


def test_run_with_render(videos, tiny_ckpt, tmp_path):
    import decord

    out = tmp_path / "out"
    proc = run_cli("run", videos / "good1.mp4", "--out", out, "--weights", tiny_ckpt, "--workers", "0", "--render", "--quiet")
    assert proc.returncode == 0, proc.stderr
    overlay = out / "good1" / "overlay.mp4"
    assert overlay.is_file() and (out / "good1" / "meta.json").is_file()
    src, vid = decord.VideoReader(str(videos / "good1.mp4")), decord.VideoReader(str(overlay))
    assert len(vid) == len(src) and abs(vid.get_avg_fps() - src.get_avg_fps()) < 1e-6

    # the original sound is in the overlay: same codec (copied), same samples once decoded
    from avsegcli import media
    from avsegcli.render import draw_overlay

    info = media.probe(overlay)
    assert info.has_audio and info.audio_streams[0].codec == media.probe(videos / "good1.mp4").audio_streams[0].codec
    a_src, a_out = media.load_audio(videos / "good1.mp4"), media.load_audio(overlay)
    n = min(len(a_src), len(a_out))
    assert n > 2.9 * 16000 and abs(len(a_src) - len(a_out)) < 0.05 * 16000
    assert np.abs(a_src[:n] - a_out[:n]).max() < 1e-3, "the overlay's sound is not the source's"

    # the masks of the run are what is drawn: frame i shows the mask of second floor(i / 25), alpha 0.5, contour
    masks = read_masks_dir(out / "good1").masks
    assert 0 < masks.mean() < 1, masks.mean()  # something to see (measured: the tiny model's masks are partial)
    frames_src, frames_out = src.get_batch(list(range(len(src)))).asnumpy(), vid.get_batch(list(range(len(vid)))).asnumpy()
    for i in (0, 30, 60, 74):
        want, _ = draw_overlay(frames_src[i], masks[i // 25])
        err = np.abs(frames_out[i].astype(np.float32) - want.astype(np.float32)).mean()
        bare = np.abs(frames_out[i].astype(np.float32) - frames_src[i].astype(np.float32)).mean()
        wrong = np.abs(frames_out[i].astype(np.float32) - draw_overlay(frames_src[i], 1 - masks[i // 25])[0]).mean()
        # mean abs difference per pixel value, measured 12.3-14.3 with the right mask (4:2:0 chroma of a 96x64
        # testsrc2 overlay; 11 even at crf 0), 45-49 against the bare frame, 65-70 with the inverted mask
        assert err < 20 and err < bare / 3 and err < wrong / 4, (i, err, bare, wrong)
