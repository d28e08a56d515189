"""The adherence check's position and two-object sections (issue 26): the side an object is on, read from pixels
alone, against where the renderer drew it; and proof that the check fails a model that ignores position words.

Every expected side comes from the scene the renderer drew (its `position`), never from the reader."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from PIL import Image

from pocketsd.data.grammar import BACKGROUNDS, COLORS, OPPOSITE, POSITIONS, SHAPES, Scene
from pocketsd.eval.adherence import read_pair, score_pairs, score_positions
from pocketsd.eval.classify import classify, read_halves
from pocketsd.refmodel.check import TARGETS, pair_scenes, position_scenes
from pocketsd.refmodel.drawing import draw_scene

# What each grammar position means in the reader's words, written out here rather than taken from the reader.
EXPECTED_SIDE = {"in the center": "center", "on the left": "left", "on the right": "right", "at the top": "top",
                 "at the bottom": "bottom"}


def _drawn(scenes, seed):
    rng = random.Random(seed)
    return [draw_scene(s, rng) for s in scenes]


# ---- the reader on drawn images -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_side_of_every_drawn_scene_is_where_it_was_drawn(seed):
    """Every colour × shape × background × position, drawn with a fresh jitter per seed (1,080 images in all)."""
    scenes = [Scene(c, s, b, p) for c in COLORS for s in SHAPES for b in BACKGROUNDS for p in POSITIONS]
    wrong = [(sc.caption, r.side) for sc, img in zip(scenes, _drawn(scenes, seed))
             if (r := classify(img)).side != EXPECTED_SIDE[sc.position]]
    assert not wrong, wrong[:5]


def test_centroid_follows_the_drawn_object():
    """The area centroid lies in the asked half (a triangle's sits below its box centre, so only the drawn
    direction is checked, not the centre zone), and the reading of an empty picture has no side."""
    for k, position in enumerate(("on the left", "on the right", "at the top", "at the bottom")):
        for shape in SHAPES:
            r = classify(draw_scene(Scene("blue", shape, "white", position), random.Random(k)))
            x, y = r.centroid
            assert {"on the left": x < 0.4, "on the right": x > 0.6, "at the top": y < 0.45,
                    "at the bottom": y > 0.6}[position], (position, shape, r.centroid)
    empty = classify(Image.new("RGB", (128, 128), BACKGROUNDS["gray"]))
    assert empty.side is None and empty.centroid is None


def test_halves_split_both_ways():
    scene = Scene("red", "square", "black", "at the top", second=("green", "circle"))
    top, bottom = read_halves(draw_scene(scene, random.Random(3)), "vertical")
    assert (top.color, top.shape, bottom.color, bottom.shape) == ("red", "square", "green", "circle")
    with pytest.raises(ValueError, match="axis"):
        read_halves(Image.new("RGB", (8, 8)), "diagonal")


# ---- the position section catches a model that ignores positions -----------------------------------------------
def test_position_prompts_rotate_sides_colours_shapes_and_backgrounds():
    scenes = position_scenes(60)
    assert len(scenes) == 60 and len(set(scenes)) == 60
    by_side = Counter(s.position for s in scenes)
    assert set(by_side) == set(OPPOSITE) and set(by_side.values()) == {15}
    for position in OPPOSITE:
        mine = [s for s in scenes if s.position == position]
        assert {s.color for s in mine} == set(COLORS) and {s.shape for s in mine} == set(SHAPES)
        assert {s.background for s in mine} == set(BACKGROUNDS)


def test_a_model_drawing_every_object_in_the_centre_fails_the_position_check():
    prompts = position_scenes(60)
    centred = [Scene(s.color, s.shape, s.background, "in the center") for s in prompts]
    result = score_positions(_drawn(centred, 0), prompts)
    assert result["side_right"] == 0.0 and result["side_right"] < TARGETS["position"]
    assert result["color"] == result["shape"] == result["background"] == 1.0  # only the position is wrong
    assert result["mistakes"] == {"left->center": 15, "right->center": 15, "top->center": 15, "bottom->center": 15}


def test_a_model_with_one_favourite_side_fails_and_one_placing_objects_at_random_too():
    prompts = position_scenes(60)
    always_right = [Scene(s.color, s.shape, s.background, "on the right") for s in prompts]
    result = score_positions(_drawn(always_right, 1), prompts)
    asked_right = sum(s.position == "on the right" for s in prompts)
    assert result["side_right"] == asked_right / len(prompts) < TARGETS["position"]
    rng = random.Random(5)
    anywhere = [Scene(s.color, s.shape, s.background, rng.choice(POSITIONS)) for s in prompts]
    assert score_positions(_drawn(anywhere, 2), prompts)["side_right"] < TARGETS["position"]


def test_a_model_following_positions_passes_the_position_check():
    prompts = position_scenes(60)
    result = score_positions(_drawn(prompts, 4), prompts)
    assert result["side_right"] == 1.0 >= TARGETS["position"]
    assert all(v["share"] == 1.0 and v["n"] == 15 for v in result["by_side"].values())


def test_position_scoring_refuses_scenes_without_a_position():
    with pytest.raises(ValueError, match="position"):
        score_positions([Image.new("RGB", (8, 8))], [Scene("red", "circle", "white")])


# ---- the two-object section --------------------------------------------------------------------------------------
def test_pair_prompts_have_two_different_objects_on_opposite_sides():
    scenes = pair_scenes(12)
    assert Counter(s.position for s in scenes) == Counter({p: 3 for p in OPPOSITE})
    assert all(s.second[0] != s.color for s in scenes)


def test_drawn_pairs_read_back_right_and_one_object_alone_does_not():
    prompts = pair_scenes(12)
    assert score_pairs(_drawn(prompts, 6), prompts)["both_right"] == 1.0
    # A model that draws only the first object, on its side: the first half right, the second never.
    alone = [Scene(s.color, s.shape, s.background, s.position) for s in prompts]
    result = score_pairs(_drawn(alone, 6), prompts)
    assert result["both_right"] == 0.0 and result["second_right"] == 0.0 and result["first_right"] == 1.0
    # The same two objects with their sides swapped: both halves wrong.
    swapped = [Scene(s.second[0], s.second[1], s.background, s.position, second=(s.color, s.shape)) for s in prompts]
    assert score_pairs(_drawn(swapped, 7), prompts)["both_right"] == 0.0


def test_read_pair_returns_the_first_objects_half_first():
    scene = Scene("yellow", "triangle", "gray", "on the right", second=("purple", "square"))
    first, second = read_pair(draw_scene(scene, random.Random(9)), scene)
    assert (first.color, second.color) == ("yellow", "purple")
