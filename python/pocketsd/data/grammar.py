"""The caption grammar of the reference model (see shared/CONTRACT.md)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
POSITIONS = ("in the center", "on the left", "on the right", "at the top", "at the bottom")
# Two-object scenes (reference model version 2): the first object takes one side, the second the opposite one.
OPPOSITE = {"on the left": "on the right", "on the right": "on the left", "at the top": "at the bottom",
            "at the bottom": "at the top"}
# Styles exist only for the two domain LoRAs; the base model never sees them.
STYLES = ("plain", "poster", "blueprint")
STYLE_SUFFIX = {"plain": "", "poster": ", poster style", "blueprint": ", blueprint style",
                # the third style, learned by `pocketsd lora train` from 32 drawn images (refmodel/copyspace.py); not
                # in STYLES, which lists what the reference VAE was trained on, nor tokenizer words (bytes)
                "copyspace": ", copy space"}


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    background: str
    position: str | None = None
    style: str = "plain"
    # An optional second object (colour, shape), always at OPPOSITE[position]. The caption joins it with a comma
    # rather than "and": every grammar word is one token of the shipped tokenizer, and a new word would renumber it.
    second: tuple[str, str] | None = None

    def __post_init__(self):
        if self.second is not None and self.position not in OPPOSITE:
            raise ValueError(f"a second object needs the first on a side ({', '.join(OPPOSITE)}), not {self.position!r}")

    @property
    def second_position(self) -> str | None:
        return OPPOSITE[self.position] if self.second else None

    @property
    def caption(self) -> str:
        text = f"a {self.color} {self.shape} on a {self.background} background"
        if self.position:
            text += f", {self.position}"
        if self.second:
            text += f", a {self.second[0]} {self.second[1]} {self.second_position}"
        return text + STYLE_SUFFIX[self.style]


def adherence_scenes() -> list[Scene]:
    """The 54 colour × shape × background prompts of the adherence check."""
    return [Scene(c, s, b) for b in BACKGROUNDS for c in COLORS for s in SHAPES]


def all_scenes(style: str = "plain") -> list[Scene]:
    return [
        Scene(c, s, b, p, style)
        for c, s, b, p in itertools.product(COLORS, SHAPES, BACKGROUNDS, (None, *POSITIONS))
    ]


def random_scene(rng: random.Random, style: str = "plain", p_position: float = 0.5, p_pair: float = 0.0) -> Scene:
    """One random scene. With `p_pair` = 0 the draws are exactly version 1's (its training data stays reproducible);
    otherwise that share of scenes has a second object of another colour on the opposite side."""
    if p_pair and rng.random() < p_pair:
        position = rng.choice(list(OPPOSITE))
        color = rng.choice(list(COLORS))
        second = (rng.choice([c for c in COLORS if c != color]), rng.choice(SHAPES))
        return Scene(color, rng.choice(SHAPES), rng.choice(list(BACKGROUNDS)), position, style, second)
    position = rng.choice(POSITIONS) if rng.random() < p_position else None
    return Scene(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS)), position, style)


def grammar_words() -> list[str]:
    """Every word a caption can contain (the tokenizer makes each one token)."""
    words = set("a on background poster blueprint style".split())
    words.update(COLORS, SHAPES, BACKGROUNDS)
    for p in POSITIONS:
        words.update(p.split())
    return sorted(words)


# ---- what compression may see, and what evaluation keeps for itself ------------------------------------------
# One in three of the 54 colour × shape × background combinations is never used to compress (calibration and
# distillation draw only from the other 36), with or without a position word. The rule is balanced: for every
# colour and background exactly one shape is held out, so each colour appears 3 times, each shape and background 6
# times among the 18 held-out combinations. Evaluation reports them apart from the 36 in-set ones.
HELD_OUT_RULE = "(colour index + shape index + background index) % 3 == 0, indices in COLORS/SHAPES/BACKGROUNDS order"


def is_held_out(scene: Scene) -> bool:
    """True for a combination compression never sees (see HELD_OUT_RULE); positions and styles do not matter."""
    return (list(COLORS).index(scene.color) + SHAPES.index(scene.shape)
            + list(BACKGROUNDS).index(scene.background)) % 3 == 0


def held_out_scenes() -> list[Scene]:
    """The 18 adherence prompts (no position) of combinations compression never sees."""
    return [s for s in adherence_scenes() if is_held_out(s)]


def in_set_scenes() -> list[Scene]:
    """The 36 adherence prompts (no position) of combinations compression draws its prompts from."""
    return [s for s in adherence_scenes() if not is_held_out(s)]


def calibration_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` distinct captions of in-set combinations (never a held-out one), about half with a position word, in a
    seeded order. There are 216 such captions; past that the draw starts over (callers drop repeats)."""
    rng = random.Random(seed)
    plain = [s for s in all_scenes() if s.position is None and not is_held_out(s)]
    placed = [s for s in all_scenes() if s.position is not None and not is_held_out(s)]
    rng.shuffle(plain)
    rng.shuffle(placed)
    # alternate plain and placed captions while both last, then the rest: half with a position, as training had
    mixed = [s for pair in zip(plain, placed) for s in pair] + placed[len(plain):]
    return [mixed[i % len(mixed)].caption for i in range(n)]
