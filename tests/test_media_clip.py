"""read_clip / iter_batches and frame preprocessing (avsegcli.media)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from avsegcli import media
from media_gen import cached

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """60 s, 5 fps, 64x48, a pitch that changes every second (so every chunk differs)."""
    return cached(tmp_path_factory, "long60.mp4", seconds=60, fps=5, size=(64, 48), sample_rate=22050,
                  tone_hz="200+60*floor(t)")


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    return cached(tmp_path_factory, "f25.mp4", seconds=5, fps=25, size=(64, 48))


def test_read_clip_fields(short_video):
    clip = media.read_clip(short_video, fps=1, image_size=224)
    assert clip.frames.shape == (5, 3, 224, 224) and clip.frames.dtype == torch.float32
    assert clip.log_mel.shape == (5, 1, 96, 64) and clip.log_mel.dtype == torch.float32
    assert clip.frame_indices.tolist() == [23, 48, 73, 98, 123]
    np.testing.assert_allclose(clip.timestamps, [0.92, 1.92, 2.92, 3.92, 4.92])
    assert clip.chunk_indices.tolist() == [0, 1, 2, 3, 4]
    assert clip.has_audio and clip.raw_size == (48, 64) and clip.info.num_frames == 125
    # frames are the decoded frames, resized like PIL and ImageNet-normalised
    with media.VideoSource(short_video) as src:
        raw = src.get([48])[0]
    pil = np.array(Image.fromarray(raw).resize((224, 224), Image.BILINEAR))
    expected = (torch.from_numpy(pil).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD
    assert torch.allclose(clip.frames[1:2], expected, atol=1e-6)
    # S4/MS3 setting
    s4 = media.read_clip(short_video, fps=1, image_size=512, via=224)
    assert s4.frames.shape == (5, 3, 512, 512)
    assert torch.equal(s4.log_mel, clip.log_mel)


@pytest.mark.parametrize("fps,batch_size", [(1, 7), (None, 32), (2.5, 16)])
def test_streaming_matches_read_clip(long_video, fps, batch_size):
    clip = media.read_clip(long_video, fps=fps, image_size=32)
    batches = list(media.iter_batches(long_video, fps=fps, batch_size=batch_size, image_size=32))
    assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    assert sum(len(b) for b in batches) == len(clip)
    assert [b.start for b in batches] == list(range(0, len(clip), batch_size))
    assert torch.equal(torch.cat([b.frames for b in batches]), clip.frames)
    assert torch.equal(torch.cat([b.log_mel for b in batches]), clip.log_mel)
    for name in ("timestamps", "frame_indices", "chunk_indices"):
        assert np.array_equal(np.concatenate([getattr(b, name) for b in batches]), getattr(clip, name))
    for b in batches:
        assert b.raw_size == (48, 64) and b.has_audio
        assert b.chunk_ids.tolist() == sorted(set(b.chunk_indices.tolist()))
        assert np.array_equal(b.chunk_ids[b.chunk_rows], b.chunk_indices)
        assert b.chunk_log_mel.shape == (len(b.chunk_ids), 1, 96, 64)
    if fps == 1:
        assert len(clip) == 60 and clip.chunk_indices.tolist() == list(range(60))
        # the pitch changes every second, so neighbouring chunks differ
        assert all(not torch.equal(clip.log_mel[k], clip.log_mel[k + 1]) for k in range(59))
    if fps is None:
        assert len(clip) == 300
        assert batches[0].chunk_ids.tolist() == [0, 1, 2, 3, 4, 5, 6]  # 32 frames at 5 fps = 6.4 s


def test_per_chunk_patches_follow_the_whole_waveform(long_video):
    clip = media.read_clip(long_video, fps=1, image_size=16)
    table = media.log_mel_chunks(media.load_audio(long_video))
    assert table.shape == (60, 1, 96, 64)
    assert torch.equal(clip.log_mel, table[torch.from_numpy(clip.chunk_indices)])


def test_iter_batches_can_stop_early(long_video):
    gen = media.iter_batches(long_video, fps=None, batch_size=10, image_size=16)
    first = next(gen)
    assert len(first) == 10 and first.chunk_ids.tolist() == [0, 1]
    gen.close()


def test_sparse_decoding_is_frame_accurate(tmp_path_factory):
    """Windows fetched by index (with seeks over B-frames) equal a straight decode."""
    path = cached(tmp_path_factory, "bframes.mp4", seconds=4, fps=25, size=(96, 64), audio=False,
                  video_codec="libx264", extra=("-bf", "3", "-g", "30"))
    with media.VideoSource(path) as src:
        every = src.get(np.arange(src.num_frames))
        pick = np.array([99, 3, 57, 57, 30, 0, 88])
        assert np.array_equal(src.get(pick), every[pick])
        # windows with the decoder parked (sparse) or the reader reopened (budget_mb=None) in between
        sparse = np.arange(5, 100, 9)
        got = np.concatenate([f for _, f in src.iter_windows(sparse, 3)])
        assert np.array_equal(got, every[sparse])
        got = np.concatenate([f for _, f in src.iter_windows(np.arange(100), 16, budget_mb=None)])
        assert np.array_equal(got, every) and src.reopens == 6
    assert len({every[i].tobytes() for i in range(len(every))}) > 90  # frames really differ


# --- preprocessing ------------------------------------------------------------------------------


def test_preprocess_shapes_and_inputs():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 239, 321, 3), dtype=np.uint8)
    out = media.preprocess_frames(frames, image_size=224)
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(media.preprocess_frames(torch.from_numpy(frames), image_size=224), out)
    out = media.preprocess_frames(frames, image_size=512, via=224)
    assert out.shape == (3, 3, 512, 512)
    with pytest.raises(ValueError):
        media.preprocess_frames(frames.astype(np.float32), image_size=224)
    with pytest.raises(ValueError):
        media.preprocess_frames(frames[..., :2], image_size=224)


def test_normalisation_values():
    frame = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 0, 128, 255
    out = media.normalize(frame)
    expected = [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected), atol=1e-6)


def test_s4_path_is_cv2_then_pil():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 120, 160, 3), dtype=np.uint8)
    mid = media.resize_like_cv2(frames, (224, 224))
    pil = np.stack([np.asarray(Image.fromarray(m).resize((512, 512), Image.BILINEAR)) for m in mid.numpy()])
    expected = media.normalize(pil)
    assert torch.equal(media.preprocess_frames(frames, image_size=512, via=224), expected)


def test_cv2_bilinear_arithmetic():
    # [0, 255] widened to 4: half-pixel taps at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    row = np.zeros((1, 1, 2, 3), dtype=np.uint8)
    row[0, 0, 1] = 255
    assert media.resize_like_cv2(row, (1, 4))[0, 0, :, 0].tolist() == [0, 64, 191, 255]
    # one output pixel by hand: 3x3 -> 2x2, source coordinate 0.25 on both axes
    img = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], dtype=np.uint8)
    img3 = np.repeat(img[None, :, :, None], 3, axis=3)
    out = media.resize_like_cv2(img3, (2, 2))[0, :, :, 0]
    w0, w1 = round(0.75 * 2048), round(0.25 * 2048)
    r0, r1 = 10 * w0 + 20 * w1, 40 * w0 + 50 * w1
    assert out[0, 0] == (((r0 >> 4) * w0 >> 16) + ((r1 >> 4) * w1 >> 16) + 2) >> 2
    # constant images stay constant; no antialiasing; close to float bilinear everywhere
    flat = np.full((1, 480, 640, 3), 255, dtype=np.uint8)
    assert media.resize_like_cv2(flat, (224, 224)).eq(255).all()
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 239, 321, 3), dtype=np.uint8)
    ours = media.resize_like_cv2(frames, (224, 224)).int()
    ref = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).double(), size=(224, 224),
                                          mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    assert (ours - ref).abs().max() <= 1.0
    # an exact 2x shrink is OpenCV's 2x2 box average
    big = rng.integers(0, 256, (1, 448, 448, 3), dtype=np.uint8)
    box = big.reshape(1, 224, 2, 224, 2, 3).astype(np.int32).sum(axis=(2, 4))
    assert np.array_equal(media.resize_like_cv2(big, (224, 224)).numpy(), ((box + 2) >> 2).astype(np.uint8))
    assert torch.equal(media.resize_like_cv2(big, (448, 448)), torch.from_numpy(big))


def test_pil_bilinear_is_pil():
    frames = np.random.default_rng(3).integers(0, 256, (2, 239, 321, 3), dtype=np.uint8)
    ours = media.resize_like_pil(frames, (224, 224)).numpy()
    for i in range(2):
        assert np.array_equal(ours[i], np.asarray(Image.fromarray(frames[i]).resize((224, 224), Image.BILINEAR)))


def test_resize_masks_back():
    labels = torch.tensor([[[1, 2], [3, 4]]], dtype=torch.int64)
    up = media.resize_masks_back(labels, (4, 6))
    assert up.shape == (1, 4, 6) and up.dtype == torch.int64
    assert up[0, :2, :3].eq(1).all() and up[0, 2:, 3:].eq(4).all()
    assert media.resize_masks_back(labels.bool(), (3, 3)).dtype == torch.bool
    probs = torch.rand(2, 71, 28, 28)
    back = media.resize_masks_back(probs, (48, 64))
    assert back.shape == (2, 71, 48, 64) and back.dtype == torch.float32
    flat = torch.full((1, 8, 8), 0.25)
    assert torch.allclose(media.resize_masks_back(flat, (5, 7)), torch.full((1, 5, 7), 0.25))
    assert torch.equal(media.resize_masks_back(labels, (2, 2)), labels)
