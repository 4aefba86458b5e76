"""VideoMaskWriter holds a bounded amount of host memory whatever the video's length (issue 21, item 5).

Frames are driven straight into a writer (``--format all --save-probs``, AVSS-like semantic probs ``[71, 56, 56]``
float16, 360x640 masks), out of frame order from two threads as ``avseg run``'s post-processing pool does, under
``tracemalloc``: the peak traced memory of the adds and the finish stays far below the bytes of all the masks and
probs (the writer used to keep them all in lists and ``np.stack`` them at the end), and does not grow with the
number of frames. The outputs are still exactly what they were: ``masks.npz`` loads to the same arrays in frame
order, ``masks.json`` is the document :mod:`avsegcli.masks.rle` makes, and no spill file is published.
"""

from __future__ import annotations

import json
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from avsegcli.errors import AvsegError
from avsegcli.masks.io import NPZ, VideoMaskWriter, mask_filename, read_masks_dir
from avsegcli.masks.rle import RLE_FILE, encode_segments, rle_document

H, W = 360, 640
PROBS = (71, 56, 56)
META = {"source": "/videos/long.mp4", "width": W, "height": H, "fps": 25.0, "sample_fps": 1.0, "model": {"preset": "test"}}


def frame_index(k: int) -> int:
    return 25 * k + 7


def make_frame(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``k``'s semantic mask ``[H, W]`` uint8 (a few class rectangles, frame 0 empty) and its probs ``[71, 56, 56]``
    float16 (a softmax-like map, distinct per frame), made the same way whenever asked."""
    mask = np.zeros((H, W), np.uint8)
    if k:
        c = 1 + k % 70
        mask[(k * 7) % 200:(k * 7) % 200 + 120, (k * 13) % 400:(k * 13) % 400 + 200] = c
        mask[200 + k % 100:300 + k % 50, 50:90 + k] = 1 + (c + 11) % 70
    probs = np.full(PROBS, 1e-3, np.float32)
    probs[k % 71] = np.linspace(0.2, 0.9, PROBS[1] * PROBS[2], dtype=np.float32).reshape(PROBS[1:]) * (1 + k / 1000)
    probs[(k + 5) % 71, k % 56] = k / 997
    return mask, probs.astype(np.float16)


def drive(root: Path, n: int, *, fmt: str = "all", threads: int = 2) -> tuple[int, Path]:
    """Add frames ``0..n-1`` shuffled, split over ``threads`` threads, then finish; (tracemalloc peak bytes, folder)."""
    order = np.random.default_rng(n).permutation(n)
    tracemalloc.start()
    try:
        writer = VideoMaskWriter(root, "long", fmt=fmt, semantic=True, save_probs=True)
        tracemalloc.reset_peak()
        errors: list[BaseException] = []
        start = threading.Barrier(threads)

        def work(ks) -> None:
            try:
                start.wait()
                for k in ks:
                    mask, probs = make_frame(int(k))
                    writer.add(frame_index=frame_index(int(k)), timestamp=frame_index(int(k)) / 25, chunk=int(k), mask=mask, probs=probs)
                    del mask, probs
            except BaseException as exc:  # re-raised in the test's thread
                errors.append(exc)

        pool = [threading.Thread(target=work, args=(order[i::threads],)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        if errors:
            raise errors[0]
        folder = writer.finish(META)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, folder


def test_all_with_probs_bounded_memory_and_same_outputs(tmp_path):
    n = 200
    mask_bytes, probs_bytes = H * W, int(np.prod(PROBS)) * 2
    total = n * (mask_bytes + probs_bytes)  # ~135 MB: what the old writer kept (and then copied by np.stack)
    peak, folder = drive(tmp_path, n)
    assert peak < 0.1 * total, f"peak traced memory {peak / 2**20:.1f} MiB for {total / 2**20:.0f} MiB of masks+probs"

    # the published folder: exactly the PNGs, masks.npz, masks.json and meta.json (no spill file, no .partial)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([mask_filename(frame_index(k)) for k in range(n)] + [NPZ, RLE_FILE, "meta.json"])
    assert not (tmp_path / ".long.partial").exists()
    with zipfile.ZipFile(folder / NPZ) as zf:
        assert zf.namelist() == ["masks.npy", "frame_indices.npy", "timestamps.npy", "probs.npy"]

    # masks.npz: exactly the arrays np.savez_compressed was given before, in frame order
    with np.load(folder / NPZ) as data:
        assert sorted(data.files) == ["frame_indices", "masks", "probs", "timestamps"]
        masks, probs, idx, ts = data["masks"], data["probs"], data["frame_indices"], data["timestamps"]
    assert masks.dtype == np.uint8 and masks.shape == (n, H, W)
    assert probs.dtype == np.float16 and probs.shape == (n, *PROBS)
    assert idx.dtype == np.int64 and np.array_equal(idx, [frame_index(k) for k in range(n)])
    assert ts.dtype == np.float64 and np.array_equal(ts, [round(frame_index(k) / 25, 6) for k in range(n)])
    for k in range(n):
        m, p = make_frame(k)
        assert np.array_equal(masks[k], m), k
        assert np.array_equal(probs[k], p), k
    del masks, probs

    # masks.json: byte for byte the document maskrle makes of the frames in frame order
    frames = [{"frame_index": frame_index(k), "timestamp": round(frame_index(k) / 25, 6), "chunk": k,
               "segments": encode_segments(make_frame(k)[0], True)} for k in range(n)]
    assert (folder / RLE_FILE).read_text() == json.dumps(rle_document(META, frames, True), separators=(",", ":"))
    meta = json.loads((folder / "meta.json").read_text())
    assert [f["frame_index"] for f in meta["frames"]] == [frame_index(k) for k in range(n)] and meta["num_frames"] == n
    assert np.array_equal(read_masks_dir(folder).masks[:3], np.stack([make_frame(k)[0] for k in range(3)]))


@pytest.mark.parametrize("fmt", ["npz", "all"])
def test_peak_does_not_grow_with_frames(tmp_path, fmt):
    """4x the frames, (nearly) the same peak: nothing per frame is held but a small record for meta.json."""
    small, _ = drive(tmp_path / "small", 20, fmt=fmt)
    large, _ = drive(tmp_path / "large", 80, fmt=fmt)
    per_frame = H * W + int(np.prod(PROBS)) * 2
    # the old writer: large - small >= 60 frames of masks+probs (~40 MB); allow a few records' growth
    assert large - small < 2 * per_frame, f"peak {small / 2**20:.2f} MiB for 20 frames, {large / 2**20:.2f} MiB for 80"


def test_empty_video_npz(tmp_path):
    w = VideoMaskWriter(tmp_path, "empty", fmt="all", semantic=True, save_probs=True)
    folder = w.finish(META)
    with np.load(folder / NPZ) as data:
        assert data.files == ["masks", "frame_indices", "timestamps"]
        assert data["masks"].shape == (0, 0, 0) and data["masks"].dtype == np.uint8
        assert data["frame_indices"].shape == (0,) and data["frame_indices"].dtype == np.int64
        assert data["timestamps"].shape == (0,) and data["timestamps"].dtype == np.float64
    assert json.loads((folder / RLE_FILE).read_text())["frames"] == []
    assert sorted(p.name for p in folder.iterdir()) == sorted([NPZ, RLE_FILE, "meta.json"])


def test_size_mismatch_is_a_clear_error_and_abort_cleans_up(tmp_path):
    w = VideoMaskWriter(tmp_path, "v", fmt="npz", save_probs=True)
    w.add(frame_index=0, timestamp=0.0, chunk=0, mask=np.zeros((4, 6), np.uint8), probs=np.zeros((4, 6), np.float32))
    with pytest.raises(AvsegError, match=r"mask of shape \[5, 6\] after \[4, 6\]"):
        w.add(frame_index=1, timestamp=0.1, chunk=0, mask=np.zeros((5, 6), np.uint8))
    with pytest.raises(AvsegError, match=r"probs of shape \[2, 6\] after \[4, 6\]"):
        w.add(frame_index=1, timestamp=0.1, chunk=0, mask=np.zeros((4, 6), np.uint8), probs=np.zeros((2, 6), np.float32))
    assert any(p.name.endswith(".spill") for p in (tmp_path / ".v.partial").iterdir())
    w.abort()
    assert not (tmp_path / ".v.partial").exists() and not (tmp_path / "v").exists()
