"""The shared denoising loop (pipeline/generate.py) on the torch backend: parity with diffusers, hooks, low memory,
report and PNG outputs. Few steps, 128-px reference model; one backend and one diffusers pipeline per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketsd.pipeline.generate import GenerationRequest, encode_prompts, generate, make_scheduler
from pocketsd.pipeline.report import PeakMemory, RunTimer, read_png_metadata
from pocketsd.pipeline.torch_backend import open_backend

PROMPT = "a red circle on a white background"


@pytest.fixture(scope="session")
def model_dir(request) -> Path:
    # POCKETSD_TEST_MODEL lets a developer point the tests at another pipeline of the same architecture.
    override = os.environ.get("POCKETSD_TEST_MODEL")
    return Path(override) if override else request.getfixturevalue("ref_model_path")


@pytest.fixture(scope="session")
def backend(model_dir):
    return open_backend(str(model_dir))


@pytest.fixture(scope="session")
def diffusers_pipe(model_dir):
    from pocketsd.models import load_pipeline

    return load_pipeline(str(model_dir))


def _diffusers_latents(pipe, scheduler, seed, steps, negative=None, **kw):
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    g = torch.Generator().manual_seed(seed)
    return pipe(PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=5.0, generator=g,
                output_type="latent", **kw).images


@pytest.mark.parametrize("scheduler,negative", [("euler", None), ("dpmpp2m", "a blue square"), ("ddim", None)])
def test_latents_match_diffusers(backend, diffusers_pipe, scheduler, negative):
    ref = _diffusers_latents(diffusers_pipe, scheduler, seed=3, steps=4, negative=negative)
    ours = generate(backend, GenerationRequest(PROMPT, negative_prompt=negative, steps=4, guidance=5.0, seed=3,
                                               scheduler=scheduler), decode=False).latents
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4


def test_img2img_matches_diffusers_img2img(backend, diffusers_pipe):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    i2i = StableDiffusionXLImg2ImgPipeline(**diffusers_pipe.components, force_zeros_for_empty_prompt=True)
    i2i.scheduler = make_scheduler("euler", diffusers_pipe.scheduler.config)
    img = torch.full((1, 3, 128, 128), 0.9)
    img[:, :, 32:96, 32:96] = torch.tensor([0.15, 0.3, 0.85]).view(1, 3, 1, 1)  # a blue square on near-white
    ref = i2i(PROMPT, image=img, strength=0.6, num_inference_steps=5, guidance_scale=5.0,
              generator=torch.Generator().manual_seed(2), output_type="latent").images
    res = generate(backend, GenerationRequest(PROMPT, steps=5, guidance=5.0, seed=2, init_image=img * 2 - 1,
                                              strength=0.6), decode=False)
    assert len(res.timesteps) == 3  # int(5 * 0.6) steps from the matching timestep, as diffusers
    assert (res.latents - ref).abs().max().item() < 1e-4


def test_hooks_time_every_stage(backend):
    seen = []
    timer = RunTimer()
    res = generate(backend, GenerationRequest(PROMPT, steps=3, seed=0), timer=timer,
                   on_step=lambda i, n, s: seen.append((i, n, s)))
    assert [(i, n) for i, n, _ in seen] == [(0, 3), (1, 3), (2, 3)]
    t = timer.as_dict()
    assert len(t["unet_steps"]) == 3 and all(s > 0 for s in t["unet_steps"])
    assert t["text_encode"] > 0 and t["vae_decode"] > 0 and t["total"] >= sum(t["unet_steps"])
    assert res.images[0].size == (128, 128)


def test_force_zeros_for_empty_negative(backend):
    assert backend.force_zeros_for_empty_prompt  # the reference model is trained with zeroed caption dropout
    embeds, pooled = encode_prompts(backend, GenerationRequest(PROMPT), True, lambda m: None)
    assert embeds.shape[0] == 2 and torch.count_nonzero(embeds[0]) == 0 and torch.count_nonzero(pooled[0]) == 0
    # an explicit "" is encoded like any text (diffusers: zeros only when no negative prompt is given)
    embeds, pooled = encode_prompts(backend, GenerationRequest(PROMPT, negative_prompt=""), True, lambda m: None)
    assert torch.count_nonzero(embeds[0]) > 0 and torch.count_nonzero(pooled[0]) > 0


def test_long_prompt_warns_with_dropped_words(backend):
    prompt = " ".join(["red"] * 74 + ["blue", "square", "triangle"])
    warnings = []
    res = generate(backend, GenerationRequest(prompt, steps=1), warn=warnings.append, decode=False)
    assert len(warnings) == 1 and res.warnings == warnings
    dropped = warnings[0].split("dropped:")[1]
    assert "square triangle" in dropped and "blue" not in dropped


def test_low_memory_frees_components_keeps_results_and_reapplies_unet_transforms(model_dir, backend):
    calls = []
    lean = open_backend(str(model_dir), unet_transforms=[lambda unet: calls.append(type(unet).__name__)])
    req = GenerationRequest(PROMPT, steps=2, seed=5)
    a = generate(lean, req, low_memory=True)
    assert not set(lean.components._loaded) & {"unet", "vae", "text_encoder", "text_encoder_2"}
    b = generate(backend, req)
    assert torch.equal(a.latents, b.latents)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    generate(lean, GenerationRequest(PROMPT, steps=1), low_memory=True, decode=False)  # reloads: LoRAs again
    assert calls == ["UNet2DConditionModel", "UNet2DConditionModel"]


def test_zero_initialised_controlnet_changes_nothing(tmp_path, backend):
    from diffusers import ControlNetModel
    from PIL import Image

    from pocketsd.pipeline.controlnet import controlnet_hook

    ControlNetModel.from_unet(backend.module("unet"), conditioning_embedding_out_channels=(8, 16, 32, 64)).save_pretrained(
        tmp_path / "cn")
    hook = controlnet_hook(tmp_path / "cn", Image.new("RGB", (128, 128)), backend)
    req = GenerationRequest(PROMPT, steps=2, seed=4)
    plain = generate(backend, req, decode=False).latents
    req.unet_extra = hook
    controlled = generate(backend, req, decode=False).latents
    assert (plain - controlled).abs().max().item() < 1e-5  # ControlNet's zero convolutions add nothing yet


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resettable high-water mark is Linux-only")
def test_peak_memory_is_a_high_water_mark():
    import gc

    # it failed once in the full suite and passed alone; the likely cause (not proven) is earlier tests' garbage
    # being collected between the reset and the allocation, lowering the resident set by more than the slack:
    # collect first and keep the collector still while measuring
    gc.collect()
    gc.disable()
    try:
        import psutil

        mem = PeakMemory()
        # The resident set right before the allocation, not the mark at the reset: memory freed between the two
        # lowers the resident set while the mark stays where the reset put it.
        before = psutil.Process().memory_info().rss
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
        del block
        peak = mem.read()["peak_rss_mb"]
    finally:
        gc.enable()
    assert peak * 1024 * 1024 >= before + 60 * 1024 * 1024


def test_cli_writes_png_report_and_metadata(tmp_path, model_dir):
    from pocketsd.cli import main

    out = tmp_path / "img.png"
    rc = main(["generate", PROMPT, "--model", str(model_dir), "--steps", "2", "--seed", "7", "--out", str(out),
               "--count", "2", "--quiet"])
    assert rc == 0
    for seed in (7, 8):
        png, rep = tmp_path / f"img-{seed}.png", tmp_path / f"img-{seed}.json"
        report = json.loads(rep.read_text())
        for key in ("pocketsd_version", "prompt", "expanded_prompt", "negative_prompt", "seed", "steps", "guidance",
                    "scheduler", "size", "backend", "compute_units", "domain", "loras", "model", "timings_s",
                    "memory", "output"):
            assert key in report
        assert report["seed"] == seed and report["size"] == [128, 128] and report["backend"] == "torch"
        assert len(report["timings_s"]["unet_steps"]) == 2 and report["memory"]["peak_rss_mb"] > 0
        assert report["model"]["kind"] == "diffusers" and report["model"]["unet_bytes"] > 0
        meta = read_png_metadata(png)
        assert meta["prompt"] == PROMPT and meta["seed"] == str(seed) and meta["scheduler"] == "euler"
        assert meta["steps"] == "2" and meta["guidance"] == "5.0" and meta["model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img-7.json", "img-7.png", "img-8.json", "img-8.png"]


def test_cli_wires_domain_sketch_and_lora(tmp_path, model_dir, monkeypatch):
    """generate hands --domain to presets, --sketch to inputs and --lora to palettize.lora.apply_lora_files."""
    import pocketsd.palettize.lora as lora_mod
    from PIL import Image, ImageDraw

    from pocketsd.cli import main
    from pocketsd.pipeline.presets import get_preset

    calls = []

    def fake_apply(unet, specs, component="unet"):
        if component != "unet":  # the text encoders get their own call (this LoRA has no text-encoder part)
            return []
        calls.append(list(specs))
        return [{"path": str(p), "scale": s, "fake": True} for p, s in specs]

    monkeypatch.setattr(lora_mod, "apply_lora_files", fake_apply)
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"not read by the fake")
    sketch = tmp_path / "sketch.png"
    im = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(im).rectangle([20, 20, 76, 76], outline="black", width=2)
    im.save(sketch)
    rc = main(["generate", "a blue square", "--model", str(model_dir), "--domain", "poster", "--sketch", str(sketch),
               "--lora", f"{lora}:0.5", "--steps", "2", "--out", str(tmp_path / "o.png"), "--quiet"])
    assert rc == 0
    report = json.loads((tmp_path / "o.json").read_text())
    assert report["domain"] == "poster" and report["expanded_prompt"] == get_preset("poster").expand("a blue square")
    assert report["input"]["sketch"] == str(sketch) and 0 < report["input"]["strength"] < 1
    assert calls and calls[0][0] == (str(lora), 0.5) and report["loras"][0]["fake"]
    assert report["guidance"] == get_preset("poster").guidance and report["steps"] == 2  # explicit option wins
