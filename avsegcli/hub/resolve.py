"""Path or name -> a local file: what ``--weights``, ``--init``, ``--backbone-weights``, ``--vggish-weights``,
``load_model(...)`` and ``Predictor(weights=...)`` take.

In this order: an existing path wins; then a registry name: the cached file (checked against its published or
recorded hash), else a download (unless offline); an unknown name is one line listing the known names. A string
that looks like a file (a folder part or a suffix) and does not exist comes back unchanged, so the caller's own
"no such file" line names it as today.
"""

from __future__ import annotations

import os
from pathlib import Path

from avsegcli.errors import AvsegError, DownloadError
from avsegcli.hub import cache
from avsegcli.hub.download import fetch_if_missing, manual_route
from avsegcli.hub.registry import REGISTRY, ReleasedCheckpoint, lookup, names

OFFLINE_ENV = "AVSEG_OFFLINE"  # 1: never touch the network; a name not in the cache is an error

_FLAG_OF_KIND = {"avsegformer": "--weights/--init", "backbone": "--backbone-weights", "vggish": "--vggish-weights"}


def is_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_offline(offline: bool) -> None:
    """``--offline``: this process and its children (decode workers, torchrun ranks) never touch the network."""
    if offline:
        os.environ[OFFLINE_ENV] = "1"


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or bool(Path(text).suffix) or text.startswith("~")


def get(entry: ReleasedCheckpoint, *, offline: bool | None = None, show_progress: bool | None = None) -> Path:
    """The cached file of ``entry``, fetched first when missing (never when offline); checked against its hash."""
    return _get(entry, offline=offline, show_progress=show_progress)[0]


def _get(entry: ReleasedCheckpoint, *, offline: bool | None, show_progress: bool | None) -> tuple[Path, bool]:
    dest, fetched = cache.cached_path(entry), False
    if not dest.is_file():
        if is_offline() if offline is None else offline:
            raise DownloadError(f"{entry.name} is not in the cache and avseg is offline (--offline or "
                                f"{OFFLINE_ENV}=1); {manual_route(entry)}")
        dest, fetched = fetch_if_missing(entry, show_progress=show_progress)
    cache.verify_cached(entry, dest)
    return dest, fetched


def resolve_weights(value: str | Path, *, kind: str = "avsegformer", offline: bool | None = None,
                    show_progress: bool | None = None) -> Path:
    """An existing path as is; a registry name of ``kind`` -> its cached file (downloaded when missing); a path
    that does not exist -> unchanged (the loader reports it); an unknown name -> :class:`AvsegError`."""
    if isinstance(value, Path) or Path(value).exists() or _looks_like_path(str(value)):
        return Path(value)
    entry = lookup(str(value))
    if entry is None:
        raise AvsegError(f"{value}: no such file, and not a known weights name (names: {', '.join(names())})")
    if entry.kind != kind:
        raise AvsegError(f"{value} is {'a whole model' if entry.kind == 'avsegformer' else 'a ' + entry.kind + ' file'}"
                         f", not for {_FLAG_OF_KIND[kind]} (names there: {', '.join(names(kind))})")
    return get(entry, offline=offline, show_progress=show_progress)


def entries(selector: str) -> list[ReleasedCheckpoint]:
    """``all`` -> every entry; a name -> that entry; else the unknown-name line."""
    if selector.strip().lower() == "all":
        return list(REGISTRY)
    entry = lookup(selector)
    if entry is None:
        raise AvsegError(f"unknown weights name {selector!r} (names: {', '.join(names())}, or all)")
    return [entry]


def listing() -> list[dict]:
    """One JSON-ready row per registry entry: what ``avseg weights list`` shows."""
    ledger = cache.read_ledger()
    rows = []
    for e in REGISTRY:
        path = cache.cached_path(e)
        cached = path.is_file()
        rows.append({"name": e.name, "kind": e.kind, "task": e.task, "backbone": e.backbone, "input_size": e.input_size,
                     "miou": e.miou, "fscore": e.fscore, "filename": e.filename, "cached": cached,
                     "size": path.stat().st_size if cached else None,
                     "hash": "pinned" if e.pinned else ("recorded" if e.filename in ledger else "-"),
                     "sha256": e.sha256 or ledger.get(e.filename), "hash_prefix": e.hash_prefix,
                     "path": str(path), "urls": list(e.urls)})
    return rows


def get_many(selector: str, *, offline: bool | None = None) -> list[dict]:
    """``avseg weights get NAME|all``: fetch what is missing; one row per entry (name, path, size, fetched)."""
    out = []
    for e in entries(selector):
        path, fetched = _get(e, offline=offline, show_progress=None)
        out.append({"name": e.name, "path": str(path), "size": path.stat().st_size, "fetched": fetched,
                    "hash": cache.hash_status(e)})
    return out
