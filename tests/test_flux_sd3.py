"""FLUX.1 (schnell, dev) and SD3 as model families, on random tiny pipelines built from diffusers' test configs
(tests/tiny_families.py): detection, the shared loop against diffusers' own pipelines, compress → generate, the
bit accounting read back from the written files, and the one-line refusals of what they do not support."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketsd.errors import BadInput
from pocketsd.models import family as F

sys.path.insert(0, str(Path(__file__).parent))
from tiny_families import BUILDERS  # noqa: E402

PYTHON = sys.executable
PROMPT = "a red circle on a white background"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{family name: folder} of the three tiny random pipelines, written once per module."""
    root = tmp_path_factory.mktemp("tiny-families")
    return {name: build(root / name) for name, build in BUILDERS.items()}


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "pocketsd", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


# ---- families -------------------------------------------------------------------------------------------
def test_each_tiny_folder_is_its_family(tiny):
    from pocketsd.artifacts.model_folder import family_of_folder

    assert family_of_folder(tiny["flux-schnell"]) is F.FLUX_SCHNELL
    assert family_of_folder(tiny["flux-dev"]) is F.FLUX_DEV
    assert family_of_folder(tiny["sd3"]) is F.SD3


def test_schnell_and_dev_differ_only_in_the_guidance_embedding():
    index = {"_class_name": "FluxPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "T5EncoderModel"]}
    assert F.family_of_index(index, denoiser_config={"guidance_embeds": True}) is F.FLUX_DEV
    assert F.family_of_index(index, denoiser_config={"guidance_embeds": False}) is F.FLUX_SCHNELL
    assert F.family_of_index(index) is F.FLUX_SCHNELL  # diffusers' default: no guidance embedding
    assert F.family_of_denoiser({"_class_name": "SD3Transformer2DModel"}) is F.SD3
    with pytest.raises(BadInput, match="FLUX.1 .schnell, dev. and Stable Diffusion 3"):
        F.family_of_index({"_class_name": "KandinskyPipeline"})


def test_flux_and_sd3_descriptors_say_what_diffusers_does():
    assert F.FLUX_SCHNELL.components == ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                         "transformer", "vae", "scheduler")
    assert F.SD3.components[:3] == ("text_encoder", "text_encoder_2", "text_encoder_3")
    assert F.FLUX_SCHNELL.default_steps == 4 and F.FLUX_DEV.default_steps == 28
    assert not F.FLUX_DEV.classifier_free_guidance and F.SD3.classifier_free_guidance
    assert F.FLUX_SCHNELL.latent_channels == F.SD3.latent_channels == 16
    assert not F.FLUX_SCHNELL.convertible and not F.SD3.convertible


# ---- the shared loop -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, steps, guidance", [("flux-schnell", 4, 0.0), ("flux-dev", 3, 3.5), ("sd3", 3, 7.0)])
def test_loop_matches_the_diffusers_pipeline(tiny, name, steps, guidance):
    """The shared loop (pipeline/generate.py) on the torch backend against diffusers' FluxPipeline /
    StableDiffusion3Pipeline: same weights, seed and settings → the same final latents."""
    from diffusers import DiffusionPipeline

    from pocketsd.pipeline.generate import GenerationRequest, generate, pack_latents
    from pocketsd.pipeline.torch_backend import open_backend

    backend = open_backend(str(tiny[name]))
    pipe = DiffusionPipeline.from_pretrained(tiny[name])
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                    generator=torch.Generator().manual_seed(3), output_type="latent",
                    max_sequence_length=backend.family.text_encoders[-1].max_length).images
    ours = generate(backend, GenerationRequest(PROMPT, steps=steps, guidance=guidance, seed=3, height=64, width=64),
                    decode=False).latents
    assert ours.shape[1] == 16  # unpacked: the 16-channel VAE's latents
    torch.testing.assert_close(pack_latents(ours, backend.family.latent_patch), expected, rtol=1e-4, atol=1e-5)


def test_pack_and_unpack_are_inverse():
    from pocketsd.pipeline.generate import pack_latents, unpack_latents

    x = torch.randn(2, 16, 6, 4)
    packed = pack_latents(x, 2)
    assert packed.shape == (2, 6, 64)
    assert torch.equal(unpack_latents(packed, 2, 6, 4), x)


# ---- refusals --------------------------------------------------------------------------------------------
def _one_line_refusal(done: subprocess.CompletedProcess, words: str) -> None:
    """Exit code 2, no traceback, and the refusal is the last line on stderr (libraries may warn before it)."""
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in done.stderr and lines, done.stderr[-2000:]
    assert words in lines[-1], lines[-1]


@pytest.mark.parametrize("flag, words", [("--sketch", "--sketch is not supported for FLUX.1 [schnell]"),
                                         ("--image", "--image is not supported for FLUX.1 [schnell]")])
def test_sketch_and_image_inputs_are_refused_in_one_line(tiny, tmp_path, flag, words):
    from PIL import Image

    picture = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "white").save(picture)
    _one_line_refusal(cli("generate", PROMPT, "--model", tiny["flux-schnell"], flag, picture,
                          "--out", tmp_path / "x.png"), words)


def test_other_schedulers_and_sizes_are_refused(tiny, tmp_path):
    _one_line_refusal(cli("generate", PROMPT, "--model", tiny["sd3"], "--scheduler", "ddim", "--out",
                          tmp_path / "x.png"), "Stable Diffusion 3 samples by flow matching")
    # 8 px (the VAE) × 2 (SD3's patch): 72 is not a multiple of 16
    _one_line_refusal(cli("generate", PROMPT, "--model", tiny["sd3"], "--size", "72x72", "--out",
                          tmp_path / "x.png"), "must be a multiple of 16")


def test_convert_and_whole_distillation_are_refused(tiny, tmp_path):
    _one_line_refusal(cli("convert", "--model", tiny["flux-dev"], "--out", tmp_path / "bundle"),
                      "Core ML conversion of its transformer is not supported yet")
    _one_line_refusal(cli("compress", "--model", tiny["sd3"], "--out", tmp_path / "c", "--distill", "whole"),
                      "--distill whole replays a UNet pipeline")
