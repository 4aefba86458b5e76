"""Errors that are the user's to fix: the CLI prints them as one line, never a traceback; and :func:`os_reason`, an
``OSError``'s cause in those words (``ENOSPC`` -> "no space left on device")."""

from __future__ import annotations

import errno
from pathlib import Path


class AvsegError(Exception):
    """A problem with the user's input (a file, a flag, a checkpoint). ``str(err)`` is one line."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class CheckpointError(AvsegError):
    """A checkpoint file that cannot be read or does not fit the model."""


class DownloadError(AvsegError):
    """A named weights file that cannot be fetched or trusted (network, HTTP status, hash, cache folder): one line
    that names the manual route (the URL to open, where to put the file, or ``--weights PATH``)."""


class MediaError(AvsegError):
    """A media file that cannot be probed or decoded: ``path`` and a one-line ``reason``."""


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
    """An OSError's cause in a few words (no Python class names, no repeated path): ``"no space left on device"``."""
    return _ERRNO_WORDS.get(err.errno, (err.strerror or str(err)).lower())
