"""Reads a reference-model image back into (colour, shape, background) from its pixels alone."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..data.grammar import BACKGROUNDS, COLORS

_OBJECT_DISTANCE = 60.0  # RGB distance from the background that counts as "object"
_BORDER = 4


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    dist = [np.linalg.norm(rgb - np.asarray(palette[n], dtype=np.float32)) for n in names]
    return names[int(np.argmin(dist))]


@dataclass(frozen=True)
class Reading:
    color: str | None
    shape: str | None
    background: str
    fill_ratio: float
    object_fraction: float


def object_mask(pixels: np.ndarray, background_rgb: np.ndarray) -> np.ndarray:
    """Largest connected blob of pixels that differ from the background."""
    mask = np.linalg.norm(pixels - background_rgb, axis=-1) > _OBJECT_DISTANCE
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def shape_from_mask(mask: np.ndarray) -> tuple[str | None, float]:
    """Circle, square or triangle from how much of its bounding box the blob fills."""
    if mask.sum() < 30:
        return None, 0.0
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = float(mask.sum() / box)
    # Ideal fills: square 1.0, circle π/4 ≈ 0.785, triangle 0.5.
    if fill > 0.89:
        return "square", fill
    if fill > 0.64:
        return "circle", fill
    return "triangle", fill


def classify(image) -> Reading:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    ring = np.concatenate(
        [pixels[:_BORDER].reshape(-1, 3), pixels[-_BORDER:].reshape(-1, 3),
         pixels[:, :_BORDER].reshape(-1, 3), pixels[:, -_BORDER:].reshape(-1, 3)]
    )
    bg_rgb = np.median(ring, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    mask = object_mask(pixels, bg_rgb)
    shape, fill = shape_from_mask(mask)
    color = _nearest(np.median(pixels[mask], axis=0), COLORS) if shape else None
    return Reading(color, shape, background, fill, float(mask.mean()))
