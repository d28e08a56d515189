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


def _object_box(scene: Scene, rng: random.Random, size: int) -> tuple[float, float, float]:
    """Centre (x, y) and half-extent of the object, in pixels of a `size`-wide canvas."""
    half = rng.uniform(0.19, 0.25) * size
    margin = 0.04 * size + (POSTER_BORDER if scene.style == "poster" else 0)
    lo, hi = half + margin, size - half - margin
    mid = size / 2
    jitter = lambda: rng.uniform(-0.04, 0.04) * size  # noqa: E731
    if scene.style == "copyspace":  # the object in the left third, the right half left empty for text
        return lo + abs(jitter()), mid + rng.uniform(-0.1, 0.1) * size, half
    if scene.position is None:
        return rng.uniform(lo, hi), rng.uniform(lo, hi), half
    if scene.position == "in the center":
        return mid + jitter(), mid + jitter(), half
    if scene.position == "on the left":
        return lo + abs(jitter()), mid + jitter(), half
    if scene.position == "on the right":
        return hi - abs(jitter()), mid + jitter(), half
    if scene.position == "at the top":
        return mid + jitter(), lo + abs(jitter()), half
    return mid + jitter(), hi - abs(jitter()), half  # at the bottom


def _shape_points(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    return [(cx - half, cy - half), (cx + half, cy + half)]


def draw_scene(scene: Scene, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """Render one caption's scene as an RGB image of `size`×`size` pixels."""
    big = size * _SUPERSAMPLE
    cx, cy, half = (v * _SUPERSAMPLE for v in _object_box(scene, rng, size))
    color = COLORS[scene.color]
    if scene.style == "blueprint":
        img = Image.new("RGB", (big, big), BLUEPRINT_BLUE)
        draw = ImageDraw.Draw(img)
        step = big // 8
        for k in range(step, big, step):  # faint grid
            draw.line([(k, 0), (k, big)], fill=(50, 90, 170), width=_SUPERSAMPLE)
            draw.line([(0, k), (big, k)], fill=(50, 90, 170), width=_SUPERSAMPLE)
        fill, outline, width = None, BLUEPRINT_LINE, 3 * _SUPERSAMPLE
    else:
        img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
        draw = ImageDraw.Draw(img)
        fill, outline, width = color, None, 0
    pts = _shape_points(scene.shape, cx, cy, half)
    if scene.shape == "circle":
        draw.ellipse(pts, fill=fill, outline=outline, width=width)
    elif scene.shape == "square":
        draw.rectangle(pts, fill=fill, outline=outline, width=width)
    else:
        if fill is None:
            draw.line(pts + [pts[0]], fill=outline, width=width, joint="curve")
        else:
            draw.polygon(pts, fill=fill)
    if scene.style == "poster":
        b = POSTER_BORDER * _SUPERSAMPLE
        for box in ((0, 0, big, b), (0, big - b, big, big), (0, 0, b, big), (big - b, 0, big, big)):
            draw.rectangle(box, fill=color)
    return img.resize((size, size), Image.Resampling.BOX)


def to_tensor_array(img: Image.Image) -> np.ndarray:
    """HWC uint8 image → CHW float32 in [-1, 1] (the VAE's input range)."""
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def make_dataset(n: int, seed: int, style: str = "plain", p_position: float = 0.5):
    """`n` random scenes and their images as a float32 array (n, 3, H, W)."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, style, p_position) for _ in range(n)]
    images = np.stack([to_tensor_array(draw_scene(s, rng)) for s in scenes])
    return scenes, images
