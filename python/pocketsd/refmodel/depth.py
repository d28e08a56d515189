"""Depth maps of the reference model's drawn scenes, for training and benchmarking its depth ControlNet.

A scene's depth map is a background plane (a floor that recedes towards the top of the picture, tilted a little
at random) and each object as a flat cut-out at its own depth, nearer than the plane. Near = bright, as the
MiDaS/DPT maps diffusers' depth ControlNets were trained on and as `pocketsd generate --depth` reads a file
(`pipeline.inputs.load_depth`: near = bright unless `--depth-invert`, stretched to the map's own range).

The objects' boxes come from `drawing._object_box` called in the same order and with the same random draws as
`drawing.draw_scene` (a copy of the generator `draw_scene` is given), and are painted with drawing's own
`_draw_shape` at its supersampling, so the map's objects cover exactly the drawn image's object pixels. The depths
themselves are drawn from a second generator, so the image stream stays exactly `drawing.make_dataset`'s.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from ..data.grammar import random_scene
from .drawing import _SUPERSAMPLE, IMAGE_SIZE, PAIR_HALF_RANGE, _draw_shape, _object_box, draw_scene, to_tensor_array

# Depth as brightness in [0, 1] before the per-map stretch: the floor spans FAR..FLOOR_NEAR (its far edge at the
# top), objects stand in OBJECT_RANGE, always nearer than any part of the floor so an object never merges into it.
FLOOR_FAR = (0.0, 0.15)
FLOOR_NEAR = (0.25, 0.45)
OBJECT_RANGE = (0.6, 1.0)


def depth_map(objects: list[tuple[str, tuple[float, float, float], float]], floor: tuple[float, float, float],
              size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size) float32 depth, near = bright. `objects`: (shape, (cx, cy, half) in pixels, depth), painted in
    order (a later one covers an earlier one, as in `draw_scene`); `floor`: (depth at the top edge, depth at the
    bottom edge, left-right tilt as a depth difference across the width)."""
    top, bottom, tilt = floor
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    plane = top + (bottom - top) * ys + tilt * (xs - 0.5)
    big = size * _SUPERSAMPLE
    # Paint each object's silhouette as its own mask at the drawing's supersampling, then box-downsample like
    # `draw_scene`: an edge pixel blends object depth and what lies behind in the same proportion as its colour.
    out = plane
    for shape, box, depth in objects:
        canvas = Image.new("L", (big, big), 0)
        _draw_shape(ImageDraw.Draw(canvas), shape, box, 255, None, 0)
        cover = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
        out = out * (1 - cover) + depth * cover
    return out.astype(np.float32)


def draw_depth(scene, rng: random.Random, depth_rng: random.Random, size: int = IMAGE_SIZE) -> np.ndarray:
    """The depth map of the image `draw_scene(scene, rng)` draws, for `rng` in the state `draw_scene` gets it in
    (pass a copy: this consumes the same draws). Depths and the floor's slope come from `depth_rng`."""
    if scene.second is None:
        boxes = [(scene.shape, _object_box(scene, rng, size))]
    else:
        boxes = [(scene.shape, _object_box(scene, rng, size, half_range=PAIR_HALF_RANGE)),
                 (scene.second[1], _object_box(scene, rng, size, scene.second_position, PAIR_HALF_RANGE))]
    floor = (depth_rng.uniform(*FLOOR_FAR), depth_rng.uniform(*FLOOR_NEAR), depth_rng.uniform(-0.1, 0.1))
    objects = [(shape, box, depth_rng.uniform(*OBJECT_RANGE)) for shape, box in boxes]
    return depth_map(objects, floor, size)


def depth_dataset(n: int, seed: int, p_position: float = 0.5, p_pair: float = 0.0):
    """`n` random scenes, their images (n, 3, H, W) in [-1, 1] — exactly `drawing.make_dataset(n, seed, …)`'s — and
    their depth maps (n, H, W) float32 near = bright, before any stretch."""
    rng = random.Random(seed)
    depth_rng = random.Random(seed + 1)
    scenes = [random_scene(rng, "plain", p_position, p_pair) for _ in range(n)]
    images, depths = [], []
    for scene in scenes:
        twin = random.Random()
        twin.setstate(rng.getstate())  # the same draws draw_scene is about to make
        depths.append(draw_depth(scene, twin, depth_rng))
        images.append(to_tensor_array(draw_scene(scene, rng)))
    return scenes, np.stack(images), np.stack(depths)


def depth_controls(depths: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Each map through `load_depth` (a user's `--depth` path: stretched to its own range, fitted, 8-bit) →
    (n, size, size) uint8, what the ControlNet is fed at generation time."""
    from ..pipeline.inputs import load_depth

    out = np.zeros((len(depths), size, size), dtype=np.uint8)
    for i, d in enumerate(depths):
        out[i] = np.asarray(load_depth(Image.fromarray(d, "F"), size, size, warn=None).control.convert("L"))
    return out
