"""``avseg eval``'s flags as one record: :class:`EvalOptions`.

Every flag of ``avseg eval`` is one field here (defaults are the command line's), checked in one place
(:meth:`EvalOptions.validate`, before any work: no model loaded, no file read). The command line builds the record
and hands it to :func:`avsegcli.eval.evaluate.evaluate_options`; :func:`avsegcli.eval.evaluate.evaluate` (the
Python entry point, with a ``Predictor`` object instead of ``--weights``) checks its own arguments with the same
functions, so both say the same thing for the same mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avsegcli.data.negatives import require_conditions
from avsegcli.errors import AvsegError
from avsegcli.export.runners import BACKENDS
from avsegcli.tasks import Task, task_of

#: ``--protocol`` -> the protocols of :mod:`avsegcli.eval.metrics` it scores
PROTOCOL_CHOICES = {"official": ("official",), "per-frame": ("per-frame",), "both": ("official", "per-frame")}
SAVE_PRED_NEEDS_WEIGHTS = "--save-pred needs --weights (the masks come from the model)"


def check_sizes(task: Task, batch_clips: int | None, limit: int | None, forward_batch: int | None) -> int:
    """Clips per metric batch (``None``: the task's official batch, :attr:`Task.batch_clips`); AvsegError for a batch
    below 1 clip, a ``limit`` below 1 clip or a ``forward_batch`` below 1 frame (in this order)."""
    batch_clips = task.batch_clips if batch_clips is None else int(batch_clips)
    if batch_clips < 1:
        raise AvsegError(f"batch size must be at least 1 clip, got {batch_clips}")
    if limit is not None and limit < 1:
        raise AvsegError(f"--limit must be at least 1, got {limit}")
    if forward_batch is not None and int(forward_batch) < 1:
        raise AvsegError(f"forward batch must be at least 1 frame, got {forward_batch}")
    return batch_clips


@dataclass(kw_only=True)
class EvalOptions:
    """Every ``avseg eval`` flag once (see ``avseg eval --help`` for each); ``task`` is the only one without a
    default. :meth:`validate` checks them (usage errors, exit 2), makes ``task`` a :class:`~avsegcli.tasks.Task`
    and parses ``--protocol`` and ``--negative-audio`` once (:attr:`protocols`, :attr:`conditions`)."""

    # what to score
    task: str | Task  # a name until validate(), then its Task
    data: Path | None = None  # None: $AVSBENCH_ROOT, else ./data
    split: str = "test"
    weights: str | Path | None = None  # None (and no pred): the bundled model; a str may be a registry name
    pred: Path | None = None  # saved masks instead of a model
    # how
    protocol: str = "both"  # official, per-frame or both
    batch_size: int | None = None  # clips per metric batch; None: the task's (Task.batch_clips)
    device: str = "auto"
    precision: str = "fp32"
    backend: str = "torch"  # torch, onnxruntime or openvino (avsegcli.export)
    limit: int | None = None  # first N clips
    image_size: int | None = None  # pixels
    workers: int | None = None  # data-loading processes
    forward_batch: int | None = None  # frames per forward pass
    negative_audio: str | None = None  # comma list of silence, noise, offscreen
    seed: int = 0  # of the noise and the offscreen pairing
    # output
    save_pred: Path | None = None
    json_out: str | None = None  # a file, or '-' for stdout
    plots: Path | None = None
    # display (read by the command line)
    quiet: bool = False
    verbose: bool = False

    #: set by :meth:`validate`: the protocols ``--protocol`` scores, the ``--negative-audio`` conditions (maybe none)
    protocols: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    conditions: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    _valid: bool = field(default=False, init=False, repr=False, compare=False)

    def validate(self) -> EvalOptions:
        """Usage errors (:class:`AvsegError`, exit 2) for flags that make no sense, in this order, before any work.
        Once per record; returns it."""
        if self._valid:
            return self
        self.task = task_of(self.task)
        if self.protocol not in PROTOCOL_CHOICES:
            raise AvsegError(f"--protocol must be official, per-frame or both, not {self.protocol!r}")
        if self.weights is not None and self.pred is not None:
            raise AvsegError("give --weights or --pred, not both")
        if self.backend not in BACKENDS:
            raise AvsegError(f"--backend must be {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.save_pred is not None and self.pred is not None:
            raise AvsegError(SAVE_PRED_NEEDS_WEIGHTS)
        self.conditions = () if self.negative_audio is None else require_conditions(self.negative_audio)
        check_sizes(self.task, self.batch_size, self.limit, self.forward_batch)
        self.protocols = PROTOCOL_CHOICES[self.protocol]
        self._valid = True
        return self

    @property
    def to_stdout(self) -> bool:
        """``--json -``: the JSON goes to stdout, and nothing else does."""
        return self.json_out == "-"

