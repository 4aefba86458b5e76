"""``avseg train --negative-audio P``: with probability ``P`` a training clip hears negative audio and is taught to
predict nothing (the remedy AVSBench-Robust trains with).

Which clips, which kind (``silence``, ``noise`` or ``offscreen``, equally likely) and which offscreen donor are a
function of ``(seed, epoch, position in the epoch)`` alone (:meth:`NegativeSampler.assign`), so a resumed run draws
exactly what the uninterrupted one did and nothing touches the global random generators. Donors come from the train
split only (:func:`avsegcli.data.negatives.offscreen_pairs`, seeded per epoch); a clip with no possible donor gets
silence instead. A negative clip keeps its frames and its supervised frames (``mask_valid``/``gt_valid``)
but its target is all background; the batch counts them (``negative_clips``), and the log records the running total.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from avsegcli.data.negatives import CONDITIONS, clip_categories, negative_log_mel, offscreen_pairs
from avsegcli.media.signals import clip_seed

#: a batch entry: a clip index (positive) or ``(index, kind, donor index, epoch)`` (negative)
Key = int | tuple[int, str, int, int]


class NegativeAudioClips(Dataset):
    """A training dataset whose items may be asked for with negative audio (keys from :meth:`NegativeSampler.assign`).

    Every item gains ``negative`` (bool); a negative one has its ``log_mel`` replaced and ``masks`` zeroed."""

    def __init__(self, ds: Any, seed: int) -> None:
        self.ds, self.seed = ds, int(seed)

    def __len__(self) -> int:
        return len(self.ds)

    def __getattr__(self, name: str) -> Any:  # clip_info, names, task, root... of the wrapped reader
        if name in ("ds", "seed"):
            raise AttributeError(name)
        return getattr(self.ds, name)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        if not isinstance(key, tuple):
            return {**self.ds[int(key)], "negative": False}
        index, kind, donor, epoch = key
        item = dict(self.ds[int(index)])
        item["log_mel"] = negative_log_mel(self.ds, item, kind, self.seed, int(epoch), donor=int(donor))
        item["masks"] = torch.zeros_like(item["masks"])
        item["negative"] = True
        return item


class NegativeSampler:
    """Turns an epoch's global batches of clip indices into batch keys, some of them negative."""

    def __init__(self, ds: Any, probability: float, seed: int) -> None:
        self.p, self.seed = float(probability), int(seed)
        self.names = list(ds.names)
        self.shown, self.heard, self.category_source = clip_categories(ds)
        self.index = {n: i for i, n in enumerate(self.names)}

    def assign(self, batches: Sequence[Sequence[int]], epoch: int) -> list[list[Key]]:
        """Same batches, each clip kept or (probability ``p``) replaced by a negative key; deterministic in
        ``(seed, epoch)``."""
        rng = np.random.default_rng(clip_seed(self.seed, "negative-audio", int(epoch)))
        out: list[list[Key]] = []
        for batch in batches:
            keys: list[Key] = []
            for i in batch:
                draw, kind_draw = rng.random(), int(rng.integers(len(CONDITIONS)))
                if draw >= self.p:
                    keys.append(int(i))
                    continue
                kind, donor = CONDITIONS[kind_draw], -1
                if kind == "offscreen":
                    name = self.names[int(i)]
                    pair = offscreen_pairs([name], self.names, self.shown, self.heard, self.seed, int(epoch))[name]
                    if pair is None:
                        kind = "silence"
                    else:
                        donor = self.index[pair["donor"]]
                keys.append((int(i), kind, donor, int(epoch)))
            out.append(keys)
        return out


def count_negative(keys: Sequence[Key]) -> int:
    return sum(isinstance(k, tuple) for k in keys)
