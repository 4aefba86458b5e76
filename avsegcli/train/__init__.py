"""Training helpers behind :func:`avsegcli.train.engine.train` (``avseg train``).

* :mod:`avsegcli.train.config` -- ``TrainConfig``, the released recipe per task, resume rules, model config;
* :mod:`avsegcli.train.init_weights` -- ImageNet backbone, VGGish and full-checkpoint initialisation;
* :mod:`avsegcli.train.data` -- reproducible, resumable, shardable batch order and collation;
* :mod:`avsegcli.train.state` -- RNG capture/restore, the training-state file, the JSONL log;
* :mod:`avsegcli.train.dist` -- ``torchrun`` (DistributedDataParallel) setup.
"""

from avsegcli.train.config import RECIPES, TrainConfig

__all__ = ["RECIPES", "TrainConfig"]
