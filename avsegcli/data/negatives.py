"""Negative audio (the conditions and the off-screen donors): sound that should make an audio-visual segmenter predict nothing (AVSBench-Robust's idea).

Three conditions (:data:`CONDITIONS`), each a replacement for a clip's audio whose correct answer is an empty mask:

* ``silence``: digital silence (all-zero samples) through the normal VGGish log-mel frontend, so every cell is
  ``log(0 + 0.01)``;
* ``noise``: white Gaussian noise with an RMS of :data:`NOISE_RMS` of full scale (-20 dBFS), clipped to [-1, 1],
  seeded per clip (``SeedSequence([seed, crc32(clip name)])``, so a clip's noise does not depend on which other
  clips are scored);
* ``offscreen``: the audio of another clip of the same split whose sounding categories do not appear in this clip
  (:func:`offscreen_pairs`).

The replacement audio of one dataset item, whatever the condition, is :func:`negative_log_mel` (``avseg eval
--negative-audio`` and ``avseg train --negative-audio`` both take it from there).

Categories of a clip (:func:`clip_categories`): a synthetic dataset (``synth_<task>.json`` beside the benchmark
folders) gives what each clip *shows* (every object, distractors included) and what it *sounds*; otherwise S4 uses
its category folder and AVSS the classes in its label maps (both shown and sounding); MS3 has no class labels, so
its offscreen donors are any other clip (a warning says so). Categories fall into four groups
(:data:`GROUPS`: music / human / animal / vehicle-device, our assignment of the AVSBench S4 category names and the
AVSS class names, in the spirit of AVSBench-Robust); a donor is chosen among the clips whose sounding groups are
all absent from this clip's groups, else (no such clip) among those whose sounding categories are absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from avsegcli.data.avsbench import load_log_mel_pickle
from avsegcli.data.avss import FRAMES_PER_SUBSET, colour_mask_to_ids
from avsegcli.errors import AvsegError
from avsegcli.media.signals import clip_seed, condition_log_mel, loop_examples
from avsegcli.palette import AVSS_CLASS_NAMES
from avsegcli.tasks import S4, task_of

CONDITIONS = ("silence", "noise", "offscreen")

_MUSIC = ("accordion bassoon bell cello clarinet drum erhu flute guitar guzheng handpan harmonica harp marimba piano "
          "pipa saxophone sitar sorna tabla trombone trumpet tuba ukulele violin playing_acoustic_guitar "
          "playing_glockenspiel playing_piano playing_tabla playing_ukulele playing_violin")
_HUMAN = "baby boy girl man woman baby_laughter female_singing male_speech"
_ANIMAL = ("bird cat dog donkey duck elephant goose hen horse leopard lion parrot pig sheep squirrel tiger wolf "
           "cat_meowing coyote_howling dog_barking horse_clip-clop lions_roaring mynah_bird_singing")
_VEHICLE = ("airplane axe boat bus car clipper clock emergency-car frying-food gun hair-dryer helicopter keyboard "
            "missile-rocket motorcycle mower saw tank tractor train truck utv vacuum-cleaner ambulance_siren "
            "cap_gun_shooting chainsawing_trees driving_buses lawn_mowing race_car typing_on_computer_keyboard")
#: category / class name -> group (the 70 AVSS classes, the 23 AVSBench S4 categories; synthetic names are AVSS names)
GROUPS: dict[str, str] = {n: g for g, names in (("music", _MUSIC), ("human", _HUMAN), ("animal", _ANIMAL),
                                                ("vehicle-device", _VEHICLE)) for n in names.split()}


def parse_conditions(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"silence,noise"`` or a list -> the conditions in the given order (duplicates dropped); AvsegError if unknown."""
    if value is None:
        return ()
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    items = [v for v in items if v]
    bad = [v for v in items if v not in CONDITIONS]
    if bad:
        raise AvsegError(f"unknown negative-audio condition(s) {', '.join(bad)}; expected {', '.join(CONDITIONS)}")
    return tuple(dict.fromkeys(items))


def require_conditions(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """:func:`parse_conditions`, and at least one condition (AvsegError otherwise: ``--negative-audio ,``)."""
    conditions = parse_conditions(value)
    if not conditions:
        raise AvsegError("--negative-audio needs at least one of silence, noise, offscreen")
    return conditions


def group_of(name: str) -> str | None:
    return GROUPS.get(name)


def _manifest_categories(root: Path, task: str, names: set[str]) -> tuple[dict, dict] | None:
    path = root / f"synth_{task}.json"
    if not path.is_file():
        return None
    try:
        clips = json.loads(path.read_text()).get("clips", [])
    except (OSError, ValueError):
        return None
    shown, heard = {}, {}
    for c in clips:
        if c.get("name") in names:
            shown[c["name"]] = frozenset(o["category"] for o in c.get("objects", []))
            heard[c["name"]] = frozenset(x for sec in c.get("sounding", []) for x in sec)
    return (shown, heard) if set(shown) >= names else None


def clip_categories(ds: Any, indices: Sequence[int] | None = None) -> tuple[dict[str, frozenset], dict[str, frozenset], str]:
    """``(shown, heard, source)`` for the clips of dataset ``ds`` (all of them unless ``indices``): category names a
    clip shows and those it sounds, and where they came from ('synth manifest', 'category folder', 'labels' or
    'none' for MS3, whose clips have no class labels)."""
    idx = list(range(len(ds))) if indices is None else list(indices)
    infos = [ds.clip_info(i) for i in idx]
    task = task_of(ds.task)
    found = _manifest_categories(Path(ds.root), str(task), {c.name for c in infos})
    if found is not None:
        return found[0], found[1], "synth manifest"
    if task == S4:
        cats = {c.name: frozenset([c.category]) for c in infos}
        return cats, cats, "category folder"
    if task.semantic:
        cats = {}
        for c in infos:
            ids: set[int] = set()
            for p in c.mask_paths:
                if p is not None:
                    with Image.open(p) as im:
                        ids |= set(np.unique(colour_mask_to_ids(im.convert("RGB"), ds.num_classes).numpy()).tolist())
            cats[c.name] = frozenset(AVSS_CLASS_NAMES[i] for i in ids if i)
        return cats, cats, "labels"
    empty = {c.name: frozenset() for c in infos}
    return empty, empty, "none"


def _groups(cats: frozenset) -> set[str | None]:
    return {group_of(c) for c in cats}


def offscreen_pairs(names: Sequence[str], donors: Sequence[str], shown: Mapping[str, frozenset],
                    heard: Mapping[str, frozenset], seed: int, *extra: int) -> dict[str, dict[str, str] | None]:
    """For each clip of ``names``, a donor among ``donors`` (another clip): ``{"donor", "rule"}`` or None when no
    clip qualifies. ``rule`` 'group': no sounding group of the donor is among this clip's groups (every name has a
    group); 'category': no sounding category of the donor is shown in this clip; 'unlabelled': no labels at all
    (any other clip). Donors that sound nothing are never taken. Seeded per clip (``clip_seed(seed, name, 7,
    *extra)``), so a clip's donor does not depend on which other clips are scored."""
    labelled = any(heard.get(d) for d in donors) or any(shown.get(n) for n in names)
    out: dict[str, dict[str, str] | None] = {}
    for name in names:
        mine = shown.get(name, frozenset())
        others = [d for d in donors if d != name]
        if not labelled:
            tiers = [("unlabelled", others)]
        else:
            cat_ok = [d for d in others if heard.get(d) and not (heard[d] & mine)]
            my_groups = _groups(mine)
            grp_ok = [d for d in cat_ok if None not in my_groups and None not in _groups(heard[d])
                      and not (_groups(heard[d]) & my_groups)]
            tiers = [("group", grp_ok), ("category", cat_ok)]
        rng = np.random.default_rng(clip_seed(seed, name, 7, *extra))
        out[name] = None
        for rule, cands in tiers:
            if cands:
                out[name] = {"donor": cands[int(rng.integers(len(cands)))], "rule": rule}
                break
    return out


def donor_log_mel(ds: Any, donor: int, frames: int) -> torch.Tensor:
    """The audio of clip ``donor`` of dataset ``ds`` for a clip of ``frames`` frames (the ``offscreen`` condition):
    ``[frames,1,96,64]`` float32 log-mel. AVSS: the donor's real seconds (5 for v1s/v1m, 10 for v2) repeated from
    the start; S4/MS3: its benchmark log-mel pickle, ``frames`` rows."""
    info = ds.clip_info(int(donor))
    if task_of(ds.task).semantic:
        return loop_examples(ds.load_log_mel(info.audio_path), frames, FRAMES_PER_SUBSET[info.subset])
    return load_log_mel_pickle(info.audio_path, frames)


def negative_log_mel(ds: Any, item: dict[str, Any], condition: str, seed: int, *extra: int,
                     donor: int | None = None) -> torch.Tensor:
    """The replacement ``log_mel`` ``[T,1,96,64]`` of dataset item ``item`` (of ``ds``) under ``condition``.

    ``silence`` / ``noise``: one generated example per real frame (``frame_valid``; noise seeded by ``seed``, the
    clip's name and ``extra``), repeated from the start over padded frames; ``offscreen``: the audio of clip index
    ``donor`` (:func:`donor_log_mel`)."""
    t = int(item["frame_valid"].shape[0])
    if condition == "offscreen":
        if donor is None:
            raise ValueError("the offscreen condition needs a donor clip")
        return donor_log_mel(ds, donor, t)
    real = int(item["frame_valid"].sum())
    return loop_examples(condition_log_mel(condition, real, item["name"], seed, *extra), t, real)
