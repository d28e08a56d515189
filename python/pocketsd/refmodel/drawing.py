"""Procedurally drawn training images for the reference model and its style LoRAs."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from ..data.grammar import BACKGROUNDS, COLORS, Scene, random_scene

IMAGE_SIZE = 128
_SUPERSAMPLE = 4  # draw large, then downsample: anti-aliased edges like a real photo's
POSTER_BORDER = 10
BLUEPRINT_BLUE = (25, 60, 140)
BLUEPRINT_LINE = (225, 235, 255)


def _object_box(scene: Scene, rng: random.Random, size: int, position: str | None = None,
                half_range: tuple[float, float] = (0.19, 0.25)) -> tuple[float, float, float]:
    """Centre (x, y) and half-extent of the object, in pixels of a `size`-wide canvas."""
    position = scene.position if position is None else position
    half = rng.uniform(*half_range) * size
    margin = 0.04 * size + (POSTER_BORDER if scene.style == "poster" else 0)
    lo, hi = half + margin, size - half - margin
    mid = size / 2
    jitter = lambda: rng.uniform(-0.04, 0.04) * size  # noqa: E731
    if scene.style == "copyspace":  # the object in the left third, the right half left empty for text
        return lo + abs(jitter()), mid + rng.uniform(-0.1, 0.1) * size, half
    if position is None:
        return rng.uniform(lo, hi), rng.uniform(lo, hi), half
    if position == "in the center":
        return mid + jitter(), mid + jitter(), half
    if position == "on the left":
        return lo + abs(jitter()), mid + jitter(), half
    if position == "on the right":
        return hi - abs(jitter()), mid + jitter(), half
    if position == "at the top":
        return mid + jitter(), lo + abs(jitter()), half
    return mid + jitter(), hi - abs(jitter()), half  # at the bottom


def _shape_points(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    return [(cx - half, cy - half), (cx + half, cy + half)]


# Two objects side by side are smaller, so that both fit their halves with a gap between them.
PAIR_HALF_RANGE = (0.14, 0.19)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float], fill, outline, width: int) -> None:
    pts = _shape_points(shape, *(v * _SUPERSAMPLE for v in box))
    if shape == "circle":
        draw.ellipse(pts, fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle(pts, fill=fill, outline=outline, width=width)
    elif fill is None:
        draw.line(pts + [pts[0]], fill=outline, width=width, joint="curve")
    else:
        draw.polygon(pts, fill=fill)


def draw_scene(scene: Scene, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """Render one caption's scene as an RGB image of `size`×`size` pixels."""
    big = size * _SUPERSAMPLE
    if scene.second is None:
        objects = [(scene.color, scene.shape, _object_box(scene, rng, size))]
    else:
        objects = [(scene.color, scene.shape, _object_box(scene, rng, size, half_range=PAIR_HALF_RANGE)),
                   (*scene.second, _object_box(scene, rng, size, scene.second_position, PAIR_HALF_RANGE))]
    if scene.style == "blueprint":
        img = Image.new("RGB", (big, big), BLUEPRINT_BLUE)
        draw = ImageDraw.Draw(img)
        step = big // 8
        for k in range(step, big, step):  # faint grid
            draw.line([(k, 0), (k, big)], fill=(50, 90, 170), width=_SUPERSAMPLE)
            draw.line([(0, k), (big, k)], fill=(50, 90, 170), width=_SUPERSAMPLE)
    else:
        img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
        draw = ImageDraw.Draw(img)
    for color, shape, box in objects:
        if scene.style == "blueprint":
            _draw_shape(draw, shape, box, None, BLUEPRINT_LINE, 3 * _SUPERSAMPLE)
        else:
            _draw_shape(draw, shape, box, COLORS[color], None, 0)
    if scene.style == "poster":
        b = POSTER_BORDER * _SUPERSAMPLE
        for edge in ((0, 0, big, b), (0, big - b, big, big), (0, 0, b, big), (big - b, 0, big, big)):
            draw.rectangle(edge, fill=COLORS[scene.color])
    return img.resize((size, size), Image.Resampling.BOX)


def to_tensor_array(img: Image.Image) -> np.ndarray:
    """HWC uint8 image → CHW float32 in [-1, 1] (the VAE's input range)."""
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def make_dataset(n: int, seed: int, style: str = "plain", p_position: float = 0.5, p_pair: float = 0.0):
    """`n` random scenes and their images as a float32 array (n, 3, H, W); `p_pair` = 0 draws version 1's data."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, style, p_position, p_pair) for _ in range(n)]
    images = np.stack([to_tensor_array(draw_scene(s, rng)) for s in scenes])
    return scenes, images
