"""Version 2's grammar: an optional second object on the opposite side, drawn where its caption says."""

import random

import numpy as np
import pytest
from scipy import ndimage

from pocketsd.data.grammar import BACKGROUNDS, COLORS, OPPOSITE, Scene
from pocketsd.refmodel.drawing import draw_scene, make_dataset


def test_version_1_data_is_unchanged_without_pairs():
    # Pinned from the commit that trained version 1 (its draws must stay reproducible): the first captions of the
    # UNet data stream's seed.
    assert [s.caption for s in make_dataset(4, 100)[0]] == [
        "a green triangle on a black background, at the top",
        "a yellow triangle on a white background",
        "a red triangle on a black background",
        "a blue circle on a black background, on the left",
    ]


def test_pair_caption_names_both_objects_and_opposite_sides():
    scene = Scene("red", "circle", "white", "on the left", second=("blue", "square"))
    assert scene.caption == "a red circle on a white background, on the left, a blue square on the right"
    assert Scene("red", "circle", "white", "at the top", second=("blue", "square")).second_position == "at the bottom"


@pytest.mark.parametrize("position", [None, "in the center"])
def test_a_second_object_needs_the_first_on_a_side(position):
    with pytest.raises(ValueError, match="second object"):
        Scene("red", "circle", "white", position, second=("blue", "square"))


def _blob_centres(img, background):
    px = np.asarray(img, dtype=float)
    labels, n = ndimage.label(np.linalg.norm(px - BACKGROUNDS[background], axis=-1) > 60)
    centres = ndimage.center_of_mass(np.ones(labels.shape), labels, range(1, n + 1))
    colours = [np.median(px[labels == k], axis=0) for k in range(1, n + 1)]
    return centres, colours


@pytest.mark.parametrize("seed", range(12))
def test_pair_scenes_draw_each_object_on_its_side(seed):
    rng = random.Random(seed)
    position = list(OPPOSITE)[seed % 4]
    first, second = list(COLORS)[seed % 6], list(COLORS)[(seed + 1) % 6]
    scene = Scene(first, "square", "gray", position, second=(second, "circle"))
    centres, colours = _blob_centres(draw_scene(scene, rng), "gray")
    assert len(centres) == 2  # two separate objects, not touching
    want = {first: position, second: OPPOSITE[position]}
    for (cy, cx), rgb in zip(centres, colours):
        name = min(COLORS, key=lambda c: np.linalg.norm(np.asarray(COLORS[c]) - rgb))
        side = {"on the left": cx < 64, "on the right": cx > 64, "at the top": cy < 64, "at the bottom": cy > 64}
        assert side[want[name]], (name, want[name], cx, cy)


def test_pair_share_follows_p_pair():
    scenes, _ = make_dataset(400, 7, p_position=0.8, p_pair=0.25)
    share = sum(s.second is not None for s in scenes) / len(scenes)
    assert 0.18 < share < 0.32
    assert all(s.second[0] != s.color for s in scenes if s.second)
