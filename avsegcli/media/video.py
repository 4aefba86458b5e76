"""Frame decoding with decord, in windows of explicit frame indices.

:class:`VideoSource` wraps ``decord.VideoReader`` (CPU context) so that

* every decord exception becomes a :class:`~avsegcli.errors.MediaError` with a one-line reason;
* frames are fetched only by ``get(indices)`` (``VideoReader.get_batch``), so a caller that
  walks a long video in windows holds one window of raw frames at a time;
* decord's decoding thread runs ahead of the frames asked for (its reader pushes packets in a
  loop while the worker lags, and the worker keeps decoding them after ``get_batch`` returns:
  decord issues #157, #197, #208), and the decoded backlog stays in ffmpeg's buffer pools until
  the reader is freed: at 720p that was gigabytes after a few minutes. :meth:`iter_windows`
  therefore (a) parks the decoder (``seek(0)``, which stops the worker and drops its queues)
  after a window whenever re-seeking is cheap (see there), and (b) as a safety
  valve, reopens the reader between windows whenever the process grew by more than
  ``DECODER_MEMORY_BUDGET_MB`` since it was opened (a packet index scan, 0.1-1 s for an hour of
  video, plus decoding from the keyframe before the next window). Memory then stays flat with
  the video's length; what one window's run-ahead costs remains (it grows with CPU contention:
  about 0.5-1.5 GB at 720p and 0.2-0.9 GB at 320x240 on 2 busy cores);
* a decoder that fails with decord's default frame threading (VP9 does: decord does not handle
  the decoder's EAGAIN) is reopened once single-threaded and the window decoded again;
* containers without a frame count *and* without an average frame rate (variable-frame-rate
  Matroska/WebM), which decord refuses ("broken metadata"), are remuxed once, without
  re-encoding (``-c copy``), into a temporary MP4 that decord can index; the temporary file is
  removed by :meth:`close`;
* what decord cannot open or copy out (AV1, which its ffmpeg cannot decode; Theora in Ogg that
  cannot be remuxed; pictures as small as 16x16) is decoded by the bundled ffmpeg instead
  (:class:`~avsegcli.media.ffdecode.FFmpegFrames`: same frame numbering and timestamps).
  ``AVSEG_VIDEO_DECODER=ffmpeg`` (or ``decoder="ffmpeg"``) forces that path, ``=decord`` forbids it;
* decord's ffmpeg log is silenced (``decord.logging.QUIET``) and its internal errors are mapped to
  reasons in our words ("damaged at frame k of N", ...), never shown as they are.

Frame ``i`` is the ``i``-th frame in presentation order (decord sorts packets by pts), and
``frame_times[i]`` its presentation time in seconds from the stream start.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from avsegcli.errors import MediaError
from avsegcli.media.ffdecode import TIME_DECIMALS, FFmpegFrames, locate_damage
from avsegcli.media.ffmpeg import ffmpeg_exe, list_streams

#: between windows, reopen the decord reader once the process has grown by this much since it was
#: opened (see VideoSource): decord decodes ahead of what was asked when its worker thread lags,
#: and ffmpeg keeps the frame buffers of that backlog pooled until the reader is freed.
DECODER_MEMORY_BUDGET_MB = 512.0


def rss_mb() -> float | None:
    """Resident memory of this process in MiB (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


#: ``AVSEG_VIDEO_DECODER``: auto (decord, ffmpeg where decord cannot), decord (never ffmpeg), ffmpeg (always)
DECODER_ENV = "AVSEG_VIDEO_DECODER"
DECODERS = ("auto", "decord", "ffmpeg")


def _decord():
    try:  # lazy: decord loads its native library and its own ffmpeg; only decoding needs them
        import decord
    except ImportError as err:  # pragma: no cover - decord is a hard dependency
        raise MediaError(f"decord is not installed ({err})") from None
    decord.logging.set_level(decord.logging.QUIET)  # its ffmpeg would print decoder noise on our stderr
    return decord


class _UseFFmpeg(MediaError):
    """decord cannot read this file but ffmpeg may (caught by VideoSource, which then decodes with ffmpeg)."""


def decoder_choice(decoder: str | None = None) -> str:
    choice = (decoder or os.environ.get(DECODER_ENV) or "auto").strip().lower()
    if choice not in DECODERS:
        raise MediaError(f"{DECODER_ENV} must be one of {', '.join(DECODERS)}, not {choice!r}")
    return choice


def _short(err: BaseException) -> str:
    """decord's messages carry a '[time] file.cc:line: ' prefix and sometimes a stack trace."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if ": " in text and text.startswith("["):
        text = text.split(": ", 1)[1]
    return text.strip()


def _reason(err: BaseException) -> str:
    """decord's internal error text in our words (its 'Check failed: ...' lines are for its developers)."""
    text = _short(err)
    low = text.lower()
    if "avcodec_send_packet" in low or "error sending packet" in low:
        return "the decoder rejected its data"
    if "avcodec_receive_frame" in low or "error receiving" in low:
        return "the decoder could not produce the frame"
    if "av_read_frame" in low or "read frame" in low:
        return "packets cannot be read"
    if "check failed" in low or "decord" in low or ".cc:" in low:
        return "the decoder failed"
    return text[:120]


def _keyframe_before(keys: np.ndarray, frame: int) -> int:
    """The last keyframe at or before ``frame`` (0 when unknown)."""
    i = int(np.searchsorted(keys, frame, side="right")) - 1
    return int(keys[i]) if i >= 0 else 0


class VideoSource:
    """A decord reader on ``path``'s (first) video stream. Use as a context manager.

    Attributes: ``num_frames`` (int), ``fps`` (average, float), ``frame_times`` (``[num_frames]``
    float64 seconds), ``frame_size`` (``(H, W)`` of decoded frames).
    """

    def __init__(self, path: str | Path, *, num_threads: int = 0, decoder: str | None = None) -> None:
        self.path = Path(path)
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._target = str(self.path)
        self._threads = int(num_threads)
        self._ff = None  # FFmpegFrames when ffmpeg decodes instead of decord
        self._vr = None
        self.reopens = 0
        self.backend = "decord"
        self._choice = decoder_choice(decoder)
        if self._choice == "ffmpeg":
            self._use_ffmpeg()
            return
        try:
            self._vr = self._open(self._threads)
            self._rss_at_open = rss_mb()
            self.num_frames = int(len(self._vr))
            self.fps = float(self._vr.get_avg_fps())
            if self.num_frames < 1:
                raise MediaError("video stream has no frames", path=self.path)
            ts = self._vr.get_frame_timestamp(np.arange(self.num_frames))[:, 0]
            self.frame_times = np.round(ts.astype(np.float64), TIME_DECIMALS)
            first = self.get([0])
        except _UseFFmpeg as why:
            self.close()
            if self._choice == "decord":
                raise MediaError(why.reason, path=self.path) from None
            self._use_ffmpeg()
            return
        except MediaError:
            self.close()
            raise
        except Exception as err:
            self.close()
            raise MediaError(f"truncated or corrupt video ({_reason(err)})", path=self.path) from None
        if self._ff is not None:  # get() switched to ffmpeg on the first frame
            return
        self.frame_size = (int(first.shape[1]), int(first.shape[2]))
        if not np.isfinite(self.fps) or self.fps <= 0:
            span = self.frame_times[-1] - self.frame_times[0]
            self.fps = (self.num_frames - 1) / span if span > 0 else 1.0

    def _use_ffmpeg(self) -> None:
        """Decode with the bundled ffmpeg from now on (its own packet index; same numbering as decord's)."""
        self._vr = None
        listing = list_streams(self.path)
        if not listing.video:
            raise MediaError("has no video stream", path=self.path)
        stream = listing.video[0]
        self._ff = FFmpegFrames(self.path, codec=stream["codec"])
        self.backend = "ffmpeg"
        self.num_frames = self._ff.num_frames
        self.frame_times = self._ff.frame_times
        self.fps = float(stream["fps"]) if stream.get("fps") else self._ff.fps
        self.frame_size = self._ff.frame_size
        self._ff.get([0])  # fails here, with a reason, when ffmpeg cannot decode it either

    def _open(self, threads: int):
        decord = _decord()
        try:
            return decord.VideoReader(self._target, ctx=decord.cpu(0), num_threads=threads)
        except decord.DECORDError as err:
            reason = _short(err)
            if "broken metadata" in reason and self._tmpdir is None:
                return self._open_remuxed(decord, threads)
            if "av_read_frame failed" in reason:
                raise MediaError("truncated or corrupt video (packets cannot be read)", path=self.path) from None
            # "cannot find video stream" (a codec decord's ffmpeg lacks, e.g. AV1) and the rest: try ffmpeg
            raise _UseFFmpeg(f"decord cannot open it ({reason[:120]})", path=self.path) from None
        except Exception as err:  # decord raises plain RuntimeError/ValueError on some inputs
            raise _UseFFmpeg(f"decord cannot open it ({_reason(err)})", path=self.path) from None

    def _open_remuxed(self, decord, threads: int):
        """Copy the video stream into a temporary MP4 (which stores a frame count) and open that."""
        self._tmpdir = tempfile.TemporaryDirectory(prefix="avseg-remux-")
        target = os.path.join(self._tmpdir.name, "video.mp4")
        cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", str(self.path),
               "-map", "0:v:0", "-c", "copy", "-f", "mp4", target]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              check=False)
        if proc.returncode != 0:  # e.g. Theora does not go into MP4: ffmpeg decodes it instead
            raise _UseFFmpeg("no frame count or frame rate, and no MP4 remux", path=self.path)
        self._target = target
        try:
            return decord.VideoReader(target, ctx=decord.cpu(0), num_threads=threads)
        except Exception as err:
            raise _UseFFmpeg(f"decord cannot open it ({_reason(err)})", path=self.path) from None

    def get(self, indices) -> np.ndarray:
        """Decode frames ``indices`` (any order, repeats allowed): ``[len, H, W, 3]`` uint8 RGB."""
        if self._ff is not None:
            return self._ff.get(indices)
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        if not idx:
            h, w = getattr(self, "frame_size", (0, 0))
            return np.zeros((0, h, w, 3), dtype=np.uint8)
        bad = [i for i in idx if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"frame index {bad[0]} out of range [0, {self.num_frames})")
        try:
            return self._vr.get_batch(idx).asnumpy()
        except Exception as err:
            reason = _short(err)
            if "from_size == to_size" in reason or "ArrayCopy" in reason:
                # decord's frame copy fails on very small pictures (16x16): ffmpeg decodes those
                if self._choice == "decord":
                    raise MediaError(f"cannot decode frames with decord: {_reason(err)}", path=self.path) from None
                self._use_ffmpeg()
                return self._ff.get(idx)
            if self._threads != 1:
                # decord does not retry when a frame-threaded decoder (e.g. VP9) answers EAGAIN;
                # a single-threaded decoder never does: reopen once that way and retry.
                self._threads = 1
                self._vr = self._open(1)
                return self.get(idx)
            # where is the damage? ffmpeg decodes single-threaded up to its first error (decord's reader runs
            # ahead of the frames asked for, so its failure does not say which frame is bad)
            self._vr = None
            at = locate_damage(self.path)
            if at is None and self._choice != "decord":  # ffmpeg decodes it all without an error: let it
                self._use_ffmpeg()
                return self._ff.get(idx)
            where = f"at frame {at} of {self.num_frames}" if at is not None else f"near frame {idx[0]} of {self.num_frames}"
            raise MediaError(f"damaged {where} (the decoder rejected its data)", path=self.path) from None

    def release_buffers(self, budget_mb: float | None = DECODER_MEMORY_BUDGET_MB) -> bool:
        """Reopen the decord reader if the process grew by more than ``budget_mb`` MiB since it
        was opened (``budget_mb=None``: always). Frees decord's decoded backlog; returns whether
        it reopened. Frame numbering and timestamps are unchanged.
        """
        if self._ff is not None:
            return False
        now = rss_mb()
        if budget_mb is not None and (now is None or self._rss_at_open is None
                                      or now - self._rss_at_open <= budget_mb):
            return False
        self._vr = None  # frees the old reader (and its buffer pools) before opening a new one
        self._vr = self._open(self._threads)
        self.reopens += 1
        self._rss_at_open = rss_mb()
        return True

    def iter_windows(self, indices, window: int, *, budget_mb: float | None = DECODER_MEMORY_BUDGET_MB):
        """Yield ``(positions, frames)`` for consecutive slices of ``indices`` of length ``window``.

        ``positions`` is the ``slice`` into ``indices``; ``frames`` is ``[<=window, H, W, 3]`` uint8.
        After decoding a window, before handing it out, the decoder is parked (:meth:`park`)
        whenever that costs little: when the next window starts in another GOP (decord would
        seek there anyway), on a keyframe, or -- for sparse windows -- within as many frames of
        its keyframe as this window spanned (re-decoding at most doubles the work). The reader
        is reopened instead when memory grew past ``budget_mb`` (:meth:`release_buffers`;
        ``float("inf")`` never reopens, ``None`` always does).
        """
        indices = np.asarray(indices, dtype=np.int64)
        window = max(1, int(window))
        keys = np.asarray(sorted(self._keyframes()), dtype=np.int64)
        for start in range(0, len(indices), window):
            sl = slice(start, min(start + window, len(indices)))
            frames = self.get(indices[sl])
            nxt = sl.stop
            if nxt < len(indices) and not self.release_buffers(budget_mb):
                last, first = int(indices[nxt - 1]), int(indices[nxt])
                key_last, key_next = _keyframe_before(keys, last), _keyframe_before(keys, first)
                sparse = first != last + 1
                span = last - int(indices[start]) + 1
                if key_next != key_last or first == key_next or (sparse and first - key_next <= span):
                    self.park()
            yield sl, frames

    def _keyframes(self) -> list[int]:
        if self._ff is not None:
            return [int(k) for k in self._ff.keyframes]
        try:
            return [int(k) for k in self._vr.get_key_indices()]
        except Exception:
            return []

    def park(self) -> None:
        """Stop decord's background decoding (``seek(0)`` clears its queues; decord issues #157,
        #208). The next ``get`` seeks to the keyframe before its first frame again."""
        if self._ff is not None:
            return
        try:
            self._vr.seek(0)
        except Exception as err:
            raise MediaError(f"cannot seek: {_short(err)}", path=self.path) from None

    def close(self) -> None:
        self._vr = None
        if getattr(self, "_ff", None) is not None:
            self._ff.close()
        if getattr(self, "_tmpdir", None) is not None is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
