"""VGGish log-mel frontend in pure torch (float64 inside, float32 out).

Reproduces the official VGGish input pipeline (``mel_features.py`` / ``vggish_input.py`` of the
TensorFlow models release, as vendored by AVSegFormer):

* 16 kHz mono waveform in [-1, 1];
* STFT with a 25 ms (400 sample) periodic Hann window, 10 ms (160 sample) hop, no padding
  (only complete windows), FFT length 512 (the next power of two), magnitude spectrum;
* 64 HTK-mel bands between 125 Hz and 7500 Hz built exactly like ``spectrogram_to_mel_matrix``
  (triangles linear on the mel axis, band edges evenly spaced in mel, the DC bin zeroed);
* ``log(mel + 0.01)``.

Two framings of the resulting ``[frames, 64]`` spectrogram:

* :func:`waveform_to_examples` -- the benchmark's: 96-frame (0.96 s) examples with a 96-frame hop,
  incomplete examples dropped: ``[K, 1, 96, 64]``.
* :func:`log_mel_chunks` / :func:`chunk_patch` -- one patch per second of the timeline: chunk ``k``
  is the 96 STFT frames starting at sample ``16000 * k`` (frames ``100k .. 100k + 95``), i.e. it
  only looks at samples ``[16000 k, 16000 k + 15600)``; a missing tail is zero-padded.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
WINDOW_LENGTH = int(round(SAMPLE_RATE * STFT_WINDOW_SECONDS))  # 400 samples
HOP_LENGTH = int(round(SAMPLE_RATE * STFT_HOP_SECONDS))  # 160 samples
FFT_LENGTH = 2 ** int(math.ceil(math.log(WINDOW_LENGTH) / math.log(2.0)))  # 512
NUM_SPECTROGRAM_BINS = FFT_LENGTH // 2 + 1  # 257
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames
EXAMPLE_HOP_FRAMES = 96
FRAMES_PER_SECOND = int(round(1.0 / STFT_HOP_SECONDS))  # 100 STFT frames per chunk of 1 s
#: samples a one-second chunk's patch reads: 95 hops + one window = 15600
CHUNK_SPAN = (EXAMPLE_FRAMES - 1) * HOP_LENGTH + WINDOW_LENGTH
#: the value of every log-mel cell of silence: log(0 + 0.01)
SILENCE_VALUE = math.log(LOG_OFFSET)

# HTK mel scale constants
_MEL_BREAK_HZ = 700.0
_MEL_HIGH_Q = 1127.0


def hertz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale: ``1127 * ln(1 + hz / 700)`` (float64)."""
    hz = torch.as_tensor(hz, dtype=torch.float64)
    return _MEL_HIGH_Q * torch.log(1.0 + hz / _MEL_BREAK_HZ)


def periodic_hann(length: int = WINDOW_LENGTH) -> torch.Tensor:
    """Periodic Hann window ``0.5 - 0.5 cos(2 pi n / length)``: ``[length]`` float64."""
    n = torch.arange(length, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(2.0 * math.pi / length * n)


@lru_cache(maxsize=4)
def mel_matrix(
    num_mel_bins: int = NUM_MEL_BINS,
    num_spectrogram_bins: int = NUM_SPECTROGRAM_BINS,
    sample_rate: int = SAMPLE_RATE,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> torch.Tensor:
    """The official spectrogram-to-mel matrix: ``[num_spectrogram_bins, num_mel_bins]`` float64.

    Bin ``j`` sits at ``linspace(0, nyquist, num_spectrogram_bins)[j]`` Hz; band ``i`` is a
    triangle on the mel axis with edges ``edges[i], edges[i+1], edges[i+2]`` where ``edges`` is
    ``num_mel_bins + 2`` points evenly spaced in mel from ``lower_hz`` to ``upper_hz``; the
    weight is ``max(0, min(rising slope, falling slope))``. Row 0 (DC) is forced to zero, as HTK
    does. Callers must not modify the returned (cached) tensor.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise ValueError(f"need 0 <= lower_hz < upper_hz <= {nyquist}, got {lower_hz}, {upper_hz}")
    bins_mel = hertz_to_mel(torch.from_numpy(np.linspace(0.0, nyquist, num_spectrogram_bins)))
    edges = torch.from_numpy(
        np.linspace(float(hertz_to_mel(lower_hz)), float(hertz_to_mel(upper_hz)), num_mel_bins + 2)
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # [num_mel_bins] each
    rising = (bins_mel[:, None] - lower[None, :]) / (center - lower)[None, :]
    falling = (upper[None, :] - bins_mel[:, None]) / (upper - center)[None, :]
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0, :] = 0.0
    return weights


def stft_magnitude(waveform: torch.Tensor) -> torch.Tensor:
    """``[n]`` samples -> ``[frames, 257]`` float64 magnitudes, ``frames = 1 + (n - 400) // 160``.

    Only complete windows are used (no padding); fewer than 400 samples give ``[0, 257]``.
    """
    x = torch.as_tensor(waveform).to(torch.float64).reshape(-1)
    if x.numel() < WINDOW_LENGTH:
        return x.new_zeros((0, NUM_SPECTROGRAM_BINS))
    frames = x.unfold(0, WINDOW_LENGTH, HOP_LENGTH)  # [frames, 400] (a view)
    return torch.fft.rfft(frames * periodic_hann(), n=FFT_LENGTH).abs()


def log_mel_spectrogram(waveform: torch.Tensor) -> torch.Tensor:
    """16 kHz mono ``[n]`` -> ``[frames, 64]`` float64 ``log(mel + 0.01)`` (official frontend)."""
    return torch.log(stft_magnitude(waveform) @ mel_matrix() + LOG_OFFSET)


def _as_mono_float64(waveform) -> torch.Tensor:
    if isinstance(waveform, torch.Tensor):
        x = waveform.detach().to(torch.float64)
    else:
        x = torch.from_numpy(np.array(waveform, dtype=np.float64))  # a writable float64 copy
    if x.ndim == 2:  # [samples, channels], as the official code expects
        x = x.mean(dim=1)
    if x.ndim != 1:
        raise ValueError(f"waveform must be [samples] or [samples, channels], got {tuple(x.shape)}")
    return x


def waveform_to_examples(waveform_16k) -> torch.Tensor:
    """The benchmark's framing of a 16 kHz waveform: ``[K, 1, 96, 64]`` float32.

    ``waveform_16k`` is ``[n]`` (or ``[n, channels]``, averaged). Examples are 96 STFT frames with
    a 96-frame hop; ``K = 1 + (frames - 96) // 96`` (0 when shorter than one example), exactly
    ``mel_features.frame`` over the log-mel spectrogram.
    """
    log_mel = log_mel_spectrogram(_as_mono_float64(waveform_16k))
    n = log_mel.shape[0]
    k = 0 if n < EXAMPLE_FRAMES else 1 + (n - EXAMPLE_FRAMES) // EXAMPLE_HOP_FRAMES
    if k == 0:
        return torch.zeros((0, 1, EXAMPLE_FRAMES, NUM_MEL_BINS), dtype=torch.float32)
    ex = log_mel.unfold(0, EXAMPLE_FRAMES, EXAMPLE_HOP_FRAMES)[:k]  # [K, 64, 96]
    return ex.transpose(1, 2).unsqueeze(1).to(torch.float32).contiguous()


def chunk_patch(samples) -> torch.Tensor:
    """One second of 16 kHz audio (``[<= 16000]``, zero-padded) -> its patch ``[1, 96, 64]`` float32.

    The patch is the 96 STFT frames starting at the chunk's first sample; it reads the first
    ``CHUNK_SPAN = 15600`` samples only.
    """
    x = _as_mono_float64(samples)
    if x.numel() < CHUNK_SPAN:
        x = torch.nn.functional.pad(x, (0, CHUNK_SPAN - x.numel()))
    return log_mel_spectrogram(x[:CHUNK_SPAN]).to(torch.float32).unsqueeze(0)


def silence_patch() -> torch.Tensor:
    """The patch of a silent (or absent) second: ``[1, 96, 64]`` filled with ``log(0.01)``."""
    return torch.full((1, EXAMPLE_FRAMES, NUM_MEL_BINS), SILENCE_VALUE, dtype=torch.float32)


def log_mel_chunks(waveform_16k, num_chunks: int | None = None) -> torch.Tensor:
    """One-second chunking of a whole 16 kHz waveform ``[n]``: ``[C, 1, 96, 64]`` float32.

    Chunk ``k`` covers ``[k s, k+1 s)``; ``C = ceil(n / 16000)`` unless ``num_chunks`` is given
    (extra chunks past the audio are silence, fewer truncate). Identical to taking STFT frames
    ``100k .. 100k + 95`` of the zero-padded whole-stream spectrogram. Holds the whole waveform:
    for long inputs stream one second at a time through :func:`chunk_patch` instead.
    """
    x = _as_mono_float64(waveform_16k)
    if num_chunks is None:
        num_chunks = -(-x.numel() // SAMPLE_RATE)
    if num_chunks == 0:
        return torch.zeros((0, 1, EXAMPLE_FRAMES, NUM_MEL_BINS), dtype=torch.float32)
    patches = [chunk_patch(x[k * SAMPLE_RATE:(k + 1) * SAMPLE_RATE]) for k in range(num_chunks)]
    return torch.stack(patches)
