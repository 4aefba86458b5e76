"""Sounds of a synthetic clip: one recipe per category, per-second gating, mixing and wav output.

Every source is synthesised for the whole clip (phase-continuous), normalised to unit RMS, then gated on the
seconds in which its object sounds: the gate is 1 inside a sounding second and 0 elsewhere, with 10 ms
raised-cosine ramps placed *inside* the sounding seconds, so nothing of a source leaks into a second in which its
object is silent. The mix is the sum of the gated sources (each at its own level) plus low white background noise
that runs through the whole clip; a silent second therefore holds background noise only.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np

from avsegcli.synth.categories import SoundSpec

SAMPLE_RATE = 16000
#: highest partial kept (the top VGGish mel band ends at 7500 Hz)
MAX_PARTIAL_HZ = 7400.0
RAMP_SECONDS = 0.01


def _time(seconds: float, sr: int) -> np.ndarray:
    return np.arange(int(round(seconds * sr)), dtype=np.float64) / sr


def _event_phase(t: np.ndarray, rate: float, offset: float) -> np.ndarray:
    """Seconds since the last event of a periodic train (``rate`` per second, first event at ``offset``)."""
    return np.mod(t - offset, 1.0 / rate)


def _decay_env(tau: np.ndarray, decay: float, attack: float = 0.005) -> np.ndarray:
    return np.minimum(1.0, tau / attack) * np.exp(-tau / decay)


def _harmonic(t: np.ndarray, f0: float, harmonics: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    out = np.zeros_like(t)
    for k, a in enumerate(harmonics, start=1):
        if k * f0 <= MAX_PARTIAL_HZ:
            out += a * np.sin(2 * math.pi * k * f0 * t + rng.uniform(0, 2 * math.pi))
    return out


def band_noise(rng: np.random.Generator, n: int, centre: float, width: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """White noise band-passed (in the FFT domain) to ``centre * (1 +- width)`` with smooth edges: ``[n]``."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr)
    lo, hi = centre * (1 - width), centre * (1 + width)
    edge = 0.25 * (hi - lo)
    w = np.clip((f - lo) / edge + 0.5, 0, 1) * np.clip((hi - f) / edge + 0.5, 0, 1)
    return np.fft.irfft(spec * np.sin(0.5 * math.pi * w) ** 2, n)


def category_sound(spec: SoundSpec, seconds: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The continuous sound of one category for a whole clip: ``[seconds * sr]`` float64 with unit RMS.

    Each clip jitters the recipe a little (pitch +-3 %, rate +-10 %, event timing, phases), so a category
    sounds alike, but not identical, across clips.
    """
    t = _time(seconds, sr)
    f = spec.freq * rng.uniform(0.97, 1.03)
    rate = spec.rate * rng.uniform(0.9, 1.1) if spec.rate else 0.0
    offset = rng.uniform(0, 1.0 / rate) if rate else 0.0
    kind = spec.kind
    if kind == "pluck":
        x = _harmonic(t, f, spec.harmonics, rng) * _decay_env(_event_phase(t, rate, offset), spec.decay)
    elif kind == "noise_am":
        x = band_noise(rng, t.size, f, spec.width, sr) * (1 + 0.6 * np.sin(2 * math.pi * rate * t)) / 1.6
    elif kind == "bursts":  # barks: flat bursts with a falling pitch
        tau = _event_phase(t, rate, offset)
        gate = np.clip(tau / 0.01, 0, 1) * np.clip((spec.decay - tau) / 0.01, 0, 1)
        inst = f * (1.0 - 0.12 * np.clip(tau / spec.decay, 0, 1))
        phase = 2 * math.pi * np.cumsum(inst) / sr
        x = gate * sum(a * np.sin(k * phase) for k, a in enumerate(spec.harmonics, 1) if k * f <= MAX_PARTIAL_HZ)
    elif kind in ("notes", "struck"):
        x = _harmonic(t, f, spec.harmonics, rng) * _decay_env(_event_phase(t, rate, offset), spec.decay, 0.002)
    elif kind == "vibrato":
        phase = 2 * math.pi * f * t + (spec.width * f / rate) * np.sin(2 * math.pi * rate * t)
        x = np.sin(phase) * (1 + 0.2 * np.sin(2 * math.pi * 0.7 * t + rng.uniform(0, 6.3)))
    elif kind == "chirps":  # rising sweeps
        tau = _event_phase(t, rate, offset)
        gate = np.clip(tau / 0.005, 0, 1) * np.clip((spec.decay - tau) / 0.005, 0, 1)
        inst = f * (1 - spec.width / 2 + spec.width * np.clip(tau / spec.decay, 0, 1))
        x = gate * np.sin(2 * math.pi * np.cumsum(inst) / sr)
    elif kind == "noise_bursts":
        x = band_noise(rng, t.size, f, spec.width, sr) * _decay_env(_event_phase(t, rate, offset), spec.decay, 0.002)
    else:
        raise ValueError(f"unknown sound kind {kind!r}")
    rms = float(np.sqrt(np.mean(x * x)))
    return x / rms if rms > 0 else x


def second_gate(active: np.ndarray, sr: int = SAMPLE_RATE, ramp: float = RAMP_SECONDS) -> np.ndarray:
    """``[T]`` bool per-second activity -> ``[T * sr]`` gain in [0, 1] with ramps inside the active seconds."""
    active = np.asarray(active, dtype=bool)
    n_ramp = max(1, int(round(ramp * sr)))
    up = 0.5 - 0.5 * np.cos(math.pi * (np.arange(n_ramp) + 0.5) / n_ramp)
    g = np.repeat(active.astype(np.float64), sr)
    for s in np.flatnonzero(active):
        if s == 0 or not active[s - 1]:
            g[s * sr:s * sr + n_ramp] = up
        if s == len(active) - 1 or not active[s + 1]:
            g[(s + 1) * sr - n_ramp:(s + 1) * sr] = up[::-1]
    return g


def mix(sources: np.ndarray, activity: np.ndarray, levels: np.ndarray, noise_std: float,
        rng: np.random.Generator, sr: int = SAMPLE_RATE, peak: float = 0.9) -> np.ndarray:
    """Mix ``sources`` ``[K, n]`` gated by ``activity`` ``[T, K]`` at ``levels`` ``[K]`` plus white noise.

    ``n`` must be ``T * sr``. The result ``[n]`` float64 is scaled down (as a whole) if its peak exceeds ``peak``.
    """
    sources = np.asarray(sources, dtype=np.float64)
    out = noise_std * rng.standard_normal(sources.shape[1])
    for k in range(sources.shape[0]):
        if activity[:, k].any():
            out += levels[k] * second_gate(activity[:, k], sr) * sources[k]
    top = float(np.abs(out).max(initial=0.0))
    return out * (peak / top) if top > peak else out


def mel_band(freq_hz: float) -> int:
    """The VGGish mel band (0..63, 125-7500 Hz, HTK mel) whose centre is nearest to ``freq_hz``."""
    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(125.0), mel(7500.0)
    step = (hi - lo) / 65.0  # 64 triangles on 66 evenly spaced edges
    return int(min(63, max(0, round((mel(freq_hz) - lo) / step - 1))))


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> little-endian int16 (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(x) * 32767.0), -32768, 32767).astype("<i2")


def write_wav(path: str | Path, pcm: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write mono 16-bit PCM ``pcm`` to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return path
