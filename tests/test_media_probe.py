"""Probing, frame sampling and chunk assignment on generated media (avsegcli.media)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from avsegcli import media
from avsegcli.errors import MediaError
from media_gen import cached, make_audio, make_vfr_video

# name -> (make_video kwargs, expected frame count, decoded (H, W), audio (rate, channels, codec) or None,
#          expected fps=1 frame indices)
VIDEOS = {
    "f25.mp4": (dict(seconds=5, fps=25, size=(64, 48)), 125, (48, 64), (16000, 1, "aac"),
                [23, 48, 73, 98, 123]),
    "f25_5p5.mp4": (dict(seconds=5.5, fps=25, size=(64, 48)), 138, (48, 64), (16000, 1, "aac"),
                    [23, 48, 73, 98, 123, 137]),
    "f24.mkv": (dict(seconds=3, fps=24, size=(64, 48), sample_rate=22050, channels=2), 72, (48, 64),
                (22050, 2, "flac"), [22, 46, 70]),
    "f2997.mp4": (dict(seconds=5, fps=29.97, size=(64, 48), sample_rate=44100, channels=2), 150, (48, 64),
                  (44100, 2, "aac"), [28, 58, 88, 118, 148]),
    "f60.mp4": (dict(seconds=2, fps=60, size=(64, 48), sample_rate=48000, channels=6), 120, (48, 64),
                (48000, 6, "aac"), [56, 116]),
    "f1.mov": (dict(seconds=4, fps=1, size=(64, 48), sample_rate=8000), 4, (48, 64), (8000, 1, "aac"),
               [0, 1, 2, 3]),
    "odd.mp4": (dict(seconds=2, fps=25, size=(321, 239)), 50, (239, 321), (16000, 1, "aac"), [23, 48]),
    "odd_vp9.webm": (dict(seconds=2, fps=25, size=(321, 239), channels=6), 50, (239, 321), (48000, 6, "opus"),
                     [23, 48]),
    "vp8.webm": (dict(seconds=2, fps=24, size=(64, 48), video_codec="libvpx", audio_codec="libvorbis",
                      sample_rate=44100), 48, (48, 64), (44100, 1, "vorbis"), [22, 46]),
    "portrait.avi": (dict(seconds=2, fps=25, size=(180, 320), sample_rate=48000, channels=2), 50, (320, 180),
                     (48000, 2, "pcm_s16le"), [23, 48]),
    "silent.mkv": (dict(seconds=3, fps=25, size=(64, 48), audio=False), 75, (48, 64), None, [23, 48, 73]),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return {name: cached(tmp_path_factory, name, **spec[0]) for name, spec in VIDEOS.items()}


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    """2 s at 10 fps then 2 s at 30 fps, in MP4 and in Matroska (no frame count, no avg rate)."""
    return {ext: cached(tmp_path_factory, f"vfr.{ext}", make_vfr_video) for ext in ("mp4", "mkv")}


@pytest.mark.parametrize("name", list(VIDEOS))
def test_probe_and_benchmark_sampler(videos, name):
    kwargs, frames, size, audio, indices = VIDEOS[name]
    info = media.probe(videos[name])
    assert info.num_frames == frames
    assert info.size == size and (info.height, info.width) == size
    assert info.fps == pytest.approx(float(kwargs["fps"]), rel=1e-3)
    assert info.duration == pytest.approx(kwargs["seconds"], abs=0.1)
    assert info.has_video
    if audio is None:
        assert not info.has_audio and info.audio_streams == ()
    else:
        assert info.has_audio
        stream = info.audio_streams[0]
        assert (stream.sample_rate, stream.channels, stream.codec) == audio
    # constant rate: frame i is shown at i / fps
    assert media.is_constant_rate(info)
    np.testing.assert_allclose(info.frame_times, np.arange(frames) / kwargs["fps"], atol=1.5e-3)
    idx, ts = media.sample_times(info, 1)
    assert idx.tolist() == indices
    assert idx.dtype == np.int64 and ts.dtype == np.float64
    np.testing.assert_allclose(ts, info.frame_times[idx])
    # one frame per started second, each in its own second's chunk
    assert len(idx) == math.ceil(frames / round(kwargs["fps"]))
    assert media.chunk_indices(ts).tolist() == list(range(len(idx)))


def test_benchmark_rule_values():
    assert media.benchmark_indices(125, 25.0).tolist() == [23, 48, 73, 98, 123]
    assert media.benchmark_indices(150, 29.97).tolist() == [28, 58, 88, 118, 148]
    assert media.benchmark_indices(120, 24.0).tolist() == [22, 46, 70, 94, 118]
    assert media.benchmark_indices(10, 25.0).tolist() == [9]  # a 0.4 s video: clamped to its last frame
    assert media.benchmark_indices(0, 25.0).tolist() == []


def test_other_rates_by_timestamp(videos):
    info = media.probe(videos["f25.mp4"])
    idx, ts = media.sample_times(info, 2)  # intervals of 0.5 s, frame shown at (l + 15/16) / 2
    assert idx.tolist() == [int(25 * (l + 15 / 16) / 2 + 1e-9) for l in range(10)]
    assert media.chunk_indices(ts).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    idx, _ = media.sample_times(info, 0.5)  # one frame per 2 s: at 1.875 s and 3.875 s
    assert idx.tolist() == [46, 96, 124]  # the third interval [4, 6) starts before the last frame
    for every in (None, 0):
        idx, ts = media.sample_times(info, every)
        assert idx.tolist() == list(range(125))
        np.testing.assert_allclose(ts, np.arange(125) / 25, atol=1e-5)
    idx, _ = media.sample_times(info, 50)  # faster than the video: frames repeat
    assert len(idx) == 249 and idx[:4].tolist() == [0, 0, 1, 1]  # intervals start at l/50 <= 4.96 s
    with pytest.raises(ValueError):
        media.sample_times(info, -1)


def test_29_97_timestamps(videos):
    info = media.probe(videos["f2997.mp4"])
    idx, ts = media.sample_times(info, 1)
    np.testing.assert_allclose(ts, idx * 1001 / 30000, atol=1e-4)
    assert media.chunk_indices(ts).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_vfr(vfr, ext):
    info = media.probe(vfr[ext])
    assert info.num_frames == 80
    expected = np.concatenate([np.arange(20) / 10, 2 + np.arange(60) / 30])
    np.testing.assert_allclose(info.frame_times, expected, atol=1.5e-3)
    assert not media.is_constant_rate(info)
    idx, ts = media.sample_times(info, 1)  # by timestamp: the frame shown at l + 15/16 s
    assert idx.tolist() == [9, 19, 48, 78]
    np.testing.assert_allclose(ts, [0.9, 1.9, 2 + 28 / 30, 3 + 28 / 30], atol=1.5e-3)
    assert media.chunk_indices(ts).tolist() == [0, 1, 2, 3]
    clip = media.read_clip(vfr[ext], fps=1)
    assert clip.frame_indices.tolist() == [9, 19, 48, 78]


def test_audio_only_probe(tmp_path_factory):
    wav = cached(tmp_path_factory, "tone.wav", make_audio, seconds=2, sample_rate=16000)
    info = media.probe(wav)
    assert not info.has_video and info.num_frames == 0
    assert info.has_audio and info.audio_streams[0].sample_rate == 16000
    assert info.duration == pytest.approx(2.0)
    assert media.sample_times(info, 1)[0].tolist() == []


def test_sample_times_needs_no_decoding():
    """sample_times works from a hand-made MediaInfo (constant rate assumed without timestamps)."""
    info = media.MediaInfo("x.mp4", "mp4", 5.0, 25.0, 125, 64, 48, "h264")
    assert media.sample_times(info, 1)[0].tolist() == [23, 48, 73, 98, 123]


# --- errors: each a MediaError with the path and a one-line reason -------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, videos):
    d = tmp_path_factory.mktemp("bad")
    good = videos["f25.mp4"].read_bytes()
    files = {
        "missing": d / "missing.mp4",
        "text": d / "notes.txt",
        "text_mp4": d / "notes.mp4",
        "empty": d / "empty.mp4",
        "half": d / "half.mp4",
        "random": d / "random.mp4",
    }
    files["text"].write_text("just some words, not a video\n" * 20)
    files["text_mp4"].write_text("just some words, not a video\n" * 20)
    files["empty"].write_bytes(b"")
    files["half"].write_bytes(good[: len(good) // 2])
    files["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 40000, dtype=np.uint8).tobytes())
    return files


REASONS = {
    "missing": "file not found",
    "text": "not a media file",
    "text_mp4": "not a media file",
    "empty": "empty (0 bytes)",
    "half": "truncated/corrupt",
    "random": "truncated/corrupt",
}


@pytest.mark.parametrize("kind", list(REASONS))
@pytest.mark.parametrize("call", ["probe", "read_clip", "iter_batches", "vggish_examples"])
def test_bad_input_is_media_error(bad_files, kind, call):
    path = bad_files[kind]
    fn = {
        "probe": media.probe,
        "read_clip": media.read_clip,
        "iter_batches": lambda p: list(media.iter_batches(p)),
        "vggish_examples": media.vggish_examples,
    }[call]
    with pytest.raises(MediaError) as err:
        fn(path)
    assert REASONS[kind] in err.value.reason
    assert str(err.value).startswith(f"{path}: ")
    assert "\n" not in str(err.value)


def test_directory_is_media_error(tmp_path):
    with pytest.raises(MediaError, match="not a regular file"):
        media.probe(tmp_path)


def test_truncated_faststart_mp4(tmp_path, videos):
    """An MP4 with its index first, cut in half: ffmpeg lists it, decord's packet scan fails."""
    from media_gen import FFMPEG
    import subprocess

    full = tmp_path / "fs.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-i", str(videos["f25.mp4"]), "-c", "copy",
                    "-movflags", "+faststart", str(full)], check=True)
    cut = tmp_path / "fs_half.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(MediaError, match="truncated or corrupt"):
        media.probe(cut)
    with pytest.raises(MediaError, match="truncated or corrupt"):
        media.read_clip(cut)


@pytest.mark.parametrize("suffix", [".wav", ".m4a"])
def test_audio_only_file_to_read_clip(tmp_path_factory, suffix):
    path = cached(tmp_path_factory, f"only{suffix}", make_audio, seconds=2)
    for fn in (media.read_clip, lambda p: next(media.iter_batches(p))):
        with pytest.raises(MediaError) as err:
            fn(path)
        assert err.value.reason == "has no video stream"
        assert err.value.path == str(path)


def test_no_audio_track_is_not_an_error(videos):
    with pytest.warns(media.NoAudioWarning, match="no audio track"):
        clip = media.read_clip(videos["silent.mkv"])
    assert clip.has_audio is False
    assert len(clip) == 3
    assert clip.log_mel.shape == (3, 1, 96, 64)
    assert np.allclose(clip.log_mel.numpy(), math.log(0.01))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(media.iter_batches(videos["silent.mkv"], batch_size=2))
    assert any(issubclass(w.category, media.NoAudioWarning) for w in caught)
    assert [b.has_audio for b in batches] == [False, False]
    assert np.allclose(batches[1].chunk_log_mel.numpy(), math.log(0.01))
    with pytest.raises(MediaError, match="has no audio stream"):
        media.vggish_examples(videos["silent.mkv"])
