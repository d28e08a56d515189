"""Prompt adherence of reference-model images: how often the pixels show what the caption asked for."""

from __future__ import annotations

from collections import Counter

from ..data.grammar import Scene
from .classify import SIDE_OF_POSITION, classify, read_halves


def score_adherence(images, scenes: list[Scene]) -> dict:
    """Fractions of images whose colour, shape, background (and all three) read back right."""
    if len(images) != len(scenes):
        raise ValueError("one scene per image")
    hits = Counter()
    confusion: dict[str, Counter] = {"color": Counter(), "shape": Counter(), "background": Counter()}
    readings = []
    for img, scene in zip(images, scenes):
        r = classify(img)
        readings.append(r)
        ok = {"color": r.color == scene.color, "shape": r.shape == scene.shape, "background": r.background == scene.background}
        for k, v in ok.items():
            hits[k] += v
            if not v:
                confusion[k][f"{getattr(scene, k)}->{getattr(r, k)}"] += 1
        hits["all"] += all(ok.values())
    n = len(scenes)
    return {
        "n_images": n,
        "color": hits["color"] / n,
        "shape": hits["shape"] / n,
        "background": hits["background"] / n,
        "all_three": hits["all"] / n,
        "mistakes": {k: dict(v.most_common()) for k, v in confusion.items()},
        "readings": [r.__dict__ for r in readings],
    }


def _share(hits: int, n: int) -> float | None:
    return hits / n if n else None


def score_positions(images, scenes: list[Scene]) -> dict:
    """Share of images whose object is on the side its caption asked for (`classify`'s `side`), overall and per
    side, with the colour, shape and background of the same images (following positions must not cost them)."""
    if len(images) != len(scenes):
        raise ValueError("one scene per image")
    if any(s.position not in SIDE_OF_POSITION for s in scenes):
        raise ValueError("every scene of the position check asks for a position")
    per_side: dict[str, Counter] = {}
    mistakes: Counter = Counter()
    hits = Counter()
    readings = []
    for img, scene in zip(images, scenes):
        r = classify(img)
        want = SIDE_OF_POSITION[scene.position]
        right = r.side == want
        per_side.setdefault(want, Counter()).update(n=1, right=int(right))
        if not right:
            mistakes[f"{want}->{r.side}"] += 1
        hits.update(side=int(right), color=int(r.color == scene.color), shape=int(r.shape == scene.shape),
                    background=int(r.background == scene.background))
        readings.append({"prompt": scene.caption, "asked": want, "side": r.side, "box_center": r.box_center,
                         "centroid": r.centroid})
    n = len(scenes)
    return {
        "n_images": n,
        "side_right": _share(hits["side"], n),
        "by_side": {side: {"right": c["right"], "n": c["n"], "share": _share(c["right"], c["n"])}
                    for side, c in per_side.items()},
        "color": _share(hits["color"], n), "shape": _share(hits["shape"], n),
        "background": _share(hits["background"], n),
        "mistakes": dict(mistakes.most_common()),
        "readings": readings,
    }


def read_pair(image, scene: Scene) -> tuple:
    """(reading of the first object's half, reading of the second's): the image cut in two across the axis of the
    scene's position (left/right halves for a side, top/bottom halves for top or bottom), one object per half."""
    side = SIDE_OF_POSITION[scene.position]
    first_half, second_half = read_halves(image, "horizontal" if side in ("left", "right") else "vertical")
    return (first_half, second_half) if side in ("left", "top") else (second_half, first_half)


def score_pairs(images, scenes: list[Scene]) -> dict:
    """Two-object scenes: share of images whose two halves each read back as their object (colour and shape) on
    the asked background; the first object, the second and both."""
    if len(images) != len(scenes):
        raise ValueError("one scene per image")
    if any(s.second is None for s in scenes):
        raise ValueError("every scene of the two-object check has a second object")
    hits = Counter()
    rows = []
    for img, scene in zip(images, scenes):
        first, second = read_pair(img, scene)
        ok_first = (first.color, first.shape, first.background) == (scene.color, scene.shape, scene.background)
        ok_second = (second.color, second.shape, second.background) == (*scene.second, scene.background)
        hits.update(first=int(ok_first), second=int(ok_second), both=int(ok_first and ok_second))
        rows.append({"prompt": scene.caption, "first": [first.color, first.shape, first.background],
                     "second": [second.color, second.shape, second.background], "both_right": ok_first and ok_second})
    n = len(scenes)
    return {"n_images": n, "both_right": _share(hits["both"], n), "first_right": _share(hits["first"], n),
            "second_right": _share(hits["second"], n), "rows": rows}
