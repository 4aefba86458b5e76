"""The synthetic object categories: what each looks like and how it sounds.

A category is a shape + colour + texture (what the camera sees) and a sound recipe (what the microphone
hears). Every category also names one of the 70 AVSS classes, whose id and VOC colour its AVSS masks use.

The sounds sit on a grid that is even on the mel axis (about eight of the 64 VGGish mel bands apart, 125-7500
Hz) and differ in pattern too (plucks, amplitude-modulated noise, barks, decaying notes, vibrato, chirps,
noise bursts, struck tones), so a 96x64 log-mel patch tells them apart at a glance.
"""

from __future__ import annotations

from dataclasses import dataclass

from avsegcli.palette import AVSS_CLASS_NAMES

#: shapes :func:`avsegcli.synth.scene.shape_mask` can draw
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "ring", "hexagon")
#: textures :func:`avsegcli.synth.scene.texture` can paint
TEXTURES = ("solid", "striped", "dotted")
#: sound kinds :func:`avsegcli.synth.sound.category_sound` can make
SOUND_KINDS = ("pluck", "noise_am", "bursts", "notes", "vibrato", "chirps", "noise_bursts", "struck")


@dataclass(frozen=True)
class SoundSpec:
    """A category's sound recipe.

    ``kind`` (one of :data:`SOUND_KINDS`); ``freq`` the centre / fundamental in Hz; ``rate`` events per second
    (plucks, bursts, notes, chirps) or the modulation rate; ``harmonics`` relative amplitudes of partials
    1, 2, ... (tonal kinds); ``decay`` envelope time constant in s; ``width`` relative band width (noise
    kinds) or sweep span (chirps, as a ratio of ``freq``).
    """

    kind: str
    freq: float
    rate: float = 0.0
    harmonics: tuple[float, ...] = (1.0,)
    decay: float = 0.1
    width: float = 0.25


@dataclass(frozen=True)
class Category:
    """One synthetic object category (visual look + sound + the AVSS class its masks use)."""

    name: str
    shape: str
    colour: tuple[int, int, int]
    texture: str
    sound: SoundSpec
    avss_name: str = ""

    @property
    def avss_id(self) -> int:
        """Index of ``avss_name`` (default ``name``) in ``label2idx.json`` (1..70)."""
        return AVSS_CLASS_NAMES.index(self.avss_name or self.name)

    def describe(self) -> dict:
        """A JSON-able description (for the dataset manifest)."""
        s = self.sound
        return {"name": self.name, "avss_id": self.avss_id, "shape": self.shape, "colour": list(self.colour),
                "texture": self.texture, "sound": {"kind": s.kind, "freq_hz": s.freq, "rate_hz": s.rate}}


#: The default eight categories (centres at 255, 546, 926, 1422, 2069, 2914, 4017, 5453 Hz: even in mel).
CATEGORIES: tuple[Category, ...] = (
    Category("guitar", "triangle", (60, 180, 75), "striped",
             SoundSpec("pluck", 255.0, rate=3.0, harmonics=(1.0, 0.35), decay=0.12)),
    Category("car", "square", (220, 40, 40), "solid",
             SoundSpec("noise_am", 546.0, rate=11.0, width=0.22)),
    Category("dog", "circle", (245, 130, 48), "dotted",
             SoundSpec("bursts", 926.0, rate=2.5, harmonics=(1.0, 0.3), decay=0.2)),
    Category("piano", "hexagon", (235, 235, 235), "striped",
             SoundSpec("notes", 1422.0, rate=2.0, harmonics=(1.0,), decay=0.25)),
    Category("violin", "diamond", (145, 30, 180), "solid",
             SoundSpec("vibrato", 2069.0, rate=6.0, harmonics=(1.0,), width=0.02)),
    Category("bird", "star", (255, 225, 25), "solid",
             SoundSpec("chirps", 2914.0, rate=5.0, decay=0.12, width=0.22)),
    Category("drum", "ring", (0, 110, 220), "dotted",
             SoundSpec("noise_bursts", 4017.0, rate=4.0, decay=0.06, width=0.12)),
    Category("bell", "cross", (70, 230, 230), "striped",
             SoundSpec("struck", 5453.0, rate=2.0, decay=0.3)),
)


def category_names(categories: tuple[Category, ...] = CATEGORIES) -> list[str]:
    """The names of ``categories``, in order."""
    return [c.name for c in categories]


def check_categories(categories: tuple[Category, ...]) -> None:
    """Raise ``ValueError`` for unknown shapes / textures / sound kinds / AVSS names or repeated names."""
    names = [c.name for c in categories]
    if len(set(names)) != len(names):
        raise ValueError(f"category names repeat: {names}")
    if len(categories) < 2:
        raise ValueError("need at least 2 categories")
    for c in categories:
        if c.shape not in SHAPES or c.texture not in TEXTURES or c.sound.kind not in SOUND_KINDS:
            raise ValueError(f"category {c.name!r}: unknown shape, texture or sound kind")
        if (c.avss_name or c.name) not in AVSS_CLASS_NAMES[1:]:
            raise ValueError(f"category {c.name!r}: {c.avss_name or c.name!r} is not an AVSS class name")
