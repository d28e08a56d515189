"""Model resolution and loading (pocketsd/models/): families, hub cache, single-file and pickle gating,
compressed folders, `describe` (pocketsd/info.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pocketsd.errors import BadInput
from pocketsd.artifacts.model_folder import detect_family, safetensors_stats
from pocketsd.info import describe
from pocketsd.models import ModelComponents, load_pipeline, resolve_model


@pytest.fixture(scope="session")
def model_dir(request) -> Path:
    override = os.environ.get("POCKETSD_TEST_MODEL")
    return Path(override) if override else request.getfixturevalue("ref_model_path")


def _copy_configs(src: Path, dst: Path) -> Path:
    """A copy of a pipeline folder whose weight files are symlinks (cheap, same bytes)."""
    for f in src.rglob("*"):
        if f.is_file():
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix == ".safetensors":
                target.symlink_to(f)
            else:
                shutil.copy(f, target)
    return dst


def test_reference_loads_as_fp32_sdxl_pipeline(model_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = load_pipeline(str(model_dir))
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    assert detect_family(model_dir) == "sdxl"
    n, nbytes, dtype = safetensors_stats(model_dir / "unet")
    assert n == sum(p.numel() for p in pipe.unet.parameters())
    assert dtype == "f16" and nbytes == 2 * n


def test_unsupported_family_lists_supported(tmp_path, model_dir):
    folder = _copy_configs(model_dir, tmp_path / "kandinsky")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "KandinskyV22Pipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(BadInput, match="KandinskyV22Pipeline is not supported.*Stable Diffusion XL.*1.x/2.x"):
        ModelComponents(resolve_model(str(folder)))


def test_hub_id_not_in_cache_says_what_to_download():
    with pytest.raises(BadInput, match=r"huggingface-cli download pocketsd-test/not-cached"):
        ModelComponents(resolve_model("pocketsd-test/not-cached"))


def test_hub_id_resolves_through_the_cache(tmp_path, model_dir, monkeypatch):
    import huggingface_hub.constants as hc

    repo = tmp_path / "hub" / "models--pocketsd-test--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / ("0" * 40)).symlink_to(model_dir, target_is_directory=True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    comps = ModelComponents(resolve_model("pocketsd-test/tiny"))
    assert comps.family == "sdxl" and comps.config("unet")["addition_embed_type"] == "text_time"
    assert "UNet2DConditionModel" in describe("pocketsd-test/tiny")


def test_single_file_without_cached_config_says_what_to_download(tmp_path):
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES
    from safetensors.torch import save_file

    ckpt = tmp_path / "model.safetensors"
    save_file({CHECKPOINT_KEY_NAMES["xl_base"]: torch.zeros(2)}, str(ckpt))
    with pytest.raises(BadInput, match=r"huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0"):
        ModelComponents(resolve_model(str(ckpt)))


def test_single_file_of_unknown_type_is_refused(tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "other.safetensors"
    save_file({"some.weight": torch.zeros(2)}, str(ckpt))
    with pytest.raises(BadInput, match="not supported"):
        ModelComponents(resolve_model(str(ckpt)))


def test_pickle_needs_allow_pickle(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"some.weight": torch.zeros(2)}}, ckpt)
    with pytest.raises(BadInput, match="--allow-pickle"):
        ModelComponents(resolve_model(str(ckpt)))
    # allowed: it is read (weights only) and then judged on its keys
    with pytest.raises(BadInput, match="not supported"):
        ModelComponents(resolve_model(str(ckpt)), allow_pickle=True)


def test_compressed_folder_takes_its_unet_from_palettize(tmp_path, model_dir, monkeypatch):
    import pocketsd.models.components as components
    from diffusers import UNet2DConditionModel

    folder = _copy_configs(model_dir, tmp_path / "compressed")
    (folder / "pocketsd.json").write_text(json.dumps({
        "kind": "compressed", "format_version": 2,
        "components": {"unet": {"weights": "unet/pocketsd_unet.safetensors", "config": "unet/config.json"}}}))
    calls = []

    def fake_load(compressed, name, mode="dense", dtype=torch.float32, **kw):
        calls.append((Path(compressed.folder), mode, dtype))
        return UNet2DConditionModel.from_pretrained(model_dir / "unet", torch_dtype=dtype)

    monkeypatch.setattr(components, "load_compressed_component", fake_load)
    comps = ModelComponents(resolve_model(str(folder)), unet_mode="packed")
    assert comps.source.kind == "compressed"
    comps.get("unet")
    assert calls == [(folder, "packed", torch.float32)]
    with pytest.raises(BadInput, match="unet-mode"):
        ModelComponents(resolve_model(str(folder)), unet_mode="sparse")


def test_sd1_family_runs_and_matches_diffusers(tmp_path, model_dir):
    """SD 1.x/2.x layout: one text encoder (last hidden state), no text_time conditioning."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from pocketsd.pipeline.generate import GenerationRequest, generate
    from pocketsd.pipeline.torch_backend import open_backend

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                attention_head_dim=2)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(model_dir / "vae"), unet=unet,
        text_encoder=CLIPTextModel.from_pretrained(model_dir / "text_encoder", dtype=torch.float32),
        tokenizer=CLIPTokenizer.from_pretrained(model_dir / "tokenizer"),
        scheduler=EulerDiscreteScheduler.from_pretrained(model_dir / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "sd1")
    assert detect_family(tmp_path / "sd1") == "sd"
    backend = open_backend(str(tmp_path / "sd1"))
    assert len(backend.tokenizers) == 1 and backend.default_size == (128, 128)
    ref = StableDiffusionPipeline.from_pretrained(tmp_path / "sd1", torch_dtype=torch.float32)(
        "a red circle", num_inference_steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(1),
        output_type="latent").images
    ours = generate(backend, GenerationRequest("a red circle", steps=3, guidance=5.0, seed=1), decode=False).latents
    assert (ours - ref).abs().max().item() < 1e-4
    assert "Stable Diffusion 1.x/2.x" in describe(tmp_path / "sd1")


def test_describe_lists_components_with_sizes(model_dir):
    text = describe(model_dir)
    assert "Stable Diffusion XL" in text
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "scheduler"):
        assert f"  {comp} " in text
    n, _, _ = safetensors_stats(model_dir / "unet")
    assert f"{n:,}" in text and "native size 128x128" in text
