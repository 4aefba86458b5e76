"""Errors that are the user's to fix: the CLI prints them as one line, never a traceback."""

from __future__ import annotations

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


class MediaError(AvsegError):
    """A media file that cannot be probed or decoded: ``path`` and a one-line ``reason``."""
