"""Random tiny FLUX.1 (schnell, dev) and SD3 pipelines, from diffusers' own test configs, saved as safetensors.

The transformer and text-encoder configs are those of diffusers' `tests/pipelines/flux/test_pipeline_flux.py`
(`FluxPipelineTesterConfig.get_dummy_components`) and `tests/pipelines/stable_diffusion_3/
test_pipeline_stable_diffusion_3.py`, with the T5 of `hf-internal-testing/tiny-random-t5` written out (this machine
works offline). Two changes keep the real models' shapes where the loop depends on them: the VAE has the real
16 latent channels and the real 8× factor (diffusers' test VAE has 1 or 4 channels and no downsampling), so the
transformers take 16 × patch² input channels. The tokenizers are built here: CLIP's from the reference model's
vocabulary files, T5's a character-level unigram vocabulary (any text tokenizes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

# diffusers' test CLIP text encoder (both pipelines), with the reference tokenizer's special token ids
CLIP = dict(hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5,
            vocab_size=1000, hidden_act="gelu", projection_dim=32)
# hf-internal-testing/tiny-random-t5's config
T5 = dict(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=5, relative_attention_num_buckets=8,
          dropout_rate=0.0, feed_forward_proj="relu", is_encoder_decoder=False)
VAE = dict(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(4, 4, 4, 4),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           layers_per_block=1, latent_channels=16, norm_num_groups=1, use_quant_conv=False,
           use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=16 * 4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                        axes_dims_rope=[4, 4, 8])
SD3_TRANSFORMER = dict(sample_size=8, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8,
                       num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                       pooled_projection_dim=64, out_channels=16)


def clip_tokenizer():
    from transformers import CLIPTokenizer

    from pocketsd.data import REFERENCE_MODEL

    return CLIPTokenizer.from_pretrained(REFERENCE_MODEL / "tokenizer")


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.'-"]
    pieces += [("▁" + c, -2.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def clip_encoder(tokenizer, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, **CLIP)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def t5_encoder(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0, **T5))


def _heavy_tailed_(module: torch.nn.Module, seed: int) -> None:
    """Random init is near-Gaussian; real weights have outlier channels, which the smoothing and the low-rank branch
    exist for. Scale a few input channels of every Linear up so the compression has something to do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.Linear) and m.in_features >= 8:
                scale = torch.ones(m.in_features)
                scale[torch.randperm(m.in_features, generator=gen)[:2]] = 8.0
                m.weight.mul_(scale)


def build_flux(folder: Path, guidance_embeds: bool = False, seed: int = 0) -> Path:
    """FLUX.1 [schnell] (no guidance embedding) or [dev] (with it, and dev's dynamic shifting)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(guidance_embeds=guidance_embeds, **FLUX_TRANSFORMER)
    _heavy_tailed_(transformer, seed)
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = clip_encoder(tok, projection=False)
    torch.manual_seed(seed)
    text_encoder_2 = t5_encoder(tok2)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE)
    scheduler = FlowMatchEulerDiscreteScheduler(
        **({"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
            "base_image_seq_len": 256, "max_image_seq_len": 4096} if guidance_embeds else {}))
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tok,
                        text_encoder_2=text_encoder_2, tokenizer_2=tok2, transformer=transformer)
    return _save(pipe, folder)


def build_sd3(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**SD3_TRANSFORMER)
    _heavy_tailed_(transformer, seed)
    tok, tok3 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = clip_encoder(tok, projection=True)
    torch.manual_seed(seed + 1)
    text_encoder_2 = clip_encoder(tok, projection=True)
    torch.manual_seed(seed)
    text_encoder_3 = t5_encoder(tok3)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE)
    pipe = StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tok, text_encoder_2=text_encoder_2,
                                    tokenizer_2=clip_tokenizer(), text_encoder_3=text_encoder_3, tokenizer_3=tok3,
                                    transformer=transformer)
    return _save(pipe, folder)


def _save(pipe, folder: Path) -> Path:
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


BUILDERS = {"flux-schnell": lambda f: build_flux(f, guidance_embeds=False),
            "flux-dev": lambda f: build_flux(f, guidance_embeds=True),
            "sd3": build_sd3}
