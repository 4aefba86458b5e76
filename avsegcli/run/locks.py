"""Per-video locks shared by every ``avseg run`` into one ``--out``.

One ``flock`` per video (``OUT/.avseg-locks/<stem>.lock``), taken before planning and held until the video is
published or failed: a second ``avseg run`` into the same ``--out`` skips the videos the first holds, so two runs
share the work and never write into the same folder. The kernel drops a lock when its process dies (even by
SIGKILL), so no stale lock ever blocks a resumed run; and a run removes its lock files on release, so a finished,
failed or interrupted (SIGINT) run leaves no ``.avseg-locks`` behind.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

try:  # POSIX only: without them a run goes on unlocked
    import fcntl
    import resource
except ImportError:  # pragma: no cover - not Linux/macOS
    fcntl = resource = None

LOCK_DIR = ".avseg-locks"


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
        """One open descriptor per held lock: lift the soft limit to the hard one (runs of many thousand videos)."""
        if resource is None:  # pragma: no cover - not Linux/macOS
            return
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = hard if hard != resource.RLIM_INFINITY else 1 << 16
            if soft != resource.RLIM_INFINITY and soft < want:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass

    def acquire(self, stem: str) -> bool | None:
        """True: now ours; False: another process holds it; None: locking is not possible here (go on unlocked).

        A lock file lives only while a run holds it: the holder removes it on release (:meth:`release`), so a
        finished, failed or interrupted (SIGINT) run leaves no ``.avseg-locks`` behind. Because a file can be
        removed between another process's open and its ``flock``, the lock counts only if the path still names
        the locked file afterwards; otherwise it is tried again on the new file."""
        if fcntl is None:  # pragma: no cover - not Linux/macOS
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
