"""Prompt adherence of reference-model images: how often the pixels show what the caption asked for."""

from __future__ import annotations

from collections import Counter

from ..data.grammar import Scene
from .classify import classify


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
