"""The bundled ffmpeg binary and what ``ffmpeg -i`` says about a file: the bottom of the media room.

``ffmpeg_exe()`` is the binary bundled by ``imageio-ffmpeg`` (no system ffmpeg needed). ``list_streams(path)``
runs ``ffmpeg -hide_banner -i path`` and parses what it prints to stderr: container, duration and one line per
stream. That pass rejects missing, empty, non-media and unreadable files *before* a decoder sees them (decord can
crash or hang on garbage). Probing (:mod:`avsegcli.media.probe`), decoding (:mod:`avsegcli.media.video`,
:mod:`avsegcli.media.ffdecode`) and audio (:mod:`avsegcli.media.audio`) build on it; it imports none of them.

Every failure is a :class:`~avsegcli.errors.MediaError` carrying the path and a one-line reason.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import imageio_ffmpeg

from avsegcli.errors import MediaError

#: seconds ffmpeg may take to list a file's streams before we give up
PROBE_TIMEOUT_S = 60.0

_CHANNELS_BY_LAYOUT = {
    "mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "4.0": 4, "quad": 4, "quad(side)": 4,
    "3.1": 4, "5.0": 5, "5.0(side)": 5, "4.1": 5, "5.1": 6, "5.1(side)": 6, "6.0": 6, "6.0(front)": 6,
    "hexagonal": 6, "6.1": 7, "6.1(back)": 7, "6.1(front)": 7, "7.0": 7, "7.0(front)": 7, "7.1": 8,
    "7.1(wide)": 8, "7.1(wide-side)": 8, "octagonal": 8, "downmix": 2,
}

_INPUT_RE = re.compile(r"^Input #0, (?P<fmt>.+?), from '")
_DURATION_RE = re.compile(r"^\s*Duration: (?:(?P<h>\d+):(?P<m>\d+):(?P<s>[\d.]+)|N/A)")
_STREAM_RE = re.compile(
    r"^\s*Stream #0:(?P<idx>\d+)(?:\[[^\]]*\])?(?:\([^)]*\))?: (?P<kind>Video|Audio|Subtitle|Data|Attachment): "
    r"(?P<codec>[^\s,]+)(?P<rest>.*)$"
)
_SIZE_RE = re.compile(r"(?:^|[ ,])(?P<w>\d{1,5})x(?P<h>\d{1,5})(?=[ ,\[]|$)")
_FPS_RE = re.compile(r"(?P<fps>[\d.]+k?) fps")
_RATE_RE = re.compile(r"(?P<sr>\d+) Hz, (?P<layout>[^,]+)")
_CONTEXT_RE = re.compile(r"^\[[^\]]*\]\s*")


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with ``imageio-ffmpeg`` (no system ffmpeg needed)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class AudioStreamInfo:
    """One audio stream as ffmpeg lists it (``index`` is the stream number in the container)."""

    index: int
    codec: str
    sample_rate: int
    channels: int
    layout: str


@dataclass
class StreamListing:
    """What ``ffmpeg -i`` lists: ``container`` (format name), ``duration`` (seconds, None when unknown), one dict
    per video stream (``index``, ``codec``, ``fps`` or None, ``width``, ``height``; attached pictures left out) and
    the audio streams."""

    container: str | None = None
    duration: float | None = None
    video: list[dict] = field(default_factory=list)
    audio: list[AudioStreamInfo] = field(default_factory=list)


def log_lines(stderr: str) -> list[str]:
    """ffmpeg's non-empty log lines, stripped and without their ``[ctx @ 0x..]`` prefixes."""
    lines = [_CONTEXT_RE.sub("", ln).strip() for ln in stderr.splitlines()]
    return [ln for ln in lines if ln]


def reason_from_stderr(stderr: str) -> str:
    """The most telling line of an ffmpeg failure, without ffmpeg's ``[ctx @ 0x..]`` prefixes."""
    lines = log_lines(stderr)
    for ln in lines:
        if ln.startswith("Error opening input:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else "ffmpeg could not read it"


def parse_listing(stderr: str) -> StreamListing:
    """``ffmpeg -i``'s stderr -> :class:`StreamListing` (the first input only)."""
    out = StreamListing()
    for line in stderr.splitlines():
        if out.container is None and (m := _INPUT_RE.match(line)):
            out.container = m.group("fmt")
            continue
        if out.container is None:
            continue
        if line.startswith("Input #1") or line.startswith("Output #"):
            break
        if out.duration is None and (m := _DURATION_RE.match(line)):
            if m.group("h") is not None:
                out.duration = int(m.group("h")) * 3600 + int(m.group("m")) * 60 + float(m.group("s"))
            continue
        m = _STREAM_RE.match(line)
        if not m:
            continue
        idx, kind, codec, rest = int(m.group("idx")), m.group("kind"), m.group("codec"), m.group("rest")
        if kind == "Video" and "(attached pic)" not in rest:
            size = _SIZE_RE.search(rest)
            fps = _FPS_RE.search(rest)
            fps_val = None
            if fps:
                txt = fps.group("fps")
                fps_val = float(txt[:-1]) * 1000 if txt.endswith("k") else float(txt)
            out.video.append({
                "index": idx, "codec": codec, "fps": fps_val,
                "width": int(size.group("w")) if size else 0, "height": int(size.group("h")) if size else 0,
            })
        elif kind == "Audio":
            rate = _RATE_RE.search(rest)
            sr, layout = (int(rate.group("sr")), rate.group("layout").strip()) if rate else (0, "")
            chan = re.match(r"(\d+) channels", layout)
            channels = int(chan.group(1)) if chan else _CHANNELS_BY_LAYOUT.get(layout, 0)
            out.audio.append(AudioStreamInfo(idx, codec, sr, channels, layout))
    return out


def check_file(path: str | Path) -> Path:
    """Fail early, with a clear reason, for a path that is missing, not a file, or empty."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise MediaError("symbolic link loop (too many levels of symbolic links)", path=p) from None
        if err.errno == errno.ENOENT:
            reason = "broken symbolic link (its target does not exist)" if os.path.islink(p) else "file not found"
            raise MediaError(reason, path=p) from None
        if err.errno in (errno.EACCES, errno.EPERM):
            raise MediaError("cannot be read (permission denied)", path=p) from None
        if err.errno == errno.ENAMETOOLONG:
            raise MediaError("file name too long", path=p) from None
        raise MediaError(f"cannot be read ({err.strerror or err})", path=p) from None
    if stat.S_ISDIR(st.st_mode) and not os.access(p, os.R_OK | os.X_OK):
        raise MediaError("a folder that cannot be read (permission denied)", path=p)
    if not stat.S_ISREG(st.st_mode):
        raise MediaError("not a regular file (a folder)" if stat.S_ISDIR(st.st_mode) else "not a regular file", path=p)
    if st.st_size == 0:
        raise MediaError("file is empty (0 bytes)", path=p)
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as err:
        raise MediaError(f"file is not readable ({err.strerror or err})", path=p) from None
    return p


def list_streams(path: str | Path) -> StreamListing:
    """Run ``ffmpeg -i`` on ``path`` and parse its container, duration and streams."""
    p = check_file(path)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(p)]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise MediaError(f"ffmpeg took over {PROBE_TIMEOUT_S:.0f} s to read the file header", path=p) from None
    except OSError as err:
        raise MediaError(f"cannot run ffmpeg: {err}", path=p) from None
    stderr = proc.stderr.decode("utf-8", errors="replace")
    listing = parse_listing(stderr)
    if listing.container is None:
        reason = reason_from_stderr(stderr)
        if "Invalid data" in reason or "moov atom not found" in stderr:
            reason = "not a media file, or truncated/corrupt (ffmpeg: " + reason + ")"
        raise MediaError(reason, path=p)
    if listing.container in ("tty",) or not (listing.video or listing.audio):
        raise MediaError("not a media file: no audio or video stream", path=p)
    return listing
