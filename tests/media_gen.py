"""Generate small test media with the ffmpeg binary bundled by ``imageio-ffmpeg``.

Reusable by every test module::

    from media_gen import cached, make_audio, make_video, make_vfr_video

    make_video(tmp / "a.mp4", seconds=5, fps=25, size=(64, 48), audio=True,
               sample_rate=16000, channels=1, tone_hz=440.0, tone_start=0.0)
    path = cached(tmp_path_factory, "a.mp4", seconds=5, fps=25)  # once per pytest session

The container and codecs follow the file suffix (see ``CODECS``); ``video_codec=`` /
``audio_codec=`` override them. The picture is ffmpeg's ``testsrc2`` pattern (``testsrc`` for
odd sizes; both move, so consecutive frames differ); the sound is a sine of ``tone_hz`` that
is silent before ``tone_start`` seconds (every channel carries the same tone unless
``amplitudes`` says otherwise).
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()

#: suffix -> (video codec, audio codec, extra video args)
CODECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    ".mp4": ("libx264", "aac", ("-preset", "ultrafast")),
    ".mkv": ("libx264", "flac", ("-preset", "ultrafast")),
    ".webm": ("libvpx-vp9", "libopus", ("-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k")),
    # mp3 in AVI makes ffmpeg's muxer shift the first video frames to cover the encoder delay
    ".avi": ("mpeg4", "pcm_s16le", ("-q:v", "5")),
    ".mov": ("mjpeg", "aac", ("-q:v", "5")),
}

#: suffix -> audio codec for audio-only files
AUDIO_CODECS: dict[str, str] = {".wav": "pcm_s16le", ".m4a": "aac", ".flac": "flac", ".mp3": "libmp3lame"}

#: channel count -> ffmpeg channel layout name
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))


def _rate(fps: float | str | Fraction) -> str:
    """ffmpeg rate string: 29.97 -> 30000/1001, 25 -> 25."""
    if isinstance(fps, str):
        return fps
    if abs(float(fps) - 30000 / 1001) < 1e-3:
        return "30000/1001"
    fr = Fraction(fps).limit_denominator(1001)
    return f"{fr.numerator}/{fr.denominator}"


def _tone_source(seconds: float, sample_rate: int, channels: int, tone_hz: float, tone_start: float,
                 amplitudes: tuple[float, ...] | None = None) -> str:
    amps = tuple(amplitudes) if amplitudes is not None else (0.5,) * channels
    if len(amps) != channels:
        raise ValueError(f"{channels} channels need {channels} amplitudes, got {amps}")
    hz = f"({tone_hz})"  # a number, or an ffmpeg expression of t without commas
    exprs = [f"if(gte(t\\,{tone_start})\\,{a}*sin(2*PI*{hz}*t)\\,0)" for a in amps]
    layout = LAYOUTS.get(channels, f"{channels}c")
    return f"aevalsrc={'|'.join(exprs)}:s={sample_rate}:c={layout}:d={seconds}"


def make_video(
    path: str | Path,
    *,
    seconds: float,
    fps: float | str | Fraction,
    size: tuple[int, int] = (64, 48),
    audio: bool = True,
    sample_rate: int = 16000,
    channels: int = 1,
    tone_hz: float | str = 440.0,
    tone_start: float = 0.0,
    amplitudes: tuple[float, ...] | None = None,
    video_codec: str | None = None,
    audio_codec: str | None = None,
    pattern: str | None = None,
    extra: tuple[str, ...] = (),
) -> Path:
    """Write a ``seconds``-long test video of ``size=(width, height)`` at ``fps``; return its path.

    ``amplitudes`` gives each channel its own tone amplitude (default 0.5 everywhere);
    ``tone_hz`` may be an ffmpeg expression of ``t`` without commas, e.g. ``"200+50*floor(t)"``
    for a pitch that changes every second.
    The pattern is ``testsrc2``, or ``testsrc`` for odd sizes (``testsrc2`` rounds them down to
    even). Odd sizes: libx264 is switched to ``yuv444p`` (4:2:0 needs even sizes).
    """
    path = Path(path)
    vcodec, acodec, vargs = CODECS.get(path.suffix.lower(), CODECS[".mp4"])
    if video_codec is not None:
        vcodec, vargs = video_codec, ()
    acodec = audio_codec or acodec
    w, h = size
    pattern = pattern or ("testsrc" if (w % 2 or h % 2) else "testsrc2")
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"{pattern}=size={w}x{h}:rate={_rate(fps)}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", _tone_source(seconds, sample_rate, channels, tone_hz, tone_start, amplitudes)]
    cmd += ["-map", "0:v"] + (["-map", "1:a"] if audio else [])
    cmd += ["-c:v", vcodec, *vargs]
    if vcodec in ("libx264",):
        cmd += ["-pix_fmt", "yuv444p" if (w % 2 or h % 2) else "yuv420p"]
    elif vcodec == "mjpeg":
        cmd += ["-pix_fmt", "yuvj444p"]
    elif vcodec in ("libvpx-vp9", "libvpx", "mpeg4"):
        cmd += ["-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", acodec, "-ar", str(sample_rate), "-ac", str(channels)]
        if acodec == "libopus" and sample_rate not in (8000, 12000, 16000, 24000, 48000):
            cmd[-3:-2] = ["48000"]  # opus only codes these rates
    cmd += [*extra, str(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(cmd)
    return path


def make_audio(
    path: str | Path,
    *,
    seconds: float,
    sample_rate: int = 16000,
    channels: int = 1,
    tone_hz: float = 440.0,
    tone_start: float = 0.0,
    amplitudes: tuple[float, ...] | None = None,
    codec: str | None = None,
) -> Path:
    """Write an audio-only file (codec by suffix: ``AUDIO_CODECS``); return its path."""
    path = Path(path)
    codec = codec or AUDIO_CODECS.get(path.suffix.lower(), "pcm_s16le")
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", _tone_source(seconds, sample_rate, channels, tone_hz, tone_start, amplitudes),
           "-c:a", codec, "-ar", str(sample_rate), "-ac", str(channels), str(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(cmd)
    return path


def cached(tmp_path_factory, name: str, maker=None, **kwargs) -> Path:
    """Generate ``name`` once per pytest session (shared by all test modules) and return its path.

    ``maker`` defaults to :func:`make_video` (``make_audio`` / ``make_vfr_video`` also work);
    the same ``name`` must always be asked with the same arguments.
    """
    folder = tmp_path_factory.getbasetemp() / "media_cache"
    folder.mkdir(exist_ok=True)
    path = folder / name
    if not path.exists():
        tmp = path.with_name(f".{path.stem}.part{path.suffix}")
        (maker or make_video)(tmp, **kwargs)
        tmp.rename(path)
    return path


def make_vfr_video(
    path: str | Path,
    *,
    segments: tuple[tuple[float, float], ...] = ((2.0, 10.0), (2.0, 30.0)),
    size: tuple[int, int] = (64, 48),
    audio: bool = True,
) -> Path:
    """A variable-frame-rate video: the ``(seconds, fps)`` segments one after the other.

    Frames keep their own timestamps (``-fps_mode passthrough``), so e.g. the default is
    2 s at 10 fps (20 frames, 0.1 s apart) then 2 s at 30 fps (60 frames, 1/30 s apart).
    Use a container with fine timestamps (``.mkv`` or ``.mp4``).
    """
    path = Path(path)
    w, h = size
    total = sum(s for s, _ in segments)
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y"]
    for seconds, fps in segments:
        cmd += ["-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate={_rate(fps)}:duration={seconds}"]
    n = len(segments)
    graph = "".join(f"[{i}:v]settb=1/90000,setpts=PTS-STARTPTS[v{i}];" for i in range(n))
    graph += "".join(f"[v{i}]" for i in range(n)) + f"concat=n={n}:v=1:a=0[v]"
    if audio:
        cmd += ["-f", "lavfi", "-i", _tone_source(total, 16000, 1, 440.0, 0.0)]
    cmd += ["-filter_complex", graph, "-map", "[v]"] + (["-map", f"{n}:a"] if audio else [])
    cmd += ["-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", "aac"]
    cmd += [str(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(cmd)
    return path
