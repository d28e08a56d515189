"""The reference model's sketch ControlNet: shipped, fits the UNet, moves the object where the outline is; and the
trainer's pieces (user-like sketches, determinism, atomic save)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from pocketsd.data import REFERENCE_MODEL

CONTROLNET = REFERENCE_MODEL / "controlnet"


@pytest.fixture(scope="module")
def backend():
    from pocketsd.pipeline.torch_backend import open_backend

    return open_backend(None)


def test_shipped_controlnet_is_safetensors_and_fits_the_unet(backend):
    from pocketsd.pipeline.controlnet import check_controlnet_folder, load_controlnet

    assert (CONTROLNET / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(CONTROLNET.glob("*.bin"))  # no pickle in the package
    unet_config = dict(backend.components.config("unet"))
    config = check_controlnet_folder(CONTROLNET, unet_config)
    assert config["conditioning_channels"] == 3
    cn = load_controlnet(CONTROLNET, unet_config)
    # Trained: the zero convolutions that a fresh ControlNet starts with are not zero any more.
    assert cn.controlnet_mid_block.weight.abs().max() > 0
    assert all(block.weight.abs().max() > 0 for block in cn.controlnet_down_blocks)


def _outline(path, box, shape="square"):
    img = Image.new("L", (200, 200), 250)
    d = ImageDraw.Draw(img)
    if shape == "circle":
        d.ellipse(box, outline=10, width=3)
    else:
        d.rectangle(box, outline=10, width=3)
    img.save(path)
    return path


def _object_centre(image):
    from pocketsd.eval.classify import object_mask

    px = np.asarray(image, dtype=np.float32)
    mask = object_mask(px, np.median(px[:4].reshape(-1, 3), axis=0))
    return np.array(ndimage.center_of_mass(mask)) if mask.any() else np.array([np.nan, np.nan])


def test_object_follows_the_outline(tmp_path, backend):
    """Same prompt and seed, outline top-left or bottom-right: the object goes where the outline is."""
    from pocketsd.pipeline.controlnet import controlnet_hook
    from pocketsd.pipeline.generate import GenerationRequest, generate
    from pocketsd.pipeline.inputs import load_sketch

    prompt = "a red circle on a white background"
    boxes = {"top-left": (15, 15, 95, 95), "bottom-right": (105, 105, 185, 185)}
    for seed in (0, 1):
        centres = {}
        for name, box in boxes.items():
            sk = load_sketch(_outline(tmp_path / f"{name}.png", box, "circle"), 128, 128, prompt, warn=None)
            hook = controlnet_hook(CONTROLNET, sk.control, backend)
            image = generate(backend, GenerationRequest(prompt=prompt, steps=8, seed=seed, unet_extra=hook)).images[0]
            centres[name] = _object_centre(image)
            target = np.array(ndimage.center_of_mass(sk.region))
            assert np.hypot(*(centres[name] - target)) < 16, (seed, name, centres[name], target)
        assert np.all(centres["bottom-right"] - centres["top-left"] > 30)


def test_cli_generates_with_the_shipped_controlnet(tmp_path):
    from pocketsd.cli import main

    sketch = _outline(tmp_path / "outline.png", (20, 60, 110, 150))
    out = tmp_path / "out.png"
    assert main(["generate", "a red circle on a white background", "--sketch", str(sketch), "--controlnet",
                 str(CONTROLNET), "--steps", "2", "--out", str(out), "--quiet"]) == 0
    assert out.is_file()
    assert json.loads(out.with_suffix(".json").read_text())["input"]["controlnet"] == str(CONTROLNET)


# ---- the trainer ------------------------------------------------------------------------------
def _box(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _box_iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return ix * iy / (area(a) + area(b) - ix * iy)


def test_training_sketches_outline_the_drawn_object():
    """Each training condition's strokes frame the drawn object: the sketch is the edge of what was drawn."""
    from pocketsd.eval.classify import object_mask
    from pocketsd.refmodel.train_controlnet import make_controlnet_dataset

    scenes, images, masks = make_controlnet_dataset(12, seed=3)
    assert masks.shape == (12, 128, 128) and masks.dtype == np.uint8
    for scene, image, mask in zip(scenes, images, masks):
        px = (image.transpose(1, 2, 0) + 1) * 127.5
        drawn = object_mask(px, np.median(px[:4].reshape(-1, 3), axis=0))
        # the strokes are drawn like a hand would (wobble, thick markers), so their box may overshoot by a few
        # pixels on each side: a 128 px object's box still overlaps them well, and their centres agree
        drawn_box, stroke_box = _box(drawn), _box(mask > 0)
        assert _box_iou(drawn_box, stroke_box) > 0.65, scene
        centre = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])  # noqa: E731
        assert np.abs(centre(drawn_box) - centre(stroke_box)).max() <= 8, scene
        assert 0.02 < (mask > 0).mean() < 0.5  # strokes (or a filled scribble), not a blank or a flooded map


def test_training_is_deterministic_and_saves_atomically(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from pocketsd.pipeline.controlnet import check_controlnet_folder
    from pocketsd.refmodel import train_controlnet as tc

    pipe = StableDiffusionXLPipeline.from_pretrained(REFERENCE_MODEL, torch_dtype=torch.float32)
    data = tc.prepare(pipe, 6, seed=5)
    alphas = pipe.scheduler.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    held = tc.fixed_batch(tc.prepare(pipe, 2, seed=6), snr, seed=7)
    weights = []
    for _ in range(2):
        cn = tc.build_controlnet(pipe.unet, seed=1)
        curves = {"loss": [], "held_out": []}
        assert tc.train(pipe.unet, cn, data, held, snr, steps=2, batch=2, lr=1e-3, seed=1, deadline=None,
                        curves=curves, sampling="cubic") == 2
        weights.append(torch.cat([p.detach().flatten() for p in cn.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert weights[0].abs().sum() > 0
    tc.save_controlnet(cn, tmp_path / "controlnet")
    assert check_controlnet_folder(tmp_path / "controlnet", dict(pipe.unet.config))
    assert [p.name for p in tmp_path.iterdir()] == ["controlnet"]  # no temp folder left beside it


def test_sketch_drawer_is_seeded():
    from pocketsd.refmodel.train_controlnet import draw_sketch

    a = draw_sketch("triangle", 60, 70, 25, random.Random(4))
    b = draw_sketch("triangle", 60, 70, 25, random.Random(4))
    assert np.array_equal(np.asarray(a), np.asarray(b))
