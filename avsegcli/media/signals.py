"""Generated sound for negative audio and ``--audio silence|noise``: silence and seeded white noise at 16 kHz,
framed into VGGish log-mel examples exactly as the benchmark frames real audio.

* ``silence``: digital silence (all-zero samples) through the normal VGGish log-mel frontend, so every cell is
  ``log(0 + 0.01)``;
* ``noise``: white Gaussian noise with an RMS of :data:`NOISE_RMS` of full scale (-20 dBFS), clipped to [-1, 1],
  seeded per clip (``SeedSequence([seed, crc32(clip name)])``, so a clip's noise does not depend on which other
  clips are scored).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from avsegcli.media.logmel import silence_patch, waveform_to_examples

#: RMS of the white noise condition, as a fraction of full scale (0.1 = -20 dBFS)
NOISE_RMS = 0.1
SAMPLE_RATE = 16000


def clip_seed(seed: int, name: str, *extra: int) -> np.random.SeedSequence:
    """The seed of one clip's random draws: ``SeedSequence([seed, crc32(name), *extra])``."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode()), *map(int, extra)])


def silence_wave(seconds: float) -> np.ndarray:
    """``[n]`` zeros at 16 kHz."""
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float64)


def noise_wave(seconds: float, rng: np.random.Generator, rms: float = NOISE_RMS) -> np.ndarray:
    """``[n]`` white Gaussian noise at 16 kHz with standard deviation ``rms``, clipped to [-1, 1]."""
    n = int(round(seconds * SAMPLE_RATE))
    return np.clip(rng.standard_normal(n) * rms, -1.0, 1.0)


def examples_of(wave: np.ndarray, count: int) -> torch.Tensor:
    """The benchmark's VGGish framing of ``wave`` (0.96 s examples and hop), exactly ``count`` of them:
    ``[count,1,96,64]`` float32 (missing ones are the silence patch)."""
    ex = waveform_to_examples(wave)[:count]
    if ex.shape[0] < count:
        pad = silence_patch()[None].expand(count - ex.shape[0], -1, -1, -1)
        ex = torch.cat([ex, pad])
    return ex.contiguous()


def condition_log_mel(condition: str, count: int, name: str, seed: int, *extra: int) -> torch.Tensor:
    """Log-mel examples ``[count,1,96,64]`` of ``silence`` or ``noise`` for clip ``name`` (one second each)."""
    if condition == "silence":
        return examples_of(silence_wave(count), count)
    if condition == "noise":
        return examples_of(noise_wave(count, np.random.default_rng(clip_seed(seed, name, *extra))), count)
    raise ValueError(f"condition {condition!r} has no generated audio (offscreen takes another clip's)")


def loop_examples(ex: torch.Tensor, count: int, real: int | None = None) -> torch.Tensor:
    """The first ``real`` (default all) rows of ``ex`` repeated from the start to ``count`` rows."""
    real = ex.shape[0] if real is None else max(1, min(int(real), ex.shape[0]))
    idx = torch.arange(count) % real
    return ex[:real][idx].contiguous()
