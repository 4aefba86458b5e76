"""Training helpers behind :func:`avsegcli.train.engine.train` (``avseg train``).

* :mod:`avsegcli.train.engine` -- ``train()``: the loop, one optimiser step, the logged records;
* :mod:`avsegcli.train.config` -- ``TrainConfig``, the released recipe per task, resume rules, model config, lr schedule;
* :mod:`avsegcli.train.init_weights` -- ImageNet backbone, VGGish and full-checkpoint initialisation;
* :mod:`avsegcli.train.data` -- reproducible, resumable, shardable batch order and collation;
* :mod:`avsegcli.train.negatives` -- ``--negative-audio``: clips that hear negative audio, with empty targets;
* :mod:`avsegcli.train.validate` -- when to validate, and the official-protocol scores on the validation split;
* :mod:`avsegcli.train.checkpoint` -- ``last.safetensors`` + ``state.pt`` saved and checked as one pair;
* :mod:`avsegcli.train.state` -- RNG capture/restore, the training-state file, the JSONL log;
* :mod:`avsegcli.train.dist` -- ``torchrun`` (DistributedDataParallel) setup.
"""

from avsegcli.train.config import RECIPES, TrainConfig

__all__ = ["RECIPES", "TrainConfig"]
