"""Rough handling around ``avseg run``: inputs, the output folder, resume identity, locks and worker hygiene.

* :func:`find_inputs` -- files, folders and ``@list.txt`` files to a list of paths. Folder scans never enter the
  ``--out`` tree or any avseg output folder (a folder with our ``meta.json``: masks, ``overlay.mp4``), do not
  follow symlinked folders, and keep entries that cannot be read (symlink loops, broken links, unreadable
  folders) as inputs, so that each becomes that input's failure with a reason while the rest goes on.
* :func:`check_out_dir` -- ``--out`` must be a folder we can create and write into (usage error otherwise).
* :func:`source_identity` / :func:`resume_decision` -- ``meta.json`` records which file a folder was made from
  (path, size, mtime_ns, SHA-256 of the first and last 64 KiB). A finished folder is skipped only for the same
  content (same size and hash, wherever the file now lives); another video with the same stem is an error that
  asks for ``--overwrite`` (never a silent skip). Old folders without the record count as done when their
  ``source`` path is this video's path.
* :class:`VideoLocks` -- one ``flock`` per video (``OUT/.avseg-locks/<stem>.lock``), taken before planning and
  held until the video is published or failed: a second ``avseg run`` into the same ``--out`` skips the videos
  the first holds, so two runs share the work and never write into the same folder. The kernel drops a lock
  when its process dies (even by SIGKILL), so no stale lock ever blocks a resumed run.
* :func:`guard_worker` -- in a decode worker: exit within a second once the parent process is gone (any
  signal, SIGKILL included), and keep native decoder noise off the user's terminal.
* :func:`write_failure` -- an ``OSError`` while writing outputs (ENOSPC, EROFS, EACCES...) in our words.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from pathlib import Path, PurePath

from avsegcli.errors import AvsegError

#: bytes hashed at each end of a source file for its identity
IDENTITY_BYTES = 64 * 1024
LOCK_DIR = ".avseg-locks"

_ERRNO_WORDS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "exists and is not a folder",
    errno.ENAMETOOLONG: "name too long",
    errno.ELOOP: "symbolic link loop",
    errno.EIO: "input/output error",
}


def os_reason(err: OSError) -> str:
    """An OSError's cause in a few words (no Python class names, no repeated path)."""
    return _ERRNO_WORDS.get(err.errno, (err.strerror or str(err)).lower())


def write_failure(err: OSError, folder: str | Path) -> str:
    """Reason for a video whose outputs could not be written."""
    return f"cannot write its masks into {folder}: {os_reason(err)} (nothing published; rerun to resume)"


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


# ---- locks ---------------------------------------------------------------------------------------------------

class VideoLocks:
    """Per-video exclusive locks in ``OUT/.avseg-locks`` (``fcntl.flock``; released on close or process death). The
    folder and its files exist only while a run holds a lock; after a SIGKILL a stale file may stay, and the next
    run into that ``--out`` takes it (no process holds it) and removes it."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir) / LOCK_DIR
        self._held: dict[str, int] = {}
        self._raise_fd_limit()

    @staticmethod
    def _raise_fd_limit() -> None:
        try:
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = hard if hard != resource.RLIM_INFINITY else 1 << 16
            if soft != resource.RLIM_INFINITY and soft < want:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ImportError, ValueError, OSError):
            pass

    def acquire(self, stem: str) -> bool | None:
        """True: now ours; False: another process holds it; None: locking is not possible here (go on unlocked).

        A lock file lives only while a run holds it: the holder removes it on release (:meth:`release`), so a
        finished, failed or interrupted (SIGINT) run leaves no ``.avseg-locks`` behind. Because a file can be
        removed between another process's open and its ``flock``, the lock counts only if the path still names
        the locked file afterwards; otherwise it is tried again on the new file."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not Linux/macOS
            return None
        path = self.dir / f"{stem}.lock"
        for _ in range(20):
            try:
                self.dir.mkdir(exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # the folder was removed by a run releasing its last lock: make it again
            except OSError:
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except OSError:
                same = False
            if not same:  # we locked a file its holder has just removed: try the one at the path now
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass
            self._held[stem] = fd
            return True
        return None

    def holder(self, stem: str) -> str:
        try:
            pid = (self.dir / f"{stem}.lock").read_text().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def release(self, stem: str) -> None:
        """Remove the lock file (still holding it, so no other run can hold that file), drop the lock, and remove
        the lock folder once it is empty."""
        fd = self._held.pop(stem, None)
        if fd is None:
            return
        try:
            os.unlink(self.dir / f"{stem}.lock")
        except OSError:
            pass
        try:
            os.close(fd)  # closing the only descriptor drops the flock
        except OSError:
            pass
        try:
            self.dir.rmdir()  # only when empty: another run's locks keep it
        except OSError:
            pass

    def release_all(self) -> None:
        for stem in list(self._held):
            self.release(stem)


# ---- worker hygiene ------------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the thread that started it exits (prctl PR_SET_PDEATHSIG).
    Works even while the process is busy importing torch, before any Python thread of ours runs."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        pass


def guard_worker(parent_pid: int, *, poll_s: float = 0.5, quiet_stderr: bool = True) -> None:
    """Call first thing in a worker process: the kernel kills it when its parent goes (:func:`_die_with_parent`),
    and, for the cases that misses (not Linux, a parent thread that ends), a daemon thread ends the process as
    soon as ``parent_pid`` is no longer its parent, whatever signal the parent died of. With ``quiet_stderr``,
    file descriptor 2 goes to /dev/null (decoders print from native code). If the parent is already gone, exits."""
    _die_with_parent()
    if os.getppid() != parent_pid:
        os._exit(0)
    if quiet_stderr and not os.environ.get("AVSEG_WORKER_STDERR"):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="avseg-parent-watch", daemon=True).start()


def guarded_worker(parent_pid: int, module: str, function: str, *args) -> None:
    """Process target for decode workers: :func:`guard_worker` first, *then* import ``module`` (torch...) and run
    ``module.function(*args)``. This module imports nothing heavy, so the guard is up within a fraction of a
    second of the process starting, long before the heavy imports finish."""
    import importlib

    guard_worker(parent_pid)
    getattr(importlib.import_module(module), function)(*args)


# ---- flags ---------------------------------------------------------------------------------------------------

def check_run_flags(*, fps: float | None = None, batch_size: int | None = None, workers: int | None = None) -> None:
    """Usage errors (exit 2) for numbers that make no sense, before any work starts."""
    import math

    if fps is not None and (not math.isfinite(fps) or fps < 0 or fps > 1000):
        raise AvsegError(f"--fps must be a number from 0 (every frame) to 1000, not {fps}")
    if batch_size is not None and not 1 <= batch_size <= 4096:
        raise AvsegError(f"--batch-size must be from 1 to 4096, not {batch_size}")
    if workers is not None and not 0 <= workers <= 256:
        raise AvsegError(f"--workers must be from 0 (decode in this process) to 256, not {workers}")
