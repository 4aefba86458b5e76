"""Caches owned by the modules they serve.

The fast path derives things from a module's weights or shapes once (the up-convolution's phase kernels, the
deformable attention's level normalisers, the positional encodings) and keeps them in that module's own
``__dict__`` (not a parameter, buffer or state-dict entry). A cache lives and dies with its module: two models,
even of one preset loaded one after the other at the same addresses, never share an entry, and no key is made
of ids or addresses. :func:`clear_caches` empties every cache of a model when its weights may have changed
under it (loading, casting, moving between devices).
"""

from __future__ import annotations

import torch
from torch import nn

CACHE_ATTR = "_avseg_cache"


def module_cache(module: nn.Module) -> dict:
    """The cache ``module`` owns (created empty on first use). While Dynamo traces the model (``torch.export`` for
    ``avseg export``, and ``torch.compile``: Dynamo reads ``is_exporting()`` as True in both) it is a fresh dict on
    every call: what the fast path derives becomes part of the graph, and no traced tensor stays in the module."""
    if torch.compiler.is_exporting():
        return {}
    return module.__dict__.setdefault(CACHE_ATTR, {})


def clear_caches(root: nn.Module) -> None:
    """Empty the caches of ``root`` and of every module below it."""
    for m in root.modules():
        m.__dict__.pop(CACHE_ATTR, None)
