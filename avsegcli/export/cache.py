"""Exports made on the fly for ``--backend``, kept under ``avseg_home()/exports`` by checkpoint hash, and the
one function a :class:`~avsegcli.inference.predictor.Predictor` calls to get a runner for its weights.

``--weights`` may name an exported file (``.onnx``, ``.xml``): it is run as is. A checkpoint (or a registry name)
is exported once per format to ``exports/<sha256[:16]>.<onnx|xml>`` and later runs reuse it; a file lock makes two
processes asking at once export it once, and the export is renamed into place only when complete. A cached
file whose metadata names another checkpoint is refused with one line (a cache someone edited by hand).
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock
from rich.console import Console

from avsegcli.errors import CheckpointError
from avsegcli.export.exporter import export_model
from avsegcli.export.meta import SUFFIX, check_source
from avsegcli.export.runners import FORMAT_OF, Runner, open_runner
from avsegcli.home import avseg_home
from avsegcli.hub.download import progress_bars_on
from avsegcli.weights import sha256sum

EXPORTED_SUFFIXES = (".onnx", ".xml")
LOCK_WAIT_S = 3600.0  # an export of the largest preset takes minutes on a small machine


def exports_dir() -> Path:
    return avseg_home() / "exports"


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` names an exported model (by its suffix) rather than a checkpoint."""
    return Path(path).suffix.lower() in EXPORTED_SUFFIXES


def cached_export(weights: Path, fmt: str, sha256: str | None = None) -> Path:
    """The cached export of checkpoint ``weights`` in ``fmt``, made now if missing (under a file lock)."""
    sha256 = sha256 or sha256sum(weights)
    folder = exports_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sha256[:16]}{SUFFIX[fmt]}"
    with FileLock(str(folder / f"{sha256[:16]}-{fmt}.lock"), timeout=LOCK_WAIT_S):
        if not path.is_file():
            console = Console(stderr=True)
            if progress_bars_on() and console.is_terminal:  # seconds to minutes, once per checkpoint (off with -q)
                with console.status(f"exporting {weights.name} to {fmt} for this backend (once; cached in {folder})"):
                    export_model(weights, fmt, path, sha256=sha256)
            else:
                export_model(weights, fmt, path, sha256=sha256)
    return path


def runner_for(backend: str, weights: Path, *, precision: str, device: str) -> Runner:
    """A runner of ``backend`` for ``weights``: an exported file as given, or a checkpoint's cached export."""
    if backend not in FORMAT_OF:
        return open_runner(backend, weights)  # the unknown-backend line
    if is_exported(weights):
        return open_runner(backend, weights, precision=precision, device=device)
    if not Path(weights).is_file():
        raise CheckpointError("no such checkpoint file", path=weights)
    sha256 = sha256sum(weights)
    path = cached_export(Path(weights), FORMAT_OF[backend], sha256)
    runner = open_runner(backend, path, precision=precision, device=device)
    check_source(runner.meta, sha256, path)
    return runner
