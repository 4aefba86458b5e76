"""Fetch one named weights file into the cache: ``.partial`` -> checks -> rename, under the entry's lock.

Plain HTTP goes through ``requests`` (installed with gdown anyway; its exceptions tell a refused connection, a DNS
failure and a timeout apart, and it streams with ``Range`` for resuming). Google Drive URLs go through ``gdown``,
which handles Drive's large-file confirmation page; its bytes land in the same ``.partial`` file (a Drive
download restarts rather than resumes). Every failure is one :class:`~avsegcli.errors.DownloadError` line that
names the manual route: the page to open, the path to save the file as, or ``--weights PATH``.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from avsegcli.errors import DownloadError, os_reason
from avsegcli.hub import cache
from avsegcli.hub.registry import ReleasedCheckpoint, drive_id, page_url, source_urls

if TYPE_CHECKING:
    import requests

TIMEOUT_ENV = "AVSEG_DOWNLOAD_TIMEOUT"  # seconds to connect and between two reads (default 30)
ProgressFn = Callable[[int, "int | None"], None]  # (bytes so far, total or None)
CHUNK = 1 << 16  # small reads: a dropped connection loses at most this much of what arrived
_BAR = {"on": True}  # the process's default: the CLI turns the bar off for --quiet / --json


def show_progress_bars(on: bool) -> None:
    """Whether downloads draw a Rich bar on stderr by default (``--quiet`` turns it off)."""
    _BAR["on"] = on


def progress_bars_on() -> bool:
    """The process's default for progress display on stderr (downloads, on-the-fly exports)."""
    return _BAR["on"]


def timeout_s() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, "30"))
    except ValueError:
        return 30.0


def manual_route(entry: ReleasedCheckpoint, url: str | None = None) -> str:
    """The one-line way round: where to fetch the file by hand and where to put it."""
    url = url or (source_urls(entry) or ("?",))[0]
    return (f"fetch it by hand from {page_url(url)} and save it as {cache.cached_path(entry)}, "
            f"or pass --weights PATH")


def looks_like_checkpoint(head: bytes) -> str | None:
    """None when ``head`` (a file's first bytes) starts like a torch zip, a pickle or a safetensors file; else
    why not (an HTML page, e.g. Drive's quota or sign-in page, or anything else)."""
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return None
    if len(head) >= 9 and head[8:9] == b"{":
        return None
    text = head.lstrip()[:64].lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in head[:1024].lower():
        return "the server sent an HTML page, not a checkpoint (a quota, sign-in or error page)"
    return "the download is not a checkpoint (neither a PyTorch .pth nor a safetensors file)"


@contextmanager
def rich_bar(label: str, *, enabled: bool = True) -> Iterator[ProgressFn]:
    """A Rich download bar on stderr; yields the callback that moves it. Cleared when the download fails."""
    if not enabled:
        yield lambda done, total: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=None)
        try:
            yield lambda done, total: bar.update(task, completed=done, total=total)
        except BaseException:  # a failed download leaves only its one error line: the bar goes
            bar.live.transient = True
            raise


def _http_reason(err: requests.RequestException, url: str) -> str:
    import requests  # lazy: only a download needs it (85 ms of every `avseg` start otherwise)

    host = requests.utils.urlparse(url).netloc or url
    text = str(err)
    if isinstance(err, requests.Timeout):
        return f"no answer from {host} within {timeout_s():g} s (timeout)"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return f"the connection to {host} dropped mid-file (run again to resume)"
    if "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
        return f"cannot resolve host {host} (DNS failure or no network)"
    if "Connection refused" in text or "ECONNREFUSED" in text:
        return f"connection refused by {host} (no network, or the server is down)"
    if isinstance(err, requests.ConnectionError):
        return f"cannot reach {host} (no network)"
    return f"request to {host} failed ({type(err).__name__})"


def _http_get(url: str, partial: Path, progress: ProgressFn) -> None:
    """Stream ``url`` into ``partial``, resuming from its size where the server answers ``206``."""
    import requests  # lazy: only a download needs it

    have = partial.stat().st_size if partial.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout_s(), allow_redirects=True) as resp:
        if resp.status_code == 416 and have:  # the partial is stale or whole: start over
            partial.unlink()
            return _http_get(url, partial, progress)
        if resp.status_code >= 400:
            why = {403: "forbidden", 404: "not found", 429: "too many requests, try later"}.get(resp.status_code, resp.reason)
            raise _Http(f"HTTP {resp.status_code} ({why}) from {url}")
        resumed = resp.status_code == 206 and have > 0
        length = resp.headers.get("Content-Length")
        total = (int(length) + (have if resumed else 0)) if length and length.isdigit() else None
        done = have if resumed else 0
        with open(partial, "ab" if resumed else "wb") as f:
            progress(done, total)
            for block in resp.iter_content(CHUNK):
                f.write(block)
                done += len(block)
                progress(done, total)
        if total is not None and done < total:
            raise requests.exceptions.ChunkedEncodingError("short read")


class _Http(Exception):
    """An HTTP error status (message ready)."""


def _drive_get(file_id: str, partial: Path, progress: ProgressFn) -> None:
    import gdown  # Drive's confirmation page for large files; only Drive entries need it
    import requests  # lazy: only a download needs it

    with open(partial, "wb") as f:
        try:
            gdown.download(id=file_id, output=f, quiet=True, progress=progress, timeout=timeout_s())
        except requests.RequestException:
            raise
        except Exception as exc:  # gdown's own errors (quota, permission, no confirmation link)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise _Http(f"Google Drive refused the download ({first[:160]})") from None


def _fetch_one(entry: ReleasedCheckpoint, url: str, progress: ProgressFn) -> None:
    import requests  # lazy: only a download needs it (its errors are told apart below)

    partial = cache.partial_path(entry)
    fid = drive_id(url)
    try:
        if fid:
            _drive_get(fid, partial, progress)
        else:
            _http_get(url, partial, progress)
    except _Http as err:
        raise DownloadError(f"cannot fetch {entry.name}: {err}; {manual_route(entry, url)}") from None
    except requests.RequestException as err:
        raise DownloadError(f"cannot fetch {entry.name}: {_http_reason(err, url)}; {manual_route(entry, url)}") from None
    except OSError as err:  # writing the partial file: full disk, read-only cache
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            partial.unlink(missing_ok=True)
        raise DownloadError(f"cannot write {partial.name} ({os_reason(err)}); free space or set AVSEG_HOME to "
                            f"another folder, or {manual_route(entry, url)}", path=cache.weights_dir()) from None


def _check_and_publish(entry: ReleasedCheckpoint) -> Path:
    """Refuse a non-checkpoint or a hash mismatch (deleting it); record an unpinned hash; rename into place."""
    partial, dest = cache.partial_path(entry), cache.cached_path(entry)
    with open(partial, "rb") as f:
        refused = looks_like_checkpoint(f.read(4096))
    digest = cache.sha256_of(partial)
    problem = refused or cache.expected_hash_problem(entry, digest)
    if problem:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"refused {entry.filename} for {entry.name}: {problem}; deleted; {manual_route(entry)}")
    if not entry.pinned:
        cache.record_hash(entry, digest)
    try:
        os.replace(partial, dest)
    except OSError as err:
        raise DownloadError(f"cannot move {partial.name} into place ({os_reason(err)})", path=dest) from None
    return dest


def fetch(entry: ReleasedCheckpoint, *, progress: ProgressFn | None = None, show_progress: bool | None = None) -> Path:
    """Download ``entry`` into the cache unless it is there (under its lock: one download for many processes);
    returns the cached path. Tries each source URL (or ``$AVSEG_MIRROR``) in turn; the last failure is raised."""
    return fetch_if_missing(entry, progress=progress, show_progress=show_progress)[0]


def fetch_if_missing(entry: ReleasedCheckpoint, *, progress: ProgressFn | None = None,
                     show_progress: bool | None = None) -> tuple[Path, bool]:
    """:func:`fetch`, also saying whether this call downloaded the file (False: it was there, or another process
    fetched it while this one waited for the lock)."""
    dest = cache.cached_path(entry)
    show_progress = _BAR["on"] if show_progress is None else show_progress
    try:
        with cache.lock(entry):
            if dest.is_file():  # another process fetched it while this one waited
                return dest, False
            last: DownloadError | None = None
            for url in source_urls(entry):
                try:
                    with rich_bar(f"{entry.name} ({entry.filename})", enabled=show_progress and progress is None) as bar:
                        _fetch_one(entry, url, progress or bar)
                    return _check_and_publish(entry), True
                except DownloadError as err:
                    last = err
            raise last or DownloadError(f"{entry.name} has no source URL; {manual_route(entry)}")
    except cache.Timeout:
        raise DownloadError(f"another process has held the lock on {entry.name} for over "
                            f"{cache.LOCK_WAIT_S:g} s; try again, or {manual_route(entry)}") from None
    except OSError as err:  # the lock file itself (read-only cache)
        raise DownloadError(f"cannot use the weights cache ({os_reason(err)}); set AVSEG_HOME to a writable "
                            f"folder, or pass --weights PATH", path=cache.weights_dir()) from None
