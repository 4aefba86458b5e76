"""Hostile inputs and rough handling (issue 14): one clear line per failure, no stray processes, no lost or
mixed outputs. Media are generated (tests/media_gen.py); the model is the tiny preset."""

from __future__ import annotations

import errno
import hashlib
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
from avsegcli.masks.io import read_masks_dir
from avsegcli.media.video import VideoSource
from conftest import run_cli
from media_gen import FFMPEG, make_video


@pytest.fixture(scope="module")
def predictor(tiny_ckpt):
    return avsegcli.Predictor(tiny_ckpt, device="cpu", batch_size=8)


def _faststart(src: Path, dst: Path) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(src), "-c", "copy", "-movflags", "+faststart", str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Good-but-unusual videos (decode through ffmpeg where decord cannot) and broken inputs of every kind."""
    d = tmp_path_factory.mktemp("corpus")
    f = {
        "good": make_video(d / "good.mp4", seconds=2, fps=25, size=(64, 48)),
        "av1_mp4": make_video(d / "av1.mp4", seconds=2, fps=25, size=(64, 48), video_codec="libaom-av1",
                              extra=("-cpu-used", "8")),
        "av1_mkv": make_video(d / "av1.mkv", seconds=2, fps=25, size=(64, 48), video_codec="libsvtav1", audio=False,
                              extra=("-preset", "12")),
        "theora": make_video(d / "theora.ogv", seconds=2, fps=25, size=(64, 48), video_codec="libtheora", audio=False),
        "tiny16": make_video(d / "tiny16.mp4", seconds=2, fps=25, size=(16, 16)),
    }
    fs = _faststart(f["good"], d / "fs.tmp.mp4")
    data = fs.read_bytes()
    fs.unlink()
    start = data.find(b"mdat") + 4
    third = (len(data) - start) // 3
    damaged = bytearray(data)  # index first, random bytes over the middle third of the media data
    damaged[start + third:start + 2 * third] = np.random.default_rng(0).integers(0, 256, third, dtype=np.uint8).tobytes()
    f["damaged"] = d / "damaged.mp4"
    f["damaged"].write_bytes(bytes(damaged))
    f["truncated"] = d / "truncated.mp4"  # index first, cut: the index names packets that are not there
    f["truncated"].write_bytes(data[: len(data) * 2 // 3])
    plain = f["good"].read_bytes()
    f["cut"] = d / "cut.mp4"  # index last, cut: no index at all
    f["cut"].write_bytes(plain[: len(plain) // 2])
    f["random"] = d / "random.mp4"
    f["random"].write_bytes(np.random.default_rng(1).integers(0, 256, 30000, dtype=np.uint8).tobytes())
    f["empty"] = d / "empty.mkv"
    f["empty"].write_bytes(b"")
    f["text"] = d / "notes.webm"
    f["text"].write_text("not a video\n" * 50)
    f["odd_name"] = d / "two\nlines :smile:.mp4"  # still one error line, printed as written
    f["odd_name"].write_text("not a video either\n" * 50)
    mkv = make_video(d / "unknown_tmp.mkv", seconds=1, fps=25, size=(64, 48), audio=False).read_bytes()
    (d / "unknown_tmp.mkv").unlink()
    f["unknown"] = d / "unknown.mkv"  # a Matroska codec id no decoder knows
    f["unknown"].write_bytes(mkv.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/QQQ"))
    f["loop_a"], f["loop_b"], f["broken"] = d / "loop_a.mp4", d / "loop_b.mp4", d / "broken.mp4"
    os.symlink("loop_b.mp4", f["loop_a"])
    os.symlink("loop_a.mp4", f["loop_b"])
    os.symlink("nowhere.mp4", f["broken"])
    return f


def _hashes(folder: Path, skip: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and skip not in p.parents}


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("error: ") for ln in lines), stderr  # no decoder log, no warnings, no internals
    return lines


# ---- one run over a folder of hostile files ------------------------------------------------------------------

REASONS = {  # input -> words its one error line must contain
    "damaged": "damaged at frame 10 of 50", "truncated": "truncated or corrupt", "cut": "truncated/corrupt",
    "random": "truncated/corrupt", "empty": "empty (0 bytes)", "text": "not a media file",
    "unknown": "unsupported video codec", "loop_a": "symbolic link loop", "loop_b": "symbolic link loop",
    "broken": "broken symbolic link", "odd_name": "not a media file",
}
DECODED = ("good", "av1_mp4", "av1_mkv", "theora", "tiny16")  # decord cannot do the last four alone


def test_hostile_folder(corpus, tiny_ckpt, tmp_path):
    root = corpus["good"].parent
    out = root / "out"
    stale = out / "earlier" / "overlay.mp4"  # our own outputs inside the scanned folder: never inputs
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(corpus["good"].read_bytes())
    old_run = root / "old_out" / "good"  # an avseg output folder elsewhere in the tree (an earlier --out)
    old_run.mkdir(parents=True, exist_ok=True)
    (old_run / "overlay.mp4").write_bytes(corpus["good"].read_bytes())
    (old_run / "meta.json").write_text(json.dumps({"avseg_version": "0", "frames": []}))
    cmd_loop = tmp_path / "self.mp4"
    os.symlink("self.mp4", cmd_loop)
    before = _hashes(root, out)

    proc = run_cli("run", cmd_loop, root, tmp_path / "missing.mp4", "--out", out, "--weights", tiny_ckpt,
                   "--workers", "1", "--quiet", "--json")
    assert proc.returncode == 1
    lines = _error_lines(proc.stderr)
    summary = json.loads(proc.stdout)
    status = {v["path"]: v for v in summary["videos"]}
    bad = {str(corpus[k]): words for k, words in REASONS.items()}
    bad[str(cmd_loop)] = "symbolic link loop"
    bad[str(tmp_path / "missing.mp4")] = "file not found"
    assert len(lines) == len(bad)  # exactly one line per bad input
    for path, words in bad.items():
        mine = [ln for ln in lines if ln.startswith(f"error: {path}: ".replace("\n", "\\n"))]
        assert len(mine) == 1 and words in mine[0], (path, mine)
        assert status[path]["status"] == "failed"
    assert set(status) == set(bad) | {str(corpus[k]) for k in DECODED}  # nothing from out/ or old_out/
    for k in DECODED:
        v = status[str(corpus[k])]
        assert v["status"] == "done", v
        masks = read_masks_dir(out / v["stem"])
        n = 2 if k != "theora" else len(masks.frame_indices)
        assert len(masks.masks) == n and masks.masks.shape[1:] == ((16, 16) if k == "tiny16" else (48, 64))
        if k.startswith("av1"):
            assert masks.frame_indices.tolist() == [23, 48]  # the benchmark rule, as decord would number them
    assert _hashes(root, out) == before  # inputs untouched
    published = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert published == {status[str(corpus[k])]["stem"] for k in DECODED} | {"earlier"}
    assert not list(out.glob(".*.partial"))


# ---- the ffmpeg fallback gives decord's frames ---------------------------------------------------------------

def test_ffmpeg_fallback_matches_decord(corpus, predictor, monkeypatch):
    good = corpus["good"]
    with VideoSource(good, decoder="decord") as a, VideoSource(good, decoder="ffmpeg") as b:
        assert (a.backend, b.backend) == ("decord", "ffmpeg")
        assert a.num_frames == b.num_frames == 50 and a.frame_size == b.frame_size == (48, 64)
        np.testing.assert_allclose(a.frame_times, b.frame_times, atol=1e-6)
        assert a.fps == pytest.approx(b.fps)
        idx = [0, 23, 48, 3, 3, 49]  # any order, repeats; going back restarts ffmpeg
        assert np.array_equal(a.get(idx), b.get(idx))
    monkeypatch.setenv("AVSEG_VIDEO_DECODER", "decord")
    ref = predictor.predict_video(good, fps=2)
    monkeypatch.setenv("AVSEG_VIDEO_DECODER", "ffmpeg")
    alt = predictor.predict_video(good, fps=2)
    assert alt.frame_indices.tolist() == ref.frame_indices.tolist() and len(ref.frame_indices) == 4
    assert np.array_equal(alt.masks, ref.masks)
    monkeypatch.delenv("AVSEG_VIDEO_DECODER")
    with VideoSource(corpus["tiny16"]) as s:  # decord indexes it but cannot copy a 16x16 frame out
        assert s.backend == "ffmpeg" and s.get([0, 49]).shape == (2, 16, 16, 3)


# ---- usage errors: one line, exit 2, before any work ---------------------------------------------------------

def _main(monkeypatch, capsys, *args) -> tuple[int, str]:
    from avsegcli.cli import main

    monkeypatch.setattr(sys, "argv", ["avseg", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 KiB tmpfs at tmp_path/mnt (root only): yields (mountpoint, remount(options))."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")

    def remount(opts: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True)

    try:
        yield mnt, remount
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_usage_errors(corpus, tiny_ckpt, tmp_path, monkeypatch, capsys):
    good = corpus["good"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--fps", "nan"], "--fps"), (["--fps", "inf"], "--fps"), (["--fps", "-1"], "--fps"),
        (["--batch-size", "0"], "--batch-size"), (["--workers", "-2"], "--workers"),
    ]
    for extra, words in cases:
        out = tmp_path / "never"
        code, err = _main(monkeypatch, capsys, "run", good, "--out", out, "--weights", tiny_ckpt, *extra)
        assert code == 2 and len(_error_lines(err)) == 1 and words in err, (extra, err)
        assert not out.exists()  # validated before any work
    for out, words in ((a_file, "--out must be a folder, but this is a file"),
                       (a_file / "sub", "cannot create the output folder (a part of the path is a file")):
        code, err = _main(monkeypatch, capsys, "run", good, "--out", out, "--weights", tiny_ckpt)
        lines = _error_lines(err)
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {out}: {words}"), err
    assert a_file.read_text() == "x"


def test_read_only_out(corpus, tiny_ckpt, monkeypatch, capsys, tmpfs):
    mnt, remount = tmpfs
    remount("ro")
    for out, words in ((mnt, "cannot write into the output folder (read-only file system)"),
                       (mnt / "new", "cannot create the output folder (read-only file system)")):
        code, err = _main(monkeypatch, capsys, "run", corpus["good"], "--out", out, "--weights", tiny_ckpt)
        assert code == 2 and _error_lines(err) == [f"error: {out}: {words}"], err


# ---- disk full / read-only during the run: that video fails cleanly, resumable -----------------------------

def test_disk_full_then_resume(corpus, predictor, tmpfs):
    from avsegcli.run.local import run_videos

    mnt, remount = tmpfs
    out = mnt / "out"
    res = run_videos(predictor, [corpus["good"]], out, workers=0, fps=10)  # 20 PNGs of 4 KiB pages > 64 KiB
    assert res[0].status == "failed" and "no space left on device" in res[0].reason and "\n" not in res[0].reason
    assert not [p for p in out.iterdir() if p.name != ".avseg-locks"]  # nothing published, no .partial kept
    remount("size=2m")  # space is back: the same command finishes it
    res = run_videos(predictor, [corpus["good"]], out, workers=0, fps=10)
    assert res[0].status == "done" and len(read_masks_dir(out / "good").masks) == 20


def test_read_only_during_run(corpus, predictor, tmp_path, monkeypatch):
    import avsegcli.masks.io as maskio
    from avsegcli.run.local import run_videos

    real = maskio.save_mask_png

    def save(path, mask, semantic):  # the file system turns read-only under the first video
        if "good" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real(path, mask, semantic)

    monkeypatch.setattr(maskio, "save_mask_png", save)
    out = tmp_path / "out"
    res = run_videos(predictor, [corpus["good"], corpus["tiny16"]], out, workers=0, fps=1)
    assert [r.status for r in res] == ["failed", "done"]
    assert "read-only file system" in res[0].reason
    assert not (out / "good").exists() and not (out / ".good.partial").exists()
    assert len(read_masks_dir(out / "tiny16").masks) == 2


# ---- resume knows which video a folder was made from ---------------------------------------------------------

def test_resume_identity(corpus, predictor, tmp_path):
    from avsegcli.run.local import run_videos

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    first = tmp_path / "a" / "clip.mp4"
    first.write_bytes(corpus["good"].read_bytes())
    other = tmp_path / "b" / "clip.mp4"  # same stem, another video
    other.write_bytes(corpus["tiny16"].read_bytes())
    out = tmp_path / "out"
    assert run_videos(predictor, [first], out, workers=0)[0].status == "done"
    meta = json.loads((out / "clip" / "meta.json").read_text())
    assert meta["source_identity"]["size"] == first.stat().st_size
    r = run_videos(predictor, [other], out, workers=0)[0]
    assert r.status == "failed" and "different video" in r.reason and "--overwrite" in r.reason
    assert read_masks_dir(out / "clip").masks.shape[1:] == (48, 64)  # the first video's masks are kept
    copy = tmp_path / "c" / "clip.mp4"  # the same content elsewhere counts as done
    copy.write_bytes(first.read_bytes())
    assert run_videos(predictor, [copy], out, workers=0)[0].status == "skipped"
    assert run_videos(predictor, [other], out, workers=0, overwrite=True)[0].status == "done"
    assert read_masks_dir(out / "clip").masks.shape[1:] == (16, 16)
    meta = json.loads((out / "clip" / "meta.json").read_text())
    del meta["source_identity"]  # a folder written before identities: done by path only
    (out / "clip" / "meta.json").write_text(json.dumps(meta))
    assert run_videos(predictor, [other], out, workers=0)[0].status == "skipped"
    assert run_videos(predictor, [first], out, workers=0)[0].status == "failed"


# ---- processes -------------------------------------------------------------------------------------------------

def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            parents[int(stat_file.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parents.items() if pp == p}
        todo += list(kids - found)
        found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _workers(pid: int) -> set[int]:
    found = set()
    for k in _descendants(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes():
                found.add(k)
        except OSError:
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_worker_crash_then_sigkill_leaves_no_process(corpus, tiny_ckpt, tmp_path):
    """A decode worker that crashes is replaced; SIGKILL of the run then leaves no child alive 5 s later."""
    many = tmp_path / "many"
    many.mkdir()
    for i in range(6):
        os.link(corpus["good"], many / f"v{i}.mp4")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "avsegcli", "run", str(many), "--out", str(out), "--weights", str(tiny_ckpt),
            "--fps", "0", "--batch-size", "2", "--workers", "2", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120

    def wait_for(cond) -> None:
        while time.time() < deadline and proc.poll() is None and not cond():
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the test could act"

    wait_for(lambda: len(_workers(proc.pid)) >= 2 and bool(list(out.glob(".*.partial"))))
    first = _workers(proc.pid)
    kids = _descendants(proc.pid)
    os.kill(min(first), signal.SIGSEGV)  # a decoder crash in one worker
    wait_for(lambda: bool(_workers(proc.pid) - first))  # ...and a new worker takes over
    kids |= _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    while time.time() - t0 < 5 and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "children outlived the killed run by more than 5 s"
    assert not [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")
                and not (p / "meta.json").is_file()]  # nothing half-written was published


def test_two_runs_at_once(corpus, predictor, tiny_ckpt, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    names = ["good", "theora", "tiny16"]
    for k in names:
        os.link(corpus[k], many / corpus[k].name)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "avsegcli", "run", str(many), "--out", str(out), "--weights", str(tiny_ckpt),
            "--workers", "0", "--json"]
    runs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done: dict[str, int] = {}
    for p in runs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0 and "Traceback" not in stderr and not stderr.strip(), stderr
        for v in json.loads(stdout)["videos"]:
            assert v["status"] in ("done", "skipped"), v
            done[v["stem"]] = done.get(v["stem"], 0) + (v["status"] == "done")
    assert sorted(done.values()) == [1, 1, 1]  # each video done by exactly one run, none twice
    assert not list(out.glob(".*.partial"))
    for k in names:  # the shared outputs equal what one run (the library) gives
        ref = predictor.predict_video(corpus[k])
        saved = read_masks_dir(out / corpus[k].stem)
        assert np.array_equal(saved.frame_indices, ref.frame_indices) and np.array_equal(saved.masks, ref.masks)
        assert json.loads((out / corpus[k].stem / "meta.json").read_text())["source_identity"]["size"] == corpus[k].stat().st_size
