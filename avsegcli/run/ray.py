"""``avseg run --ray``: the same run spread over a Ray cluster, one loaded :class:`Predictor` per actor.

Videos are the unit of work: :mod:`avsegcli.run.ray_driver` hands them out, :mod:`avsegcli.run.ray_actors`
segments them with the local run's own code (decoding inline), so outputs, ``meta.json`` and the resume rule are
those of a local run. Every actor receives the run's :class:`~avsegcli.run.options.RunOptions`, the record the
command line built.

``--out`` must be one folder seen at the same path by every node (a shared filesystem): each actor writes a
marker file there when it starts and the driver reads it, so a node-local path is refused at once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from avsegcli.errors import AvsegError
from avsegcli.run.options import INSTALL_HINT, START_TIMEOUT_S, RayOptions, RunOptions, import_ray
from avsegcli.run.ray_driver import Driver, RayProgress, RayRun

__all__ = ["INSTALL_HINT", "START_TIMEOUT_S", "Driver", "RayOptions", "RayProgress", "RayRun", "connect", "import_ray",
           "run_on_ray"]


def connect(ray, address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` or start a local instance; True when this call started one (and owns it)."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address in (None, "", "local"):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
        return True
    try:
        ray.init(address=address, **quiet)
    except ImportError as err:  # ray:// needs Ray Client's extra packages
        raise AvsegError(f"cannot join the Ray cluster at {address!r}: {err} (ray:// needs pip install 'ray[client]')") from None
    except Exception as err:  # ConnectionError, RuntimeError, ValueError...: one line, no traceback
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise AvsegError(f"cannot join the Ray cluster at {address!r}: {first} (start one with `ray start --head`)") from None
    return False


def run_on_ray(paths: list[Path], opts: RunOptions, *, progress: RayProgress | None = None) -> RayRun:
    """Segment ``paths`` into ``opts.out`` on Ray: each actor builds its :class:`Predictor` from ``opts`` and runs
    :func:`avsegcli.run.local.segment_videos` with it. Joins or starts Ray as ``opts.cluster.address`` says
    (``opts.cluster`` None: a private local instance); a local instance started here is shut down at the end."""
    if opts.cluster is None:
        opts = replace(opts, cluster=RayOptions())
    opts.validate()
    ray = import_ray()
    cluster = opts.cluster
    out = Path(opts.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AvsegError(f"cannot create the output folder ({err.strerror or err})", path=out) from None
    local_cpus = None
    if cluster.actors and cluster.address in (None, "", "local"):
        local_cpus = max(int(os.cpu_count() or 1), int(cluster.actors * cluster.cpus_per_actor + 0.999))
    owned = connect(ray, cluster.address, local_cpus)
    try:
        return Driver(ray, paths, opts, progress).run()
    finally:
        if owned:
            ray.shutdown()
