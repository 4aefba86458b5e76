"""Audio demuxing, resampling and the VGGish log-mel frontend (avsegcli.media)."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from avsegcli import media
from avsegcli.media import logmel
from media_gen import cached, make_audio

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"


def _reference():
    path = REFERENCE / "vggish_examples_reference.pt"
    if not path.exists():
        pytest.skip(f"reference data absent: {path} (the shared/ folder beside the checkout)")
    return torch.load(path, weights_only=False)


def test_mono16k_matches_official_frontend():
    ref = _reference()["mono16k_5s"]
    ex = media.vggish_examples(REFERENCE / "mono16k_5s.wav")
    assert ex.shape == (5, 1, 96, 64) and ex.dtype == torch.float32
    diff = (ex - ref).abs()
    print(f"\nmono16k_5s: mean abs diff {diff.mean():.3g}, max {diff.max():.3g}")
    assert diff.max() <= 1e-6  # measured 0 (no resampling: the same arithmetic as the official frontend)


def test_stereo44k_matches_official_frontend():
    ref = _reference()["stereo44k_10s"]
    ex = media.vggish_examples(REFERENCE / "stereo44k_10s.wav")
    assert ex.shape == (10, 1, 96, 64)
    diff = (ex - ref).abs()
    print(f"\nstereo44k_10s (resampled 44.1 -> 16 kHz, ffmpeg swr vs resampy kaiser_best): "
          f"mean abs diff {diff.mean():.5f}, max {diff.max():.4f}")
    # measured: mean 0.0027, max 0.196 (top mel band, near the 8 kHz Nyquist edge where the resamplers' roll-offs
    # differ); bands 0-62: max 0.062, mean 0.0012
    assert diff.mean() < 0.004 and diff.max() < 0.25
    assert diff[..., :63].max() < 0.08 and diff[..., :63].mean() < 0.002
    # the same through the array API (int16 samples, [n, channels], as soundfile reads them)
    with wave.open(str(REFERENCE / "stereo44k_10s.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
        rate = w.getframerate()
    assert torch.equal(media.vggish_examples(pcm, sample_rate=rate), ex)
    assert torch.allclose(media.vggish_examples(pcm / 32768.0, sample_rate=rate), ex)


def test_mel_matrix_construction():
    m = media.mel_matrix()
    assert m.shape == (257, 64) and m.dtype == torch.float64
    assert torch.all(m[0] == 0)  # DC bin excluded
    assert torch.all(m >= 0) and m.max() <= 1.0
    # band centres are evenly spaced in HTK mel between 125 and 7500 Hz
    edges = np.linspace(1127 * math.log(1 + 125 / 700), 1127 * math.log(1 + 7500 / 700), 66)
    peak_hz = np.linspace(0, 8000, 257)[m.argmax(dim=0).numpy()]
    centre_hz = 700 * (np.exp(edges[1:-1] / 1127) - 1)
    assert np.all(np.abs(peak_hz - centre_hz) <= 31.25)  # within one FFT bin
    assert logmel.WINDOW_LENGTH == 400 and logmel.HOP_LENGTH == 160 and logmel.FFT_LENGTH == 512


def test_framings():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, 16000 * 3 + 5000)
    # benchmark framing: 96-frame examples, 96-frame hop, incomplete ones dropped
    frames = 1 + (len(x) - 400) // 160
    ex = media.waveform_to_examples(x)
    assert ex.shape == (1 + (frames - 96) // 96, 1, 96, 64)
    whole = media.log_mel_spectrogram(torch.from_numpy(x))
    assert torch.allclose(ex[2, 0], whole[192:288].float())
    # one-second chunks: chunk k = frames 100k .. 100k+95 of the zero-padded whole stream
    chunks = media.log_mel_chunks(x)
    assert chunks.shape == (4, 1, 96, 64)
    padded = media.log_mel_spectrogram(torch.from_numpy(np.pad(x, (0, 64000 - len(x)))))
    for k in range(4):
        assert torch.allclose(chunks[k, 0], padded[100 * k:100 * k + 96].float(), atol=1e-6)
    assert media.log_mel_chunks(x, num_chunks=6)[5].eq(float(np.float32(math.log(0.01)))).all()
    assert torch.equal(media.silence_patch(), media.chunk_patch(np.zeros(100)))
    assert media.waveform_to_examples(np.zeros(1000)).shape == (0, 1, 96, 64)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_rates_keep_length_and_pitch(tmp_path_factory, rate):
    path = cached(tmp_path_factory, f"tone{rate}.wav", make_audio, seconds=3, sample_rate=rate, tone_hz=440.0)
    x = media.load_audio(path)
    assert x.dtype == np.float32
    assert abs(len(x) - 48000) <= 2
    spectrum = np.abs(np.fft.rfft(x[:32000]))
    assert np.argmax(spectrum) * 16000 / 32000 == pytest.approx(440.0, abs=1.0)
    assert np.sqrt(np.mean(x[1000:-1000] ** 2)) == pytest.approx(0.5 / math.sqrt(2), rel=0.02)


@pytest.mark.parametrize("amps,expected", [
    ((0.6, 0.0), 0.3),                            # stereo: (L + R) / 2
    ((0.0, 0.0, 0.0, 0.6, 0.0, 0.0), 0.1),        # 5.1 with only LFE: the plain mean keeps 1/6 of it
    ((0.6, 0.6, 0.0, 0.0, 0.0, 0.0), 0.2),
])
def test_channel_mean_is_plain_average(tmp_path_factory, amps, expected):
    name = "mix_" + "_".join(str(a) for a in amps) + ".wav"
    path = cached(tmp_path_factory, name, make_audio, seconds=2, sample_rate=16000, channels=len(amps),
                  amplitudes=amps, tone_hz=500.0)
    x = media.load_audio(path)
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert rms == pytest.approx(expected / math.sqrt(2), rel=0.01)


def test_iter_seconds_streams_one_second_at_a_time(tmp_path_factory):
    path = cached(tmp_path_factory, "tone44k_2p5.wav", make_audio, seconds=2.5, sample_rate=44100, channels=2)
    blocks = list(media.iter_seconds(path))
    assert [len(b) for b in blocks] == [16000, 16000, 8000]
    assert np.array_equal(np.concatenate(blocks), media.load_audio(path))
    gen = media.iter_seconds(path)
    next(gen)
    gen.close()  # stops ffmpeg without reading the rest


def test_tone_onset_lands_in_its_chunk(tmp_path_factory):
    """A 1 kHz tone from t = 3 s shows up in chunk 3 (and later), not in chunks 0-2."""
    path = cached(tmp_path_factory, "onset.mkv", seconds=6, fps=5, size=(64, 48), sample_rate=44100,
                  channels=2, tone_hz=1000.0, tone_start=3.0)
    clip = media.read_clip(path, fps=1)
    assert clip.chunk_indices.tolist() == [0, 1, 2, 3, 4, 5]
    band = int(media.mel_matrix()[32].argmax())  # FFT bin 32 = 1000 Hz
    energy = clip.log_mel[:, 0, :, band - 1:band + 2].mean(dim=(1, 2))
    print("\nlog-mel energy around 1 kHz per chunk:", [round(float(e), 2) for e in energy])
    assert torch.all(energy[:3] < -4.0)  # log(0.01) = -4.6: silence
    assert torch.all(energy[3:] > 2.0)
    # the rest of the spectrum stays quiet even in the tone's chunks
    assert clip.log_mel[3, 0, :, :band - 6].mean() < energy[3] - 4


def test_vggish_examples_of_a_video_and_errors(tmp_path_factory):
    path = cached(tmp_path_factory, "v3s.mp4", seconds=3, fps=10, size=(64, 48), sample_rate=48000)
    ex = media.vggish_examples(path)
    assert ex.shape[0] in (2, 3) and ex.shape[1:] == (1, 96, 64)
    with pytest.raises(ValueError, match="sample_rate"):
        media.vggish_examples(np.zeros(16000))
    with pytest.raises(ValueError):
        media.vggish_examples(np.zeros((10, 2, 2)), sample_rate=16000)


def test_resample_array():
    t = np.arange(44100 * 2) / 44100
    y = media.resample(np.sin(2 * np.pi * 300 * t), 44100)
    assert abs(len(y) - 32000) <= 1
    ref = np.sin(2 * np.pi * 300 * np.arange(len(y)) / 16000)
    assert np.max(np.abs(y[200:-200] - ref[200:-200])) < 1e-3
