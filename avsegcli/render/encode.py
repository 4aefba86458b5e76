"""Writing rendered frames: an H.264 MP4 through the bundled ffmpeg (frames piped raw), or a folder of PNGs.

Video: ``rgb24`` frames go to ffmpeg's stdin one at a time (never all in memory) at the source frame rate
as an exact rational (25, 30000/1001, ...), encoded with libx264 to ``yuv420p``; an odd width or height is
padded by one pixel (the last column/row repeated). Audio: the source's first audio stream is copied when
the output container can hold its codec (see :data:`COPYABLE`), otherwise re-encoded to AAC.

Both writers build under a hidden temporary name beside the target and rename it into place only when
complete; an error or interrupt removes the temporary.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from avsegcli.errors import AvsegError
from avsegcli.media.ffmpeg import ffmpeg_exe

#: output suffix -> audio codecs (ffmpeg names) stream-copied into it; others are re-encoded to AAC
COPYABLE: dict[str, frozenset[str]] = {
    ".mp4": frozenset({"aac", "mp3", "ac3", "eac3"}),
    ".m4v": frozenset({"aac", "mp3", "ac3", "eac3"}),
    ".mov": frozenset({"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le"}),
    ".mkv": frozenset({"aac", "mp3", "ac3", "eac3", "flac", "opus", "vorbis", "pcm_s16le", "pcm_s24le", "alac"}),
}
#: AAC bit rate when the audio has to be re-encoded
AAC_BITRATE = "192k"
_FRAME_NAME = re.compile(r"^\d{6}\.png$")


def rational_fps(fps: float) -> Fraction:
    """The exact rate behind a float: 25.0 -> 25, 29.97003 -> 30000/1001, 23.976 -> 24000/1001."""
    fps = float(fps)
    if fps <= 0 or not np.isfinite(fps):
        raise AvsegError(f"video has no usable frame rate ({fps})")
    for den in (1, 1001):
        num = round(fps * den / (1000 if den == 1001 else 1)) * (1000 if den == 1001 else 1)
        if num > 0 and abs(num / den - fps) < 5e-4 * max(1.0, fps / 30):
            return Fraction(num, den)
    return Fraction(fps).limit_denominator(100000)


def audio_plan(codec: str | None, out: Path) -> str:
    """``"copy"``, ``"aac"`` (re-encode) or ``"none"`` for a source audio codec and an output file."""
    if not codec:
        return "none"
    return "copy" if codec in COPYABLE.get(out.suffix.lower(), frozenset()) else "aac"


def even_pad(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row/column once where the height/width is odd (yuv420p needs even sizes)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _partial(target: Path) -> Path:
    return target.with_name(f".{target.stem}.partial{target.suffix}")


class VideoWriter:
    """``ffmpeg -f rawvideo -i pipe:0 [-i source] -c:v libx264 ... out.mp4``; feed frames with :meth:`write`."""

    def __init__(self, out: str | Path, *, width: int, height: int, fps: Fraction, audio_from: str | Path | None = None,
                 audio: str = "none", crf: int = 18, preset: str = "veryfast",
                 audio_clip: tuple[float, float] | None = None) -> None:
        """``audio_clip``: ``(start, duration)`` seconds of the source's audio to use (render --start/--end)."""
        self.out = Path(out)
        if self.out.suffix.lower() not in COPYABLE:
            raise AvsegError(f"unsupported output type {self.out.suffix or '(none)'!r}: use .mp4, .m4v, .mov or .mkv",
                             path=self.out)
        if not self.out.parent.is_dir():
            raise AvsegError("output folder does not exist", path=self.out.parent)
        self.tmp = _partial(self.out)
        self.width, self.height = width + width % 2, height + height % 2
        self.frames = 0
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
               "-framerate", f"{fps.numerator}/{fps.denominator}", "-i", "pipe:0"]
        maps = ["-map", "0:v:0"]
        if audio != "none" and audio_from is not None:
            if audio_clip is not None:
                cmd += ["-ss", f"{audio_clip[0]:.6f}", "-t", f"{audio_clip[1]:.6f}"]
            cmd += ["-i", str(audio_from)]
            maps += ["-map", "1:a:0"]
            maps += ["-c:a", "copy"] if audio == "copy" else ["-c:a", "aac", "-b:a", AAC_BITRATE]
        cmd += maps + ["-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)), "-pix_fmt", "yuv420p"]
        if self.out.suffix.lower() in (".mp4", ".m4v", ".mov"):
            cmd += ["-movflags", "+faststart"]
        cmd += [str(self.tmp)]
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        except OSError as err:
            self._err.close()
            raise AvsegError(f"cannot run ffmpeg: {err}", path=self.out) from None

    def _ffmpeg_error(self, rc: int) -> AvsegError:
        self._err.seek(0)
        lines = [ln for ln in self._err.read().decode(errors="replace").strip().splitlines() if ln.strip()]
        return AvsegError(f"ffmpeg failed to encode: {lines[-1] if lines else f'exit code {rc}'}", path=self.out)

    def write(self, frame: np.ndarray) -> None:
        """Append one ``[H, W, 3]`` uint8 frame (odd sizes are padded to the writer's even size)."""
        frame = even_pad(frame)
        try:
            self.proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        except (BrokenPipeError, OSError):
            rc = self.proc.wait()
            err = self._ffmpeg_error(rc)
            self.abort()
            raise err from None
        self.frames += 1

    def finish(self) -> Path:
        """Close the pipe, wait for ffmpeg and rename the temporary file to the target."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        rc = self.proc.wait()
        if rc != 0:
            err = self._ffmpeg_error(rc)
            self.abort()
            raise err
        self._err.close()
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        """Stop ffmpeg and remove the temporary file."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if not self._err.closed:
            self._err.close()
        self.tmp.unlink(missing_ok=True)


class FrameFolderWriter:
    """Overlay PNGs ``000000.png, 000001.png, ...`` (one per source frame) in a folder, published when complete.

    A folder that already exists is replaced only if it is empty or holds nothing but such PNGs.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if self.folder.exists():
            if not self.folder.is_dir():
                raise AvsegError("exists and is not a folder", path=self.folder)
            other = [p.name for p in self.folder.iterdir() if not _FRAME_NAME.match(p.name)]
            if other:
                raise AvsegError(f"folder holds other files (e.g. {other[0]}): choose a new or empty folder",
                                 path=self.folder)
        if not self.folder.parent.is_dir():
            raise AvsegError("parent folder does not exist", path=self.folder.parent)
        self.tmp = self.folder.with_name(f".{self.folder.name}.partial")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        Image.fromarray(frame).save(self.tmp / f"{self.frames:06d}.png", compress_level=1)
        self.frames += 1

    def finish(self) -> Path:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        os.replace(self.tmp, self.folder)
        return self.folder

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
