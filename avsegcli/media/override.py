"""Audio overrides for ``avseg run --audio``: segment a video while it hears something else.

* ``original`` (default): the video's own audio track (no override);
* ``silence``: every second is digital silence (the ``log(0.01)`` patch);
* ``noise``: white Gaussian noise, RMS :data:`~avsegcli.media.signals.NOISE_RMS` of full scale, second ``k``
  drawn from ``SeedSequence([seed, k])`` (the same noise for every video and every batch size);
* a file: the first audio stream of another media file, aligned from its start and looped (or cut) to the
  video's length: second ``k`` of the video hears samples ``[16000 k, 16000 k + 15600)`` of the file, taken modulo
  its length. The file's whole 16 kHz waveform is held in memory (a few MB per minute).

An :class:`AudioOverride` is a small picklable value (it travels to decode workers); :meth:`AudioOverride.stream`
gives an object with ``patch(k)`` and ``close()`` like :class:`~avsegcli.media.clip.ChunkStream`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avsegcli.errors import AvsegError
from avsegcli.media.audio import load_audio
from avsegcli.media.logmel import CHUNK_SPAN, SAMPLE_RATE, chunk_patch, silence_patch
from avsegcli.media.probe import probe
from avsegcli.media.signals import NOISE_RMS, noise_wave

AUDIO_KINDS = ("original", "silence", "noise")


@dataclass(frozen=True)
class AudioOverride:
    """What a run hears instead of the video's audio: ``kind`` 'silence', 'noise' or 'file' (with ``path``)."""

    kind: str
    path: str | None = None
    seed: int = 0

    def stream(self) -> Any:
        if self.kind == "silence":
            return _Silence()
        if self.kind == "noise":
            return _Noise(self.seed)
        return _Looped(str(self.path))

    def describe(self) -> dict[str, Any]:
        """The ``audio`` entry of ``meta.json``."""
        if self.kind == "noise":
            return {"source": "noise", "noise_rms": NOISE_RMS, "seed": self.seed}
        if self.kind == "file":
            return {"source": "file", "path": self.path, "alignment": "from its start, looped or cut to the video"}
        return {"source": self.kind}


def parse_audio(value: str | Path | None, seed: int = 0) -> AudioOverride | None:
    """``--audio`` -> None (``original``) or an override; a file must exist and have an audio stream
    (AvsegError otherwise)."""
    if value is None or str(value) == "original":
        return None
    text = str(value)
    if text in ("silence", "noise"):
        return AudioOverride(text, seed=int(seed))
    path = Path(text)
    if not path.is_file():
        raise AvsegError(f"--audio must be original, silence, noise or an existing media file; no such file", path=path)
    try:
        has_audio = probe(path).has_audio
    except AvsegError as err:
        raise AvsegError(f"--audio file cannot be read: {err.reason}", path=path) from None
    if not has_audio:
        raise AvsegError("--audio file has no audio stream", path=path)
    return AudioOverride("file", path=str(path.resolve()))


class _Silence:
    def patch(self, k: int) -> torch.Tensor:
        return silence_patch()

    def close(self) -> None:
        pass


class _Noise:
    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def patch(self, k: int) -> torch.Tensor:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, int(k)]))
        return chunk_patch(noise_wave(1.0, rng))

    def close(self) -> None:
        pass


class _Looped:
    def __init__(self, path: str) -> None:
        self.wave = load_audio(path)  # float32, as the video's own track is streamed

    def patch(self, k: int) -> torch.Tensor:
        n = self.wave.size
        if n == 0:
            return silence_patch()
        idx = (SAMPLE_RATE * int(k) + np.arange(CHUNK_SPAN)) % n
        return chunk_patch(self.wave[idx])

    def close(self) -> None:
        self.wave = np.zeros(0)
