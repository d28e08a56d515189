"""Inpainting (`--image FILE --mask FILE`): masks are read whatever their polarity, size or mode; the shared loop
repaints by latent blending with a plain UNet and through the extra channels of an inpainting UNet, both equal to
diffusers' StableDiffusionXLInpaintPipeline; pixels outside the mask stay as they were; bad masks get one line.
(The Core ML path is in test_coreml_backend.py; the procedural proof on the reference model is benchmarks/inpaint.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pocketsd.errors import BadInput
from pocketsd.pipeline.generate import GenerationRequest, generate, latent_mask, make_scheduler
from pocketsd.pipeline.inputs import image_to_tensor, load_mask

SIZE = 128
PROMPT = "a blue square on a white background, on the right"


def quiet(_msg):
    pass


def as_unit_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: what both pipelines are fed in the parity tests (diffusers' PIL path rounds
    differently from ours by 1e-7, which the VAE turns into 3e-4 on the latents)."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def red_circle_image() -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (245, 245, 245))
    ImageDraw.Draw(img).ellipse((8, 40, 56, 88), fill=(220, 40, 40))
    return img


def right_half_mask(path: Path, size=(SIZE, SIZE), value=255, left=None) -> Path:
    w, h = size
    arr = np.zeros((h, w), np.uint8)
    arr[:, (w // 2 if left is None else left):] = value
    Image.fromarray(arr).save(path)
    return path


# ---- masks ------------------------------------------------------------------------------------------
def test_mask_white_is_repainted_and_feather_reaches_blur_pixels(tmp_path):
    m = load_mask(right_half_mask(tmp_path / "m.png"), SIZE, SIZE, blur=4, warn=quiet)
    assert m.hole[:, 64:].all() and not m.hole[:, :64].any()
    assert (m.alpha[:, 64:] == 1).all()  # the hole itself is fully repainted
    assert (m.alpha[:, :59] == 0).all()  # more than blur px away: exactly the original
    assert 0 < m.alpha[0, 62] < 1  # the feather in between
    hard = load_mask(tmp_path / "m.png", SIZE, SIZE, blur=0, warn=quiet)
    assert np.array_equal(hard.alpha, hard.hole.astype(np.float32))


def test_mask_from_transparency_both_conventions(tmp_path):
    # A photo with a hole erased (OpenAI's edit API): transparent = repaint.
    photo = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 4), dtype=np.uint8)
    photo[..., 3] = 255
    photo[:, 64:, 3] = 0
    Image.fromarray(photo, "RGBA").save(tmp_path / "erased.png")
    notes = []
    m = load_mask(tmp_path / "erased.png", SIZE, SIZE, warn=notes.append)
    assert m.hole[:, 64:].all() and not m.hole[:, :64].any()
    assert any("transparent pixels" in n for n in notes)
    # White strokes on a transparent layer: the strokes are the hole.
    layer = np.zeros((SIZE, SIZE, 4), np.uint8)
    layer[:, 64:] = (255, 255, 255, 255)
    Image.fromarray(layer, "RGBA").save(tmp_path / "strokes.png")
    notes = []
    m = load_mask(tmp_path / "strokes.png", SIZE, SIZE, warn=notes.append)
    assert m.hole[:, 64:].all() and not m.hole[:, :64].any()
    assert any("strokes on a transparent layer" in n for n in notes)


def test_mask_sixteen_bit_and_resized_with_the_image(tmp_path):
    arr = np.zeros((400, 400), np.uint16)
    arr[:, 200:] = 65535
    Image.fromarray(arr).save(tmp_path / "m16.png")
    notes = []
    m = load_mask(tmp_path / "m16.png", SIZE, SIZE, image_size=(400, 400), warn=notes.append)
    assert m.hole[:, 64:].all() and not m.hole[:, :64].any()
    # Another size of the same aspect as the image: resized silently, like the image.
    assert not any("mask" in n for n in notes)


def test_mask_of_another_aspect_is_cropped_with_a_warning(tmp_path):
    notes = []
    m = load_mask(right_half_mask(tmp_path / "wide.png", (240, 160)), SIZE, SIZE, image_size=(200, 200),
                  warn=notes.append)
    assert any("another aspect" in n for n in notes)
    assert m.hole.any() and not m.hole.all()


@pytest.mark.parametrize("case,match", [
    ("empty", "nothing to repaint"),
    ("full", "text → image"),
    ("photo", "not black and white"),
    ("aspect", "too different to line up"),
    ("text", "not an image"),
])
def test_bad_masks_are_one_line(tmp_path, case, match):
    path = tmp_path / "m.png"
    image_size = None
    if case == "empty":
        right_half_mask(path, value=0)
    elif case == "full":
        right_half_mask(path, left=0)
    elif case == "photo":
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)).save(path)
    elif case == "aspect":
        right_half_mask(path, (400, 100))
        image_size = (200, 200)
    else:
        path.write_text("not a PNG")
    with pytest.raises(BadInput, match=match) as err:
        load_mask(path, SIZE, SIZE, image_size=image_size, warn=quiet)
    assert "\n" not in str(err.value)


def test_latent_mask_covers_the_feather():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 9:] = 0.2  # a feathered edge starting inside latent cell 1
    lm = latent_mask(mask, 8)
    assert lm.shape == (1, 1, 2, 2) and lm[..., 1].eq(1).all() and lm[..., 0].eq(0).all()


# ---- the loop against diffusers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def backend(ref_model_path):
    from pocketsd.pipeline.torch_backend import open_backend

    return open_backend(str(ref_model_path))


@pytest.fixture(scope="module")
def inpaint_pipe(ref_pipeline):
    from diffusers import StableDiffusionXLInpaintPipeline

    return StableDiffusionXLInpaintPipeline(**ref_pipeline.components, force_zeros_for_empty_prompt=True)


def _diffusers_inpaint(pipe, image, mask_image, strength, steps=4, seed=3, scheduler="euler"):
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    return pipe(PROMPT, image=image, mask_image=mask_image, strength=strength, num_inference_steps=steps,
                guidance_scale=5.0, generator=torch.Generator().manual_seed(seed), output_type="latent").images


@pytest.mark.parametrize("strength,scheduler", [(1.0, "euler"), (0.6, "euler"), (0.75, "dpmpp2m")])
def test_plain_unet_blending_matches_diffusers_inpaint(tmp_path, backend, inpaint_pipe, strength, scheduler):
    img = red_circle_image()
    # A mask on the 8-px grid with no feather: our max-pooled latent mask equals diffusers' nearest resize.
    path = right_half_mask(tmp_path / "m.png", left=72)
    mask = load_mask(path, SIZE, SIZE, blur=0, warn=quiet)
    ref = _diffusers_inpaint(inpaint_pipe, as_unit_tensor(img), Image.open(path), strength, scheduler=scheduler)
    ours = generate(backend, GenerationRequest(PROMPT, steps=4, guidance=5.0, seed=3, scheduler=scheduler,
                                               init_image=as_unit_tensor(img) * 2 - 1, mask=mask.tensor(),
                                               strength=strength), decode=False)
    assert (ours.latents - ref).abs().max().item() < 1e-4


def test_pixels_outside_the_mask_are_kept(tmp_path, backend):
    img = red_circle_image()
    mask = load_mask(right_half_mask(tmp_path / "m.png"), SIZE, SIZE, blur=4, warn=quiet)
    kw = dict(prompt=PROMPT, steps=4, guidance=5.0, seed=1, init_image=image_to_tensor(img), mask=mask.tensor())
    pasted = generate(backend, GenerationRequest(**kw))
    original = np.asarray(img, dtype=np.int16)
    out = np.asarray(pasted.images[0], dtype=np.int16)
    assert np.abs(out - original)[mask.alpha == 0].max() == 0  # outside the feather: the original, exactly
    assert np.abs(out - original)[:, 64:].mean() > 1  # and the hole was repainted
    # Without the paste-back the latents outside the latent mask are the original's own (the blend's last step puts
    # them back un-noised), so decoding reproduces the original up to the VAE round trip.
    raw = generate(backend, GenerationRequest(**kw, paste_back=False))
    lm = latent_mask(mask.tensor(), 8)
    from pocketsd.pipeline.generate import _encode_init_image, _Stages
    from pocketsd.pipeline.report import RunTimer

    gen = torch.Generator().manual_seed(1)
    init_latents = _encode_init_image(backend, _Stages(backend, RunTimer(), False), kw["init_image"], gen)
    assert torch.equal(raw.latents * (1 - lm), init_latents * (1 - lm))
    decoded = np.asarray(raw.images[0], dtype=np.int16)
    far = np.zeros((SIZE, SIZE), bool)
    far[:, :48] = True  # 16 px (two latent cells) from the hole
    # The original's own VAE round trip (its latents decoded alone) bounds what the decoder may change there; the
    # repainted hole reaches in only through the decoder's image-wide GroupNorm statistics: a few levels of 255.
    from pocketsd.pipeline.generate import _unscale

    alone = backend.vae_decode(_unscale(backend, init_latents))[0]
    alone = ((alone.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.int16)
    round_trip = np.abs(alone - original)[far].mean()
    assert round_trip < 8  # the VAE alone keeps this picture within a few levels
    assert np.abs(decoded - original)[far].mean() < round_trip + 3


@pytest.fixture(scope="module")
def inpainting_model(ref_model_path, tmp_path_factory) -> Path:
    """The reference model with a 9-channel inpainting UNet (random conv_in for the extra channels)."""
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp("inpaint") / "model"
    shutil.copytree(ref_model_path, folder, ignore=shutil.ignore_patterns("controlnet"))
    unet = UNet2DConditionModel.from_pretrained(ref_model_path / "unet")
    config = dict(unet.config)
    config["in_channels"] = 9
    nine = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    g = torch.Generator().manual_seed(0)
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, 0.05 * torch.randn(w.shape[0], 5, *w.shape[2:], generator=g)], dim=1)
    nine.load_state_dict(state)
    shutil.rmtree(folder / "unet")
    nine.save_pretrained(folder / "unet", safe_serialization=True)
    return folder


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpainting_unet_channels_match_diffusers(tmp_path, inpainting_model, strength):
    from diffusers import StableDiffusionXLInpaintPipeline

    from pocketsd.pipeline.torch_backend import open_backend

    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(inpainting_model, torch_dtype=torch.float32)
    img = red_circle_image()
    path = right_half_mask(tmp_path / "m.png", left=72)
    ref = _diffusers_inpaint(pipe, as_unit_tensor(img), Image.open(path), strength)
    backend = open_backend(str(inpainting_model))
    assert backend.unet_in_channels == 9 and backend.latent_channels == 4
    mask = load_mask(path, SIZE, SIZE, blur=0, warn=quiet)
    ours = generate(backend, GenerationRequest(PROMPT, steps=4, guidance=5.0, seed=3,
                                               init_image=as_unit_tensor(img) * 2 - 1, mask=mask.tensor(),
                                               strength=strength), decode=False)
    assert (ours.latents - ref).abs().max().item() < 1e-4
    with pytest.raises(BadInput, match="inpainting UNet"):
        generate(backend, GenerationRequest(PROMPT, steps=1))


# ---- the command ----------------------------------------------------------------------------------------
def test_cli_inpaints_and_reports(tmp_path, capsys):
    from pocketsd.cli import main

    red_circle_image().save(tmp_path / "in.png")
    right_half_mask(tmp_path / "m.png")
    out = tmp_path / "out.png"
    assert main(["generate", PROMPT, "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "m.png"),
                 "--steps", "2", "--mask-blur", "2", "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["input"]["mask"] == str(tmp_path / "m.png") and report["input"]["mask_blur"] == 2
    assert report["input"]["paste_back"] is True and report["input"]["strength"] == 1.0
    kept = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)[:, :60]
    assert np.array_equal(kept, np.asarray(red_circle_image(), dtype=np.int16)[:, :60])


def _bad(argv, tmp_path, capsys, monkeypatch, match):
    from pocketsd.cli import main

    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    rc = main(["generate", PROMPT, *argv, "--steps", "1", "--out", str(tmp_path / "o.png"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    return err


@pytest.mark.parametrize("case,match", [
    ("no-image", "--mask needs the image it repaints"),
    ("empty", "nothing to repaint"),
    ("full", "that is text → image"),
    ("shape", "too different to line up"),
    ("blur", "--mask-blur must be"),
    ("blur-alone", "only apply with --mask"),
])
def test_cli_bad_masks_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch, case, match):
    inputs = tmp_path / "in"
    inputs.mkdir()
    red_circle_image().save(inputs / "img.png")
    mask = inputs / "m.png"
    {"empty": lambda: right_half_mask(mask, value=0), "full": lambda: right_half_mask(mask, left=0),
     "shape": lambda: right_half_mask(mask, (512, 64))}.get(case, lambda: right_half_mask(mask))()
    argv = {"no-image": ["--mask", str(mask)],
            "blur": ["--image", str(inputs / "img.png"), "--mask", str(mask), "--mask-blur", "100"],
            "blur-alone": ["--mask-blur", "2"]}.get(case, ["--image", str(inputs / "img.png"), "--mask", str(mask)])
    _bad(argv, tmp_path, capsys, monkeypatch, match)
