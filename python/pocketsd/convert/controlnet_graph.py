"""A diffusers `ControlNetModel` as steps with Apple's ControlNet inputs, for conversion.

Apple's ControlNet packages (SD 1.x/2.x) take the UNet's inputs plus the conditioning image and give the residuals
the UNet adds; this is the same for SDXL, whose `text_embeds` / `time_ids` go in as for the UNet:

    sample (B, 4, h, w), timestep (B,), encoder_hidden_states (B, C_text, 1, 77), controlnet_cond (B, 3, H, W)
    [+ SDXL: text_embeds (B, P), time_ids (B, 6)]
    → additional_residual_0 … additional_residual_{n-1}, mid_block_res_sample

The forward is diffusers' `ControlNetModel.forward` at conditioning_scale 1 (the pipeline scales the residuals,
which are linear in it) re-expressed with `unet_graph`'s down/mid steps, so the transformer blocks get the same
Neural Engine rewrite as the UNet's and a compressed ControlNet's layers run in export mode.
"""

from __future__ import annotations

import torch
from torch import nn

from ..artifacts import bundle as names
from ..errors import BadInput
from ..models.family import takes_time_ids
from .ane import rewrite_for_ane
from .unet_graph import State, check_supported, context, down_mid_steps, embed, run_steps


class ControlNetSteps(nn.Module):
    """diffusers' ControlNetModel with Apple's layout; outputs in residual order (down 0…n-1, then mid)."""

    def __init__(self, controlnet: nn.Module, attention: str = "split-einsum"):
        super().__init__()
        cfg = controlnet.config
        check_supported(_UnetLike(cfg))
        if getattr(cfg, "global_pool_conditions", False):
            raise BadInput("ControlNets with global_pool_conditions (shuffle) give pooled residuals; not supported")
        self.attention = attention
        self.bgr = getattr(cfg, "controlnet_conditioning_channel_order", "rgb") == "bgr"
        self.time_conditioned = takes_time_ids(cfg)  # read by unet_graph.embed, as for the UNet
        self.time_proj, self.time_embedding = controlnet.time_proj, controlnet.time_embedding
        self.add_time_proj = getattr(controlnet, "add_time_proj", None) if self.time_conditioned else None
        self.add_embedding = getattr(controlnet, "add_embedding", None) if self.time_conditioned else None
        self.conv_in, self.cond_embedding = controlnet.conv_in, controlnet.controlnet_cond_embedding
        self.zero_convs = controlnet.controlnet_down_blocks
        self.mid_zero_conv = controlnet.controlnet_mid_block
        attn = (lambda m: rewrite_for_ane(m)) if attention == "split-einsum" else (lambda m: m)
        self.steps = down_mid_steps(controlnet.down_blocks, controlnet.mid_block, attn)
        self.step_modules = nn.ModuleList(s.module for s in self.steps if s.module is not None)
        n_skips = sum(1 for s in self.steps if s.kind == "push")
        if n_skips != len(self.zero_convs):
            raise BadInput(f"ControlNet has {len(self.zero_convs)} output convolutions for {n_skips} skip tensors")
        self.output_names = [names.down_residual(i) for i in range(n_skips)] + [names.MID_RESIDUAL]

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, text_embeds=None, time_ids=None):
        emb = embed(self, timestep, text_embeds, time_ids)
        if self.bgr:
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        h = self.conv_in(sample) + self.cond_embedding(controlnet_cond)
        state = run_steps(self.steps, self.attention, State(h, emb, context(self.attention, encoder_hidden_states)),
                          0, len(self.steps))
        down = [conv(skip) for conv, skip in zip(self.zero_convs, state.skips)]
        return (*down, self.mid_zero_conv(state.h))


class _UnetLike:
    """A ControlNet config seen through `check_supported` (which reads the UNet's block and embedding types)."""

    def __init__(self, cfg):
        self.down_block_types = cfg.down_block_types
        self.up_block_types = ()
        self.mid_block_type = getattr(cfg, "mid_block_type", "UNetMidBlock2DCrossAttn") or "UNetMidBlock2DCrossAttn"
        self.addition_embed_type = cfg.addition_embed_type
        self.class_embed_type = cfg.class_embed_type
        self.encoder_hid_dim_type = cfg.encoder_hid_dim_type
        self.time_cond_proj_dim = None
