"""``avseg run``'s flags as one record: :class:`RunOptions` (and :class:`RayOptions`, its ``--ray`` part).

Every flag of ``avseg run`` is one field here, checked in one place (:meth:`RunOptions.validate`, before any work),
and this one record is what a run receives: :func:`avsegcli.run.session.run_all` on one machine, and the same
record, pickled, in every Ray actor (:mod:`avsegcli.run.ray`). Field defaults are the command line's defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from avsegcli.errors import AvsegError
from avsegcli.export.runners import BACKENDS
from avsegcli.inference.predictor import Predictor
from avsegcli.masks.io import FORMATS
from avsegcli.media.override import AudioOverride, parse_audio
from avsegcli.media.sampling import check_window

INSTALL_HINT = "--ray needs Ray, an optional extra: pip install 'avseg[ray]' (or pip install -e '.[ray]' in a checkout)"
START_TIMEOUT_S = 600.0  # no actor ready after this long: the cluster cannot host one


def import_ray():
    """The ``ray`` module, or an :class:`AvsegError` (exit 2) saying how to install it."""
    try:
        import ray  # lazy: an optional extra, and heavy
    except ImportError:
        raise AvsegError(INSTALL_HINT) from None
    return ray


@dataclass
class RayOptions:
    """Where and how wide to run (``--ray`` and the ``--ray-*`` flags). ``address``: None or ``local`` starts a
    private local instance; ``auto``, ``host:port`` or ``ray://host:port`` joins a running cluster."""

    address: str | None = None
    actors: int = 0  # 0: as many as the cluster's GPUs (or CPUs, without GPUs) allow
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU actors)
    cpus_per_actor: float = 1.0
    retries: int = 3  # per video, after its actor or node was lost
    start_timeout: float = START_TIMEOUT_S  # seconds
    progress_every: float = 0.5  # seconds between progress polls of the actors' frame counts


@dataclass(kw_only=True)
class RunOptions:
    """Every ``avseg run`` flag once (see ``avseg run --help`` for each); ``out`` is the only one without a default.

    :meth:`validate` checks them (usage errors, exit 2) and parses ``--audio`` once into :attr:`heard`."""

    # input
    inputs: list[str] = field(default_factory=list)  # files, folders, @list.txt files
    glob: str | None = None
    fps: float | None = 1.0  # frames per second sampled; 0 (or None) = every frame
    start: float | None = None  # seconds
    end: float | None = None  # seconds
    audio: str = "original"  # original, silence, noise or a media file
    workers: int | None = None  # decode processes (None: from the cores)
    # model and precision
    weights: str | Path | None = None  # None: the bundled model; a str may be a registry name (avsegcli.hub)
    device: str = "auto"
    precision: str = "auto"
    impl: str = "fast"
    compile: bool = False
    batch_size: int = 8  # frames per forward pass, across videos
    backend: str = "torch"  # torch, onnxruntime or openvino (avsegcli.export)
    offline: bool = False  # named weights: the cache only, never the network (AVSEG_OFFLINE=1 for the workers too)
    # output
    out: Path
    fmt: str = "png"
    save_probs: bool = False
    overwrite: bool = False
    render: bool = False
    sheet: bool = False
    # display (read by the command line)
    quiet: bool = False
    verbose: bool = False
    json: bool = False
    # cluster: None runs on this machine
    cluster: RayOptions | None = None

    #: ``--audio`` parsed by :meth:`validate`: None (the videos' own audio) or the override every video hears
    heard: AudioOverride | None = field(default=None, init=False, repr=False, compare=False)
    _valid: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def sample_fps(self) -> float | None:
        """``fps`` as the decoders take it: None for every frame (``--fps 0``)."""
        return self.fps or None

    def validate(self) -> RunOptions:
        """Usage errors (:class:`AvsegError`, exit 2) for flags that make no sense, in this order, before any work;
        parses ``--audio`` (a file must exist and have sound). Once per record; returns it."""
        if self._valid:
            return self
        if self.fmt not in FORMATS:
            raise AvsegError(f"--format must be png, npz, rle or all, not {self.fmt!r}")
        if self.save_probs and self.fmt not in ("npz", "all"):
            raise AvsegError("--save-probs needs --format npz (or all)")
        if self.fps is not None and (not math.isfinite(self.fps) or self.fps < 0 or self.fps > 1000):
            raise AvsegError(f"--fps must be a number from 0 (every frame) to 1000, not {self.fps}")
        if self.backend not in BACKENDS:
            raise AvsegError(f"--backend must be {', '.join(BACKENDS)}, not {self.backend!r}")
        if not 1 <= self.batch_size <= 4096:
            raise AvsegError(f"--batch-size must be from 1 to 4096, not {self.batch_size}")
        if self.workers is not None and not 0 <= self.workers <= 256:
            raise AvsegError(f"--workers must be from 0 (decode in this process) to 256, not {self.workers}")
        check_window(self.start, self.end)
        self.heard = parse_audio(self.audio)
        if self.cluster is not None:
            self._validate_cluster(self.cluster)
        self._valid = True
        return self

    def _validate_cluster(self, c: RayOptions) -> None:
        import_ray()  # installed? (else how to install it)
        if c.actors < 0 or c.retries < 0:
            raise AvsegError("--ray-actors and --ray-retries must be 0 or more")
        if not c.cpus_per_actor > 0 or not (c.gpus_per_actor or 0) >= 0:
            raise AvsegError("--ray-cpus-per-actor must be above 0 and --ray-gpus-per-actor not negative")
        if self.workers is not None:  # an actor's decode processes would be CPUs Ray neither grants nor sees
            raise AvsegError("--workers does not apply with --ray: each Ray actor decodes its videos in its own process "
                             "(size the run with --ray-actors and --ray-cpus-per-actor)")

    def predictor(self, device: str | None = None) -> Predictor:
        """The model these flags ask for (``device`` overrides ``--device``: a CPU-only Ray actor)."""
        return Predictor(self.weights, device=device or self.device, precision=self.precision, batch_size=self.batch_size,
                         impl=self.impl, compile=self.compile, backend=self.backend)
