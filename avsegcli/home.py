"""Where avseg keeps what it fetches or derives (named weights, exported models): one folder per user.

``AVSEG_HOME`` when set; otherwise the platform's user cache folder, as pip and torch.hub do:
``$XDG_CACHE_HOME/avseg`` or ``~/.cache/avseg`` on Linux, ``~/Library/Caches/avseg`` on macOS,
``%LOCALAPPDATA%\\avseg\\Cache`` on Windows. Nothing is created here; callers make the sub-folder they write.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def avseg_home() -> Path:
    """The cache root (not created)."""
    if os.environ.get("AVSEG_HOME"):
        return Path(os.environ["AVSEG_HOME"]).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "avseg" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "avseg"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "avseg"
