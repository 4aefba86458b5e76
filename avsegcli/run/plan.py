"""Planning a run: which files are inputs, where their masks go, and which of them to segment now.

* :func:`collect_inputs` / :func:`find_inputs` -- files, folders and ``@list.txt`` files to a list of paths. Folder
  scans never enter the ``--out`` tree or any avseg output folder (a folder with our ``meta.json``: masks,
  ``overlay.mp4``), do not follow symlinked folders, and keep entries that cannot be read (symlink loops, broken
  links, unreadable folders) as inputs, so that each becomes that input's failure with a reason while the rest
  goes on.
* :func:`output_stems` -- one folder name per video.
* :func:`check_out_dir` -- ``--out`` must be a folder we can create and write into (usage error otherwise).
* :func:`not_a_file` -- a FIFO, socket or device named as an input is never opened (a FIFO would block the run).
* :func:`source_identity` / :func:`resume_decision` / :func:`audio_mismatch` -- ``meta.json`` records which file a
  folder was made from (path, size, mtime_ns, SHA-256 of the first and last 64 KiB) and what it heard. A finished
  folder is skipped only for the same content (same size and hash, wherever the file now lives) heard the same
  way (``--audio``); another video with the same stem is an error that asks for ``--overwrite`` (never a silent
  skip). Old folders without the record count as done when their ``source`` path is this video's path.
* :func:`plan_videos` -- all of the above per video, under its lock (:class:`~avsegcli.run.locks.VideoLocks`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from avsegcli.errors import AvsegError, os_reason
from avsegcli.run.locks import VideoLocks
from avsegcli.run.results import VideoResult

if TYPE_CHECKING:
    from avsegcli.media.override import AudioOverride

#: bytes hashed at each end of a source file for its identity
IDENTITY_BYTES = 64 * 1024
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".3gp", ".ogv")


# ---- inputs --------------------------------------------------------------------------------------------------

def _is_avseg_output(folder: str) -> bool:
    meta = os.path.join(folder, "meta.json")
    if not os.path.isfile(meta):
        return False
    try:
        with open(meta, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    return b'"avseg_version"' in head or b'"frames"' in head and b'"format"' in head


def _real(path: str | Path) -> str:
    return os.path.realpath(os.path.abspath(path))  # never raises, loops included


def _scan_folder(root: Path, glob: str | None, extensions: tuple[str, ...], skip: set[str]) -> list[Path]:
    found: list[Path] = []

    def wanted(rel: str, name: str) -> bool:
        if glob:
            return fnmatch.fnmatch(name, glob) if "/" not in glob else PurePath(rel).match(glob)
        return os.path.splitext(name)[1].lower() in extensions

    def unreadable(err: OSError) -> None:  # a folder we cannot list is that input's failure
        if err.filename:
            found.append(Path(err.filename))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if d.startswith(".") or _real(full) in skip or _is_avseg_output(full):
                continue
            if os.path.islink(full):  # a symlinked folder is not followed; a looping one is an input that fails
                try:
                    os.stat(full)
                except OSError:
                    found.append(Path(full))
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if wanted(os.path.relpath(full, root), name):
                try:
                    st = os.stat(full)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                except OSError:
                    pass  # a loop or broken link with a video name: reported as that input's failure
                found.append(Path(full))
    return sorted(found)


def find_inputs(inputs: list[str], glob: str | None, extensions: tuple[str, ...],
                exclude: str | Path | None = None) -> list[Path]:
    """See the module docstring. ``exclude``: the ``--out`` folder (never scanned). Order kept, duplicates
    (same real path) dropped."""
    skip = {_real(exclude)} if exclude is not None else set()
    out: list[Path] = []
    for item in inputs:
        if item.startswith("@"):
            lst = Path(item[1:])
            try:
                text = lst.read_text()
            except (OSError, UnicodeDecodeError) as err:
                reason = os_reason(err) if isinstance(err, OSError) else "not a text file"
                raise AvsegError(f"cannot read the list file ({reason})", path=lst) from None
            lines = [ln.strip() for ln in text.splitlines()]
            out += [(lst.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines if ln and not ln.startswith("#")]
            continue
        try:
            is_dir = stat.S_ISDIR(os.stat(item).st_mode)
        except OSError:
            is_dir = False  # missing, a loop, unreadable: that input's failure, the rest goes on
        if is_dir:
            out += _scan_folder(Path(item), glob, extensions, skip)
        else:
            out.append(Path(item))
    seen: set[str] = set()
    result = []
    for p in out:
        key = _real(p)
        if key not in seen:
            seen.add(key)
            result.append(p)
    return result



def collect_inputs(inputs: list[str], glob: str | None = None, *, exclude: str | Path | None = None) -> list[Path]:
    """Files as given, folders searched recursively (``glob`` or the common video extensions), ``@list.txt``
    files read one path per line (blank lines and ``#`` comments skipped). Order kept, duplicates dropped.
    Folder scans skip ``exclude`` (the ``--out`` folder) and every avseg output folder; missing files, symlink
    loops and unreadable entries stay in the list and fail as that input (:func:`find_inputs`)."""
    return find_inputs(inputs, glob, VIDEO_EXTENSIONS, exclude=exclude)


def output_stems(paths: list[Path]) -> list[str]:
    """One folder name per video: the file stem, made unique with ``-2``, ``-3``... when stems repeat."""
    used: dict[str, int] = {}
    stems = []
    for p in paths:
        n = used.get(p.stem, 0) + 1
        used[p.stem] = n
        stems.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return stems


# ---- the output folder ---------------------------------------------------------------------------------------

def check_out_dir(out: str | Path) -> Path:
    """Create ``out`` if needed and make sure we can write into it; :class:`AvsegError` (usage, exit 2) if not."""
    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        kind = "a symbolic link loop" if os.path.islink(out) and not os.path.exists(out) else "a file"
        raise AvsegError(f"--out must be a folder, but this is {kind}", path=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AvsegError(f"cannot create the output folder ({os_reason(err)})", path=out) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".avseg-write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise AvsegError(f"cannot write into the output folder ({os_reason(err)})", path=out) from None
    return out


# ---- resume identity -----------------------------------------------------------------------------------------

_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def not_a_file(path: str | Path) -> str | None:
    """What ``path`` is when it exists but is not a regular file (``"a FIFO (named pipe)"``...), else None. Such an
    input is never opened: reading a FIFO would block the whole run."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None  # missing or unreadable: the decoder reports it as that input's failure
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _NOT_REGULAR if test(mode)), "not a regular file")


def source_identity(path: str | Path) -> dict | None:
    """``{"path", "size", "mtime_ns", "sha256_head_tail"}`` of a source file (None if it cannot be read, or is not
    a regular file: only regular files are opened)."""
    try:
        real = _real(path)
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            return None
        h = hashlib.sha256(str(st.st_size).encode())
        with open(real, "rb") as f:
            h.update(f.read(IDENTITY_BYTES))
            if st.st_size > IDENTITY_BYTES:
                f.seek(max(IDENTITY_BYTES, st.st_size - IDENTITY_BYTES))
                h.update(f.read(IDENTITY_BYTES))
    except (OSError, ValueError):
        return None
    return {"path": real, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256_head_tail": h.hexdigest()}


def resume_decision(folder: str | Path, path: str | Path, identity: dict | None) -> tuple[str, str]:
    """What to do with a video whose output folder may exist: ``("run", "")``, ``("skip", reason)`` or
    ``("fail", reason)`` (a different video's finished folder under this stem)."""
    meta_path = Path(folder) / "meta.json"
    if not meta_path.is_file():
        return "run", ""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return "run", ""  # an unreadable meta.json: redo the video (its folder is replaced when published)
    recorded = meta.get("source_identity")
    if isinstance(recorded, dict) and identity is not None:
        same = (recorded.get("size") == identity["size"]
                and recorded.get("sha256_head_tail") == identity["sha256_head_tail"])
    else:  # written before identities were recorded: done if it was made from this path
        same = str(meta.get("source", "")) == _real(path)
    if same:
        return "skip", "already done (meta.json exists; --overwrite redoes it)"
    other = (recorded or {}).get("path") or meta.get("source") or "another file"
    return "fail", (f"its output folder {folder} holds the masks of a different video ({other}); "
                    "use --overwrite to replace them, or another --out")



def audio_mismatch(folder: Path, audio: AudioOverride | None) -> tuple[str, str] | None:
    """``("fail", reason)`` when a finished folder was made hearing other audio than this run (``--audio``)."""
    try:
        had = json.loads((folder / "meta.json").read_text()).get("audio") or {"source": "original"}
    except (OSError, ValueError, AttributeError):
        return None
    want = audio.describe() if audio is not None else {"source": "original"}
    if had == want:
        return None
    return "fail", (f"its output folder {folder} was made with --audio {had.get('path') or had.get('source')}, this run "
                    f"hears {want.get('path') or want['source']}; use --overwrite to replace it, or another --out")


# ---- the plan ------------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """``results``: one per input, ``pending`` for the videos to segment now, else skipped or failed with a reason;
    ``jobs``: ``(index, path)`` of those videos, each locked; ``identities``: their :func:`source_identity`."""

    results: list[VideoResult]
    jobs: list[tuple[int, str]]
    identities: dict[int, dict | None]


def plan_videos(paths: list[Path], stems: list[str], out_dir: Path, locks: VideoLocks, *, overwrite: bool = False,
                audio: AudioOverride | None = None) -> Plan:
    """Decide each video in order: not a file -> failed; locked by another run -> skipped; else, unless
    ``overwrite``, :func:`resume_decision` then :func:`audio_mismatch`. A video that is not segmented now has its
    lock released at once."""
    plan = Plan([VideoResult(path=str(p), stem=s, status="pending") for p, s in zip(paths, stems)], [], {})
    for vid, (r, p) in enumerate(zip(plan.results, paths)):
        what = not_a_file(p)
        if what is not None:  # a FIFO, socket or device given by name: never opened (a FIFO would block the run)
            r.status, r.reason = "failed", f"is {what}, not a video file"
            continue
        if locks.acquire(r.stem) is False:
            r.status = "skipped"
            r.reason = f"in progress in another avseg run into the same --out{locks.holder(r.stem)}"
            continue
        plan.identities[vid] = source_identity(p)
        decision, reason = ("run", "") if overwrite else resume_decision(out_dir / r.stem, p, plan.identities[vid])
        if decision == "skip":
            decision, reason = audio_mismatch(out_dir / r.stem, audio) or (decision, reason)
        if decision == "run":
            plan.jobs.append((vid, str(p)))
        else:
            r.status, r.reason = ("skipped" if decision == "skip" else "failed"), reason
            locks.release(r.stem)
    return plan
