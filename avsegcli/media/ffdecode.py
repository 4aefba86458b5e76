"""Frame decoding through the bundled ffmpeg binary, for what decord cannot decode.

decord links its own, older ffmpeg: it has no AV1 decoder (it reports "cannot find video stream"), cannot
index some containers (Theora in Ogg without a frame count: "broken metadata", and Theora does not remux into
MP4), and its frame copy fails on very small pictures (16x16: "from_size == to_size"). :class:`FFmpegFrames`
reads the same frames from the bundled ffmpeg instead:

* **index**: one packet scan without decoding (``-c copy -f framecrc``): every non-empty video packet is one
  frame, frames are packets sorted by presentation time, ``frame_times[i]`` is packet ``i``'s pts minus the
  first one's, in seconds -- the same numbering and timestamps decord gives where both work (tested);
* **frames**: one ``ffmpeg ... -fps_mode passthrough -f rawvideo -pix_fmt rgb24 pipe:1`` process that decodes
  every frame in presentation order; :meth:`FFmpegFrames.get` reads forward and keeps the frames asked for
  (asking for an earlier frame restarts the process). Memory is one frame plus the pipe.

ffmpeg's log is silenced (``-v error``, stderr captured into a temporary file) and mapped to reasons:
"unsupported codec X (no decoder in this build)", "damaged at frame k of N", ...
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from avsegcli.errors import MediaError
from avsegcli.media.ffmpeg import PROBE_TIMEOUT_S, ffmpeg_exe, log_lines

#: decimals kept of timestamps, ffmpeg's packet times and decord's float32 ones alike (1 us): 0.92000001 -> 0.92
TIME_DECIMALS = 6
_NOPTS = -(2**63)
_TB_RE = re.compile(r"^#tb 0: (\d+)/(\d+)")
_DIM_RE = re.compile(r"^#dimensions 0: (\d+)x(\d+)")
_CODEC_RE = re.compile(r"^#codec_id 0: (\S+)")


def _ffmpeg_reason(stderr: str, codec: str | None) -> str:
    """ffmpeg's error text -> our one-line reason."""
    low = stderr.lower()
    if "no decoder found" in low or "decoder not found" in low or re.search(r"decoder \(codec \S+\) not found", low):
        if not codec or codec in ("none", "unknown"):
            return "unsupported video codec (unknown to the bundled ffmpeg: no decoder in this build)"
        return f"unsupported codec {codec} (no decoder in this build)"
    if "matches no streams" in low:
        return "has no video stream"
    if "invalid data" in low or "error while decoding" in low or "corrupt" in low:
        return "damaged video data (the decoder rejected it)"
    lines = log_lines(stderr)
    return f"cannot decode video (ffmpeg: {lines[-1]})" if lines else "cannot decode video"


def scan_packets(path: str | Path) -> dict:
    """Packet index of the first video stream without decoding: ``{"times" [N] float64 s (presentation order,
    from the first frame), "keyframes" [K] int64, "codec", "width", "height", "fps"}``."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-i", str(path), "-map", "0:v:0",
           "-c", "copy", "-f", "framecrc", "pipe:1"]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=10 * PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise MediaError("ffmpeg took too long to index the video packets", path=path) from None
    out = proc.stdout.decode("utf-8", errors="replace")
    tb, width, height, codec = None, 0, 0, None
    pts, keys = [], []
    for line in out.splitlines():
        if line.startswith("#"):
            if m := _TB_RE.match(line):
                tb = (int(m.group(1)), int(m.group(2)))
            elif m := _DIM_RE.match(line):
                width, height = int(m.group(1)), int(m.group(2))
            elif m := _CODEC_RE.match(line):
                codec = m.group(1)
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 5 or cols[0] != "0":
            continue
        try:
            dts, p, size = int(cols[1]), int(cols[2]), int(cols[4])
        except ValueError:
            continue
        if size <= 0:  # an empty packet (a dropped frame, e.g. Theora) decodes to no picture
            continue
        flags = cols[6] if len(cols) > 6 else ""
        pts.append(p if p != _NOPTS else dts)
        keys.append(not flags.startswith("F=") or int(flags[2:], 16) & 1)
    if proc.returncode != 0 and not pts:
        raise MediaError(_ffmpeg_reason(proc.stderr.decode(errors="replace"), codec), path=path)
    if not pts or tb is None:
        raise MediaError("video stream has no frames", path=path)
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    ticks = np.asarray(pts, dtype=np.int64)[order]
    times = np.round((ticks - ticks[0]).astype(np.float64) * tb[0] / tb[1], TIME_DECIMALS)
    keyframes = np.nonzero(np.asarray(keys, dtype=bool)[order])[0].astype(np.int64)
    n = len(times)
    span = times[-1] - times[0]
    fps = (n - 1) / span if n > 1 and span > 0 else 1.0
    return {"times": times, "keyframes": keyframes, "codec": codec, "width": width, "height": height, "fps": fps}


def locate_damage(path: str | Path, timeout: float = 10 * PROBE_TIMEOUT_S) -> int | None:
    """Where ffmpeg's decoder first fails on ``path``'s first video stream: the number of frames it decoded before
    (``-xerror``, one thread, so the count is exact), or None when it decodes the whole stream without an error."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-threads", "1", "-xerror", "-i", str(path),
           "-map", "0:v:0", "-f", "framecrc", "pipe:1"]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return 0
    frames = sum(1 for ln in proc.stdout.decode("utf-8", errors="replace").splitlines() if ln and not ln.startswith("#"))
    if proc.returncode == 0 and not proc.stderr.strip():
        return None
    return frames


class FFmpegFrames:
    """Frames of ``path``'s first video stream decoded by ffmpeg; same attributes as decord's reader wrapper:
    ``num_frames``, ``fps`` (average), ``frame_times`` ``[N]`` float64 s, ``frame_size`` ``(H, W)``."""

    def __init__(self, path: str | Path, *, codec: str | None = None) -> None:
        self.path = Path(path)
        index = scan_packets(self.path)
        self.codec = codec or index["codec"]
        self.frame_times = index["times"]
        self.keyframes = index["keyframes"]
        self.num_frames = int(len(self.frame_times))
        self.fps = float(index["fps"])
        self._proc: subprocess.Popen | None = None
        self._err = None
        self._next = 0  # index of the frame the pipe gives next
        self.frame_size = (int(index["height"]), int(index["width"]))
        if self.frame_size[0] <= 0 or self.frame_size[1] <= 0:
            raise MediaError("video stream has no picture size", path=self.path)

    # -- the decoding process ---------------------------------------------------------------------------------

    def _start(self) -> None:
        self._stop()
        self._err = tempfile.TemporaryFile()
        h, w = self.frame_size
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-noautorotate", "-i", str(self.path),
               "-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough",
               "-vf", f"scale={w}:{h}:flags=bicubic", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._err)
        except OSError as err:
            raise MediaError(f"cannot run ffmpeg: {err}", path=self.path) from None
        self._next = 0

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            if self._proc.stdout:
                self._proc.stdout.close()
            self._proc = None
        if self._err is not None:
            self._err.close()
            self._err = None

    def _stderr(self) -> str:
        if self._err is None:
            return ""
        self._err.seek(0)
        return self._err.read().decode("utf-8", errors="replace")

    def _read_frame(self, buf: bytearray) -> bool:
        view = memoryview(buf)
        got = 0
        while got < len(buf):
            n = self._proc.stdout.readinto(view[got:])
            if not n:
                return False
            got += n
        return True

    def _fail(self, at: int) -> MediaError:
        if self._proc is not None:
            self._proc.wait()
        stderr = self._stderr()
        if "no decoder" in stderr.lower() or "decoder not found" in stderr.lower():
            reason = _ffmpeg_reason(stderr, self.codec)
        elif at == 0:
            reason = _ffmpeg_reason(stderr, self.codec) if stderr.strip() else "no frame could be decoded"
        else:
            reason = f"damaged at frame {at} of {self.num_frames} (ffmpeg decoded only {at} frames)"
        self._stop()
        return MediaError(reason, path=self.path)

    def get(self, indices) -> np.ndarray:
        """Decode frames ``indices`` (any order, repeats allowed): ``[len, H, W, 3]`` uint8 RGB."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        h, w = self.frame_size
        out = np.empty((len(idx), h, w, 3), dtype=np.uint8)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= self.num_frames:
            bad = int(idx[(idx < 0) | (idx >= self.num_frames)][0])
            raise IndexError(f"frame index {bad} out of range [0, {self.num_frames})")
        wanted = np.unique(idx)
        if self._proc is None or int(wanted[0]) < self._next:
            self._start()
        buf = bytearray(h * w * 3)
        frames: dict[int, np.ndarray] = {}
        for target in wanted:
            while self._next <= target:
                if not self._read_frame(buf):
                    raise self._fail(self._next)
                if self._next == target:
                    frames[int(target)] = np.frombuffer(bytes(buf), dtype=np.uint8).reshape(h, w, 3)
                self._next += 1
        for row, i in enumerate(idx):
            out[row] = frames[int(i)]
        return out

    def close(self) -> None:
        self._stop()
