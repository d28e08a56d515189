"""torch.export → ct.convert, one component at a time, with Apple's input/output names.

Names and shapes follow apple/ml-stable-diffusion's Swift package (TextEncoderXL.swift, Unet.swift,
Decoder.swift, Encoder.swift) so its `StableDiffusionXLPipeline(resourcesAt:)` can load the bundle (the names
are spelled once, in `pocketsd.artifacts.bundle`):
  TextEncoder / TextEncoder2: input_ids float32 (1, 77) → hidden_embeds (1, 77, C), pooled_outputs (1, P)
      (SD 1.x/2.x: last_hidden_state instead of hidden_embeds). SDXL reads the penultimate layer.
  Unet: sample (B, 4, h, w), timestep (B,), encoder_hidden_states (B, C, 1, 77)
      [+ SDXL: text_embeds (B, P), time_ids (B, 6)] → noise_pred (B, 4, h, w)
  VAEDecoder: z (1, 4, h, w) → image (1, 3, H, W) in [-1, 1]
  VAEEncoder: x (1, 3, H, W) in [-1, 1] → latent (1, 8, h, w) (mean and log-variance; Swift samples)
  controlnet/<Name>: the Unet's inputs + controlnet_cond (B, 3, H, W) in [0, 1] → additional_residual_{i},
      mid_block_res_sample; a Unet converted beside a ControlNet takes those as extra inputs
torch.jit.trace is not used: with numpy 2.3 it trips coremltools; torch.export works.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..artifacts import bundle as names
from ..artifacts.bundle import TensorSpec
from ..models.family import downscale, takes_time_ids
from . import DEFAULT_TARGET, TARGETS  # noqa: F401 (re-exported)

SEQ_LEN = 77


# ---- torch wrappers with Apple's signatures ------------------------------------------------------
class TextEncoderModule(nn.Module):
    """input_ids (float, as Swift sends them) → (hidden states, pooled)."""

    def __init__(self, encoder: nn.Module, penultimate: bool):
        super().__init__()
        self.encoder, self.penultimate = encoder, penultimate

    def forward(self, input_ids):
        out = self.encoder(input_ids.to(torch.int64), output_hidden_states=self.penultimate, return_dict=True)
        hidden = out.hidden_states[-2] if self.penultimate else out.last_hidden_state
        pooled = out.text_embeds if hasattr(out, "text_embeds") and out.text_embeds is not None else out.pooler_output
        return hidden, pooled


class VAEDecoderModule(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder

    def forward(self, z):
        z = self.post_quant_conv(z) if self.post_quant_conv is not None else z
        return self.decoder(z)


class VAEEncoderModule(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv

    def forward(self, x):
        h = self.encoder(x)
        return self.quant_conv(h) if self.quant_conv is not None else h


# ---- conversion --------------------------------------------------------------------------------
def _register_missing_torch_ops() -> None:
    """`aten.alias` (a no-op view torch.export leaves in transformers' CLIP graph) has no coremltools 9.0
    converter; it is the identity, registered here rather than rewriting the exported graph."""
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY, register_torch_op

    if "alias" in _TORCH_OPS_REGISTRY:
        return

    @register_torch_op
    def alias(context, node):
        context.add(context[node.inputs[0]], torch_name=node.name)


def ct_target(name: str):
    import coremltools as ct

    return getattr(ct.target, name)


def convert_module(module: nn.Module, inputs: list[TensorSpec], outputs: list[str], target: str,
                   precision: str = "float16", compressed=None, example: tuple | None = None):
    """torch.export `module` on fixed shapes and convert it to an ML program (returned, not saved).

    `compressed` (a mil_weights.CompressedWeights) places our codes as constexpr ops during conversion.
    """
    import coremltools as ct

    from .mil_weights import pass_pipeline

    _register_missing_torch_ops()
    module = module.eval()
    if example is None:
        example = tuple(_example(spec) for spec in inputs)
    with torch.no_grad():
        program = torch.export.export(module, example, strict=False).run_decompositions({})
    kwargs = dict(
        inputs=[ct.TensorType(name=s.name, shape=s.shape, dtype=np.float32) for s in inputs],
        outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs],
        convert_to="mlprogram",
        minimum_deployment_target=ct_target(target),
        compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
        skip_model_load=True,  # loading compiles with Core ML: macOS only, and not needed to save
    )
    if compressed is not None:
        with compressed.active():
            return ct.convert(program, pass_pipeline=pass_pipeline(), **kwargs)
    return ct.convert(program, **kwargs)


def _example(spec: TensorSpec) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if spec.name == names.INPUT_IDS:
        return torch.randint(0, 100, spec.shape, generator=g).float()
    if spec.name == names.TIMESTEP:
        return torch.full(spec.shape, 999.0)
    if spec.name == names.TIME_IDS:
        return torch.tensor([1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]).expand(spec.shape).clone()
    return torch.randn(spec.shape, generator=g)


def text_encoder_specs(encoder: nn.Module, xl: bool) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """`xl`: the encoder's output is the penultimate hidden state (the family's `penultimate_hidden`)."""
    cfg = encoder.config
    pooled = getattr(cfg, "projection_dim", None) if hasattr(encoder, "text_projection") else cfg.hidden_size
    seq = min(SEQ_LEN, cfg.max_position_embeddings)
    outs = [TensorSpec(names.text_hidden_name(penultimate=xl), (1, seq, cfg.hidden_size)),
            TensorSpec(names.POOLED, (1, pooled))]
    return [TensorSpec(names.INPUT_IDS, (1, seq))], outs


def unet_specs(config, latent_hw: tuple[int, int], batch: int, text_len: int, pooled_dim: int | None,
               residuals: bool = False):
    """The Unet's inputs and output; `residuals`: also the ControlNet residual inputs (`residual_specs`)."""
    ins = _denoiser_inputs(config, latent_hw, batch, text_len, pooled_dim)
    if residuals:
        ins += residual_specs(config, latent_hw, batch)
    return ins, [TensorSpec(names.NOISE_PRED, (batch, config.out_channels, *latent_hw))]


def _denoiser_inputs(config, latent_hw, batch, text_len, pooled_dim) -> list[TensorSpec]:
    """Apple's Unet inputs; a ControlNet takes the same ones (its config has the same fields)."""
    h, w = latent_hw
    ins = [TensorSpec(names.SAMPLE, (batch, config.in_channels, h, w)), TensorSpec(names.TIMESTEP, (batch,)),
           TensorSpec(names.ENCODER_HIDDEN_STATES, (batch, config.cross_attention_dim, 1, text_len))]
    if takes_time_ids(config):
        n_ids = (config.projection_class_embeddings_input_dim - pooled_dim) // config.addition_time_embed_dim
        ins += [TensorSpec(names.TEXT_EMBEDS, (batch, pooled_dim)), TensorSpec(names.TIME_IDS, (batch, n_ids))]
    return ins


def residual_specs(config, latent_hw: tuple[int, int], batch: int) -> list[TensorSpec]:
    """A ControlNet's residuals for this UNet: one per skip tensor the down blocks push (conv_in's output, each
    resnet/attention pair, each downsampler), then the mid block's output — diffusers' down_block_res_samples."""
    h, w = latent_hw
    widths = list(config.block_out_channels)
    layers = config.layers_per_block
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(widths)
    shapes = [(widths[0], h, w)]
    for i, width in enumerate(widths):
        shapes += [(width, h, w)] * layers[i]
        if i < len(widths) - 1:
            h, w = -(-h // 2), -(-w // 2)  # stride-2 conv, padding 1
            shapes.append((width, h, w))
    specs = [TensorSpec(names.down_residual(i), (batch, *shape)) for i, shape in enumerate(shapes)]
    return specs + [TensorSpec(names.MID_RESIDUAL, (batch, widths[-1], h, w))]


def controlnet_specs(config, latent_hw: tuple[int, int], image_hw: tuple[int, int], batch: int, text_len: int,
                     pooled_dim: int | None):
    """A ControlNet package's inputs (the Unet's plus controlnet_cond) and outputs (the residuals)."""
    ins = _denoiser_inputs(config, latent_hw, batch, text_len, pooled_dim)
    channels = int(getattr(config, "conditioning_channels", 3))
    ins.insert(3, TensorSpec(names.CONTROLNET_COND, (batch, channels, *image_hw)))
    return ins, residual_specs(config, latent_hw, batch)


def vae_specs(vae: nn.Module, image_hw: tuple[int, int]):
    cfg = vae.config
    factor = downscale(cfg)
    h, w = image_hw[0] // factor, image_hw[1] // factor
    dec = ([TensorSpec(names.DECODER_IN, (1, cfg.latent_channels, h, w))],
           [TensorSpec(names.DECODER_OUT, (1, cfg.out_channels, *image_hw))])
    enc = ([TensorSpec(names.ENCODER_IN, (1, cfg.in_channels, *image_hw))],
           [TensorSpec(names.ENCODER_OUT, (1, 2 * cfg.latent_channels, h, w))])
    return dec, enc
