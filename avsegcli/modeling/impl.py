"""The one switch between the released arithmetic (``"reference"``) and the fast path (``"fast"``).

A module with a fast variant of a method defines it beside the reference method, under the same name with
``_fast`` appended (``forward`` / ``forward_fast``, ``predict`` / ``predict_fast``): same arguments, the same
function within float rounding. :func:`use_impl` (called by ``AVSegFormer.set_impl`` only) binds every such variant
on the instances of a model in place of the reference method (``"fast"``), or removes those bindings, so that the
class's reference methods run again (``"reference"``). Nothing else looks at the choice: the reference methods
hold the released arithmetic op for op, without a branch on it.

The modules with a fast variant: ``AVSegFormer`` (channels_last input), ``Attention`` (batch-first attention from
the module's weights; a single key without attention), ``MSDeformAttn`` (embedding-bag sampling at pixel
coordinates), ``CrossModalMixer`` (key and value projections folded into the audio query), ``AVSegHead`` (the folded
query MLP, the phase up-convolution).
"""

from __future__ import annotations

import functools

from torch import nn

IMPLS = ("reference", "fast")
SUFFIX = "_fast"


@functools.cache
def fast_variants(cls: type) -> tuple[tuple[str, str], ...]:
    """``(name, name + "_fast")`` for every method of ``cls`` (or a base) defined in avsegcli with a fast variant."""
    pairs = []
    for klass in cls.__mro__:
        if not klass.__module__.startswith("avsegcli."):
            continue
        for attr in vars(klass):
            base = attr[: -len(SUFFIX)]
            if attr.endswith(SUFFIX) and callable(getattr(cls, base, None)) and (base, attr) not in pairs:
                pairs.append((base, attr))
    return tuple(pairs)


def use_impl(root: nn.Module, impl: str) -> None:
    """Make every module under ``root`` run its reference methods (``"reference"``) or their fast variants
    (``"fast"``; bound in the instance's ``__dict__``, which copies with the module and holds no tensor)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {', '.join(IMPLS)}")
    for module in root.modules():
        for name, fast_name in fast_variants(type(module)):
            if impl == "fast":
                module.__dict__[name] = getattr(module, fast_name)
            else:
                module.__dict__.pop(name, None)
