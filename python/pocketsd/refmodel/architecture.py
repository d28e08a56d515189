"""The reference model's architecture: SDXL's own diffusers/transformers classes, scaled down."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.family import SDXL  # the reference model is an SDXL, scaled down

IMAGE_SIZE = 128
TEXT_HIDDEN = (64, 64)  # CLIP-L stand-in, CLIP-bigG stand-in
PROJECTION_DIM = 64
ADDITION_TIME_EMBED_DIM = 32


def text_encoder_config(vocab_size: int, bos: int, eos: int, hidden: int, projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=3,  # SDXL reads the penultimate layer: 3 gives two that matter
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=PROJECTION_DIM if projection else hidden,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def unet_config() -> dict:
    cross = sum(TEXT_HIDDEN)
    return dict(
        sample_size=IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=2,
        transformer_layers_per_block=(1, 1, 1),
        attention_head_dim=(2, 2, 4),  # diffusers' name for the number of heads: 32-wide heads
        norm_num_groups=16,
        cross_attention_dim=cross,
        use_linear_projection=True,
        addition_embed_type=SDXL.addition_embed_type,
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
        # SDXL: pooled text embedding + 6 micro-conditioning ids, each Fourier-embedded.
        projection_class_embeddings_input_dim=SDXL.time_ids * ADDITION_TIME_EMBED_DIM + PROJECTION_DIM,
    )


def vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 64),  # four levels: 8× downsampling like SDXL's VAE
        layers_per_block=1,
        latent_channels=4,
        # 4 channels per group in the 8-channel layers: with 8 groups there (instance norm) the
        # decoder's last norm wiped each image's mean colour and reds/blues came out green.
        norm_num_groups=2,
        sample_size=IMAGE_SIZE,
        scaling_factor=1.0,  # replaced by 1/std of the latents after training
    )


def scheduler_config() -> dict:
    # SDXL base's training schedule.
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )


def build_components(tokenizer_dir: Path, seed: int = 0) -> dict:
    """Randomly initialised components (deterministic in `seed`)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ids = dict(vocab_size=len(tok), bos=tok.bos_token_id, eos=tok.eos_token_id)
    torch.manual_seed(seed)
    return dict(
        tokenizer=tok,
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_dir),
        text_encoder=CLIPTextModel(text_encoder_config(hidden=TEXT_HIDDEN[0], projection=False, **ids)),
        text_encoder_2=CLIPTextModelWithProjection(text_encoder_config(hidden=TEXT_HIDDEN[1], projection=True, **ids)),
        unet=UNet2DConditionModel(**unet_config()),
        vae=AutoencoderKL(**vae_config()),
        scheduler=EulerDiscreteScheduler(**scheduler_config()),
    )


def assemble_pipeline(components: dict):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=True, add_watermarker=False)
