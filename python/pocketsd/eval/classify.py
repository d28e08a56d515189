"""Reads a reference-model image back into (colour, shape, background, side) from its pixels alone."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..data.grammar import BACKGROUNDS, COLORS

_OBJECT_DISTANCE = 60.0  # RGB distance from the background that counts as "object"
_BORDER = 4
# The side an object is on, from its centre's offset from the image centre (fractions of the side length): within
# this of the centre on both axes it reads "center". The renderer puts a centred object within 0.04 of the centre and a
# placed one at least 0.17 from it (half-extent ≥ 0.14 plus a 0.04 margin), so the dead zone sits between the two.
CENTER_ZONE = 0.1
SIDES = ("left", "right", "top", "bottom")
# The grammar's position words as sides (what a caption asks for, in the reader's words).
SIDE_OF_POSITION = {"in the center": "center", "on the left": "left", "on the right": "right",
                    "at the top": "top", "at the bottom": "bottom"}


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
    # (x, y) of the object's area centroid and of its bounding-box centre, as fractions of width and height
    centroid: tuple[float, float] | None = None
    box_center: tuple[float, float] | None = None
    side: str | None = None  # left / right / top / bottom / center, from box_center (see side_of); None: no object


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


def border_rgb(pixels: np.ndarray) -> np.ndarray:
    """The background's colour: the median of a ring `_BORDER` pixels wide along the picture's edges."""
    ring = np.concatenate(
        [pixels[:_BORDER].reshape(-1, 3), pixels[-_BORDER:].reshape(-1, 3),
         pixels[:, :_BORDER].reshape(-1, 3), pixels[:, -_BORDER:].reshape(-1, 3)]
    )
    return np.median(ring, axis=0)


def background_mean(pixels: np.ndarray) -> np.ndarray:
    """Mean RGB of the background pixels: every pixel within `_OBJECT_DISTANCE` of the border's colour (objects and
    anything else that stands out from the background left out)."""
    near = np.linalg.norm(pixels - border_rgb(pixels), axis=-1) <= _OBJECT_DISTANCE
    return pixels[near].mean(axis=0) if near.any() else border_rgb(pixels)


def centroid_and_box_center(mask: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """(x, y) of the blob's area centroid and of its bounding box's centre, as fractions of width and height."""
    if not mask.any():
        return None
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    # +0.5: a pixel's centre, so a blob filling the image has its centre at exactly 0.5
    centroid = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    box = ((xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h)
    return (float(centroid[0]), float(centroid[1])), (float(box[0]), float(box[1]))


def side_of(center: tuple[float, float]) -> str:
    """left / right / top / bottom / center: the axis on which the point is farther from the image centre decides,
    and within CENTER_ZONE of the centre on both axes it is the centre."""
    dx, dy = center[0] - 0.5, center[1] - 0.5
    if max(abs(dx), abs(dy)) < CENTER_ZONE:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def classify(image) -> Reading:
    """Colour, shape and background of the largest object, and the side it is on.

    The side is read from the object's bounding-box centre, not its area centroid: a triangle's centroid lies a
    third of its half-height below its box centre (up to 0.08 of the image), which would move a centred triangle
    out of the centre zone; the box centre is where the renderer places every shape. Both are reported."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    bg_rgb = border_rgb(pixels)
    background = _nearest(bg_rgb, BACKGROUNDS)
    mask = object_mask(pixels, bg_rgb)
    shape, fill = shape_from_mask(mask)
    color = _nearest(np.median(pixels[mask], axis=0), COLORS) if shape else None
    centres = centroid_and_box_center(mask) if shape else None
    centroid, box = centres if centres else (None, None)
    return Reading(color, shape, background, fill, float(mask.mean()), centroid, box,
                   side_of(box) if box else None)


def read_halves(image, axis: str = "horizontal"):
    """`classify` on each half of the image, one object per half: (left, right) halves for "horizontal",
    (top, bottom) for "vertical"."""
    w, h = image.size
    if axis == "horizontal":
        return classify(image.crop((0, 0, w // 2, h))), classify(image.crop((w // 2, 0, w, h)))
    if axis == "vertical":
        return classify(image.crop((0, 0, w, h // 2))), classify(image.crop((0, h // 2, w, h)))
    raise ValueError(f"axis is 'horizontal' or 'vertical', not {axis!r}")
