"""Byte-reproducible file output for synthetic clips: PNG/JPEG images, pickled log-mels and H.264+AAC mp4.

* ``.pkl`` log-mels are pickled torch tensors, as the benchmark's files are (``pickle.dump(tensor)``). Plain
  pickling of a tensor is not reproducible: torch names the storage inside the pickle after its memory address.
  :func:`dump_tensor_pickle` renames it ``'0'``; the file still loads with ``pickle.load`` and with
  :func:`avsegcli.data.load_log_mel_pickle`.
* mp4: the bundled ffmpeg, libx264 (single thread, CRF ``crf``, yuv420p) and AAC (mono, 16 kHz), bit-exact
  flags and no metadata, so the same frames and wav give the same bytes with the same ffmpeg build. Frames are
  fed on stdin from a thread, so the caller can write other files while ffmpeg encodes.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avsegcli.errors import AvsegError
from avsegcli.media.ffmpeg import ffmpeg_exe


def save_png(path: Path, array: np.ndarray, compress_level: int = 1) -> None:
    """``[H, W]`` (greyscale) or ``[H, W, 3]`` uint8 -> PNG (parents created; fast zlib level by default)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=compress_level)


def save_jpeg(path: Path, array: np.ndarray, quality: int = 95) -> None:
    """``[H, W, 3]`` uint8 -> JPEG (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="JPEG", quality=quality)


class _StablePickler(pickle.Pickler):
    """Pickles tensors like ``pickle.dump`` does, with the storage key fixed to ``'0'``."""

    def reducer_override(self, obj):
        if isinstance(obj, (torch.storage.TypedStorage, torch.UntypedStorage)):
            buf = io.BytesIO()
            torch.save(obj, buf, _use_new_zipfile_serialization=False)
            raw = buf.getvalue()
            untyped = obj._untyped_storage if isinstance(obj, torch.storage.TypedStorage) else obj
            key = str(untyped._cdata).encode()
            pattern = b"X" + struct.pack("<I", len(key)) + key  # BINUNICODE of the key
            if raw.count(pattern) < 1:
                raise RuntimeError("unexpected torch legacy serialisation layout")
            raw = raw.replace(pattern, b"X" + struct.pack("<I", 1) + b"0")
            return (torch.storage._load_from_bytes, (raw,))
        return NotImplemented


def dump_tensor_pickle(path: Path, tensor: torch.Tensor) -> None:
    """Pickle ``tensor`` (contiguous CPU copy) to ``path`` reproducibly (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    _StablePickler(buf, protocol=4).dump(tensor.detach().cpu().contiguous().clone())
    path.write_bytes(buf.getvalue())


def mp4_command(out: Path, wav: Path, size: int, fps: int, crf: int = 16) -> list[str]:
    """The ffmpeg command that encodes raw RGB frames from stdin plus ``wav`` into ``out``."""
    return [
        ffmpeg_exe(), "-y", "-nostdin", "-hide_banner", "-v", "error", "-filter_threads", "1",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-r", str(fps), "-i", "pipe:0",
        "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p", "-threads", "1",
        "-c:a", "aac", "-b:a", "64k", "-ac", "1", "-ar", "16000",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
        "-movflags", "+faststart", "-f", "mp4", str(out),
    ]


class Mp4Job:
    """An mp4 being encoded in the background: ``Mp4Job(...).wait()`` raises AvsegError if ffmpeg failed.

    Writes to a temporary name beside ``out`` and renames it when ffmpeg succeeds.
    """

    def __init__(self, out: Path, frames: np.ndarray, wav: Path, fps: int, crf: int = 16) -> None:
        if frames.ndim != 4 or frames.shape[1] != frames.shape[2] or frames.shape[1] % 2:
            raise ValueError(f"frames must be [N, S, S, 3] with an even S, got {frames.shape}")
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(self.out.name + ".part")
        self._err = tempfile.TemporaryFile()
        cmd = mp4_command(self.tmp, Path(wav), int(frames.shape[1]), int(fps), crf)
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        except OSError as err:
            self._err.close()
            raise AvsegError(f"cannot run ffmpeg: {err}", path=self.out) from None
        self._data = np.ascontiguousarray(frames, dtype=np.uint8)
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(memoryview(self._data).cast("B"))
        except (BrokenPipeError, OSError):
            pass  # ffmpeg died; wait() reports its message
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def wait(self) -> Path:
        """Block until the file is written; returns its path."""
        self._thread.join()
        rc = self.proc.wait()
        self._err.seek(0)
        msg = self._err.read().decode(errors="replace").strip().splitlines()
        self._err.close()
        self._data = None
        if rc != 0:
            self.tmp.unlink(missing_ok=True)
            raise AvsegError(f"ffmpeg could not write the mp4: {msg[-1] if msg else f'exit {rc}'}", path=self.out)
        os.replace(self.tmp, self.out)
        return self.out
