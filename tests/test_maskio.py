"""Mask folders: frames added out of order are stored in frame order with their own masks (png and npz)."""

from __future__ import annotations

import numpy as np
import pytest

from avsegcli.errors import AvsegError
from avsegcli.masks.io import VideoMaskWriter, is_complete, read_masks_dir


@pytest.mark.parametrize("fmt,semantic", [("png", False), ("npz", False), ("png", True), ("npz", True)])
def test_out_of_order_frames_round_trip(tmp_path, fmt, semantic):
    writer = VideoMaskWriter(tmp_path, "clip", fmt=fmt, semantic=semantic)
    assert not is_complete(tmp_path / "clip") and (tmp_path / ".clip.partial").is_dir()
    masks = {idx: np.full((6, 8), (idx % 5) + 1 if semantic else 1, np.uint8) * (np.arange(8) < idx % 8) for idx in (50, 10, 30)}
    for idx, m in masks.items():
        writer.add(frame_index=idx, timestamp=idx / 25, chunk=idx // 25, mask=m)
    writer.finish({"source": "clip.mp4"})
    assert is_complete(tmp_path / "clip") and not (tmp_path / ".clip.partial").exists()
    got = read_masks_dir(tmp_path / "clip")
    assert list(got.frame_indices) == [10, 30, 50]
    for i, idx in enumerate(got.frame_indices):
        assert np.array_equal(got.masks[i], masks[int(idx)])
    assert got.meta["frames"][0]["chunk"] == 0 and got.meta["frames"][2]["chunk"] == 2


def test_unfinished_folder_is_not_read(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(AvsegError, match="meta.json"):
        read_masks_dir(tmp_path / "x")
