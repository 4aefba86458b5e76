"""One ``avseg run``: :func:`run_all` takes the :class:`~avsegcli.run.options.RunOptions` the command line built
and does the rest: checks, inputs, the output folder, then the videos on this machine or over Ray."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from avsegcli.errors import AvsegError
from avsegcli.run.local import segment_videos
from avsegcli.run.options import RunOptions
from avsegcli.run.plan import check_out_dir, collect_inputs
from avsegcli.run.ray import run_on_ray
from avsegcli.run.results import VideoResult

#: given the number of videos, a context that yields the progress hook: a RunProgress (or, with --ray, a RayProgress)
Display = Callable[[int], AbstractContextManager[Any]]


@dataclass
class RunOutcome:
    """``results``: one per input, in input order; ``model``: the model's info (``summary.json``'s ``model``);
    ``started``: ``time.perf_counter()`` when the segmentation began (after the model loaded; with ``--ray``,
    before the cluster starts); ``extra``: more ``summary.json`` entries (``{"ray": ...}`` with ``--ray``)."""

    results: list[VideoResult]
    model: dict[str, Any]
    started: float
    extra: dict[str, Any] = field(default_factory=dict)


def run_all(opts: RunOptions, *, display: Display | None = None, note: Callable[[str], None] | None = None) -> RunOutcome:
    """Validate ``opts`` (usage errors first), collect the inputs (never from ``--out``), check ``--out`` (a file,
    not creatable, read-only: usage error before any work), then segment every video. ``display``: the progress
    display (None: none); ``note``: receives what was loaded (the ``-v`` detail)."""
    opts.validate()
    paths = collect_inputs(opts.inputs, opts.glob, exclude=opts.out)  # never our own outputs (masks, overlay.mp4)
    if not paths:
        raise AvsegError(f"no videos found in {', '.join(opts.inputs)}")
    check_out_dir(opts.out)
    if opts.cluster is not None:  # the same videos, outputs and rules, spread over Ray actors
        started = time.perf_counter()
        with display(len(paths)) if display is not None else nullcontext() as progress:
            run = run_on_ray(paths, opts, progress=progress)
        return RunOutcome(run.results, run.model, started, {"ray": run.info})
    predictor = opts.predictor()
    model = predictor.model_info()
    if note is not None:
        note(f"{len(paths)} video(s); model {model}")
    started = time.perf_counter()
    with display(len(paths)) if display is not None else nullcontext() as progress:
        results = segment_videos(predictor, paths, opts, progress=progress)
    return RunOutcome(results, model, started)
