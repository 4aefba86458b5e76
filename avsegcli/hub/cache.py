"""The weights cache: ``<avseg home>/weights/<filename>``, a ledger of recorded hashes, one lock per name.

* Files enter the cache only whole and checked (:mod:`avsegcli.hub.download` writes ``<filename>.partial`` and
  renames it); a ``.partial`` may stay behind for a resumed download, never a file under the final name.
* ``hashes.json``: the SHA-256 recorded at the first download of an entry with no published hash (the Drive
  files), rewritten atomically (temporary name, then rename). Every later load of that file checks it.
* ``.locks/<name>.lock``: a ``filelock`` lock held around check-download-rename, so two processes asking for the
  same name download it once (the second waits, then finds the cached file). ``filelock`` rather than raw
  ``fcntl``: it is already installed with gdown, and works on Windows too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from filelock import FileLock, Timeout

from avsegcli.errors import DownloadError, os_reason
from avsegcli.home import avseg_home
from avsegcli.hub.registry import ReleasedCheckpoint

LEDGER = "hashes.json"
LOCK_WAIT_S = 3600.0  # a second process waits this long for another's download of the same file


def weights_dir() -> Path:
    """The folder the named weights live in (not created)."""
    return avseg_home() / "weights"


def cached_path(entry: ReleasedCheckpoint) -> Path:
    """Where ``entry`` lives once fetched (whether or not it is there)."""
    return weights_dir() / entry.filename


def partial_path(entry: ReleasedCheckpoint) -> Path:
    return weights_dir() / (entry.filename + ".partial")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_ledger() -> dict[str, str]:
    """filename -> recorded sha256 (empty when there is no ledger or it cannot be read)."""
    try:
        data = json.loads((weights_dir() / LEDGER).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record_hash(entry: ReleasedCheckpoint, digest: str) -> None:
    """Record ``digest`` for ``entry`` in the ledger (atomic rewrite; call under the entry's lock)."""
    ledger = read_ledger()
    ledger[entry.filename] = digest
    path = weights_dir() / LEDGER
    tmp = path.with_name(f"{LEDGER}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"cannot record the file's sha256 ({os_reason(err)})", path=path) from None


def hash_status(entry: ReleasedCheckpoint) -> str:
    """``pinned`` (a published hash), ``recorded`` (hash taken at the first download) or ``-`` (neither yet)."""
    if entry.pinned:
        return "pinned"
    return "recorded" if entry.filename in read_ledger() else "-"


def expected_hash_problem(entry: ReleasedCheckpoint, digest: str) -> str | None:
    """Why ``digest`` is not ``entry``'s published hash, or None when it is (or none is published)."""
    if entry.sha256 and digest != entry.sha256:
        return f"sha256 {digest[:16]}... is not the published {entry.sha256[:16]}..."
    if entry.hash_prefix and not digest.startswith(entry.hash_prefix):
        return f"sha256 {digest[:16]}... does not start with {entry.hash_prefix} as the file name says"
    return None


def verify_cached(entry: ReleasedCheckpoint, path: Path) -> None:
    """Check a cached file against its published hash, or the one recorded at its first download."""
    recorded = read_ledger().get(entry.filename)
    if not entry.pinned and recorded is None:
        return  # put there by hand: nothing to check against (the first load records nothing; `get` would)
    digest = sha256_of(path)
    problem = expected_hash_problem(entry, digest)
    if problem is None and recorded is not None and not entry.pinned and digest != recorded:
        problem = f"sha256 {digest[:16]}... differs from the {recorded[:16]}... recorded at its download"
    if problem:
        raise DownloadError(f"{problem}: the cached file changed; delete it and run `avseg weights get {entry.name}`",
                            path=path)


def lock(entry: ReleasedCheckpoint) -> FileLock:
    """The per-name lock (its folder is created; raises DownloadError when the cache cannot be written)."""
    folder = weights_dir() / ".locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the weights cache ({os_reason(err)}); set AVSEG_HOME to a writable "
                            f"folder, or pass --weights PATH", path=weights_dir()) from None
    return FileLock(str(folder / f"{entry.name}.lock"), timeout=LOCK_WAIT_S)


__all__ = ["LEDGER", "Timeout", "cached_path", "hash_status", "lock", "partial_path", "read_ledger", "record_hash",
           "sha256_of", "verify_cached", "weights_dir"]
