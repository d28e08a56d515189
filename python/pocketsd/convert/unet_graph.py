"""The UNet as a flat list of steps with Apple's inputs, so it can be converted whole or cut in two.

diffusers' `UNet2DConditionModel.forward` is re-expressed as: embed (timestep + SDXL's text_time
conditioning) → conv_in → one step per resnet / transformer / down- or upsampler (skip tensors pushed
and popped explicitly) → norm/act/conv_out. The steps reuse diffusers' own submodules (and, in
split-einsum mode, the ANE-rewritten transformers), so the arithmetic is diffusers'. Making the state
between steps explicit (h, emb, the skip stack) is what lets `--chunk-unet` cut at any step boundary
and name the tensors that cross the cut.

Inputs follow Apple's Swift `Unet`: sample (B, 4, h, w), timestep (B,), encoder_hidden_states
(B, C_text, 1, 77) — channels-first even in "original" mode, as Apple's Swift pipeline always sends it —
and for SDXL text_embeds (B, pooled) and time_ids (B, 6). Output: noise_pred.

With a ControlNet in the bundle the UNet also takes its residuals (`ControlledUnet`): additional_residual_{k} is
added to the k-th skip tensor as it is pushed, mid_block_res_sample to the mid block's output — where diffusers'
UNet adds `down_block_additional_residuals` (to the skips, which only the up blocks read) and
`mid_block_additional_residual`. The ControlNet itself is the same embed, down and mid steps plus its
conditioning embedding and zero convolutions (`controlnet_graph.ControlNetSteps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..artifacts import bundle as names
from ..errors import BadInput
from ..models.family import DENOISER_EMBED_TYPES, takes_time_ids
from .ane import rewrite_for_ane

SUPPORTED_DOWN = {"DownBlock2D", "CrossAttnDownBlock2D"}
SUPPORTED_UP = {"UpBlock2D", "CrossAttnUpBlock2D"}


@dataclass
class Step:
    kind: str  # resnet | attn | push | down | up | mid_end (after the mid block, where its residual is added)
    module: nn.Module | None = None
    pop_skip: bool = False  # resnet in an up block: concatenate the newest skip first
    bytes: int = 0


@dataclass
class State:
    h: torch.Tensor
    emb: torch.Tensor
    context: torch.Tensor
    skips: list[torch.Tensor] = field(default_factory=list)
    pushed: int = 0  # skip tensors pushed so far: the index of the next down residual
    residuals: dict[str, torch.Tensor] = field(default_factory=dict)  # ControlNet residuals by input name


def _module_bytes(module: nn.Module | None) -> int:
    """Bytes the module's weights take in the bundle (compressed layers at their stored size)."""
    if module is None:
        return 0
    from ..palettize.layer import CompressedLayer

    total, seen = 0, set()
    for sub in module.modules():
        if isinstance(sub, CompressedLayer):
            total += sub.stored_bytes()
            seen.update(id(b) for b in sub.buffers())
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += 2 * p.numel()
    return total


def check_supported(config) -> None:
    bad = [t for t in config.down_block_types if t not in SUPPORTED_DOWN] + [
        t for t in config.up_block_types if t not in SUPPORTED_UP]
    if config.mid_block_type not in ("UNetMidBlock2DCrossAttn",):
        bad.append(config.mid_block_type)
    if config.addition_embed_type not in DENOISER_EMBED_TYPES or config.class_embed_type is not None:
        bad.append(f"addition/class embedding {config.addition_embed_type or config.class_embed_type}")
    if config.encoder_hid_dim_type is not None or config.time_cond_proj_dim is not None:
        bad.append("encoder_hid_proj/time_cond_proj")
    if bad:
        raise BadInput(f"UNet blocks {sorted(set(map(str, bad)))} are not supported by `pocketsd convert` (SD 1.x/2.x/SDXL UNets are)")


class UnetSteps(nn.Module):
    """The UNet as embed + steps + head; `attention` is "split-einsum" or "original"."""

    def __init__(self, unet: nn.Module, attention: str = "split-einsum"):
        super().__init__()
        cfg = unet.config
        check_supported(cfg)
        self.attention = attention
        self.time_conditioned = takes_time_ids(cfg)  # pooled text + time_ids inputs (the family's conditioning)
        self.time_proj, self.time_embedding = unet.time_proj, unet.time_embedding
        self.add_time_proj = getattr(unet, "add_time_proj", None) if self.time_conditioned else None
        self.add_embedding = getattr(unet, "add_embedding", None) if self.time_conditioned else None
        self.conv_in = unet.conv_in
        self.conv_norm_out, self.conv_act, self.conv_out = unet.conv_norm_out, unet.conv_act, unet.conv_out
        self.n_upsamplers = sum(1 for b in unet.up_blocks if b.upsamplers)
        attn = (lambda m: rewrite_for_ane(m)) if attention == "split-einsum" else (lambda m: m)
        steps = down_mid_steps(unet.down_blocks, unet.mid_block, attn)
        for block in unet.up_blocks:
            attns = list(getattr(block, "attentions", None) or [None] * len(block.resnets))
            for resnet, a in zip(block.resnets, attns):
                steps.append(Step("resnet", resnet, pop_skip=True))
                if a is not None:
                    steps.append(Step("attn", attn(a)))
            for up in block.upsamplers or []:
                steps.append(Step("up", up))
        self.steps = steps
        self.step_modules = nn.ModuleList(s.module for s in steps if s.module is not None)  # registers weights
        for s in steps:
            s.bytes = _module_bytes(s.module)

    # -- pieces ------------------------------------------------------------------------------
    def embed(self, timestep, text_embeds=None, time_ids=None) -> torch.Tensor:
        return embed(self, timestep, text_embeds, time_ids)

    def context(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Apple's (B, C, 1, S) text layout → what the transformers take in this mode."""
        return context(self.attention, encoder_hidden_states)

    def run(self, state: State, start: int, end: int) -> State:
        return run_steps(self.steps, self.attention, state, start, end)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        state = State(self.conv_in(sample), self.embed(timestep, text_embeds, time_ids),
                      self.context(encoder_hidden_states))
        return self.head(self.run(state, 0, len(self.steps)).h)

    # -- chunking ----------------------------------------------------------------------------
    def weight_bytes(self) -> int:
        return _module_bytes(self)

    def balanced_cut(self) -> int:
        """Step index splitting the weights most evenly (chunk 1 also holds embed and conv_in)."""
        first = sum(_module_bytes(m) for m in (self.time_embedding, self.add_embedding, self.conv_in) if m is not None)
        rest = sum(s.bytes for s in self.steps) + _module_bytes(self.conv_norm_out) + _module_bytes(self.conv_out)
        total, acc, best, best_gap = first + rest, first, 1, None
        for i, step in enumerate(self.steps):
            acc += step.bytes
            gap = abs(2 * acc - total)
            if best_gap is None or gap < best_gap:
                best, best_gap = i + 1, gap
        return best

    def skips_at(self, cut: int) -> int:
        depth = 0
        for step in self.steps[:cut]:
            depth += 1 if step.kind == "push" else (-1 if step.pop_skip else 0)
        return depth

    def pushes_before(self, cut: int) -> int:
        return sum(1 for step in self.steps[:cut] if step.kind == "push")

    def residual_names(self, start: int = 0, end: int | None = None) -> list[str]:
        """The ControlNet residual inputs steps[start:end] read, in order (a ControlNet's outputs, same names)."""
        out, pushed = [], self.pushes_before(start)
        for step in self.steps[start:end]:
            if step.kind == "push":
                out.append(names.down_residual(pushed))
                pushed += 1
            elif step.kind == "mid_end":
                out.append(names.MID_RESIDUAL)
        return out


# ---- the steps, shared by the UNet and the ControlNet ----------------------------------------------
def down_mid_steps(down_blocks, mid_block, attn) -> list[Step]:
    """conv_in's push, the down blocks and the mid block as steps."""
    steps: list[Step] = [Step("push")]  # conv_in's output is the first skip
    for block in down_blocks:
        attns = list(getattr(block, "attentions", None) or [None] * len(block.resnets))
        for resnet, a in zip(block.resnets, attns):
            steps.append(Step("resnet", resnet))
            if a is not None:
                steps.append(Step("attn", attn(a)))
            steps.append(Step("push"))
        for down in block.downsamplers or []:
            steps += [Step("down", down), Step("push")]
    steps.append(Step("resnet", mid_block.resnets[0]))
    for a, resnet in zip(mid_block.attentions, mid_block.resnets[1:]):
        steps += [Step("attn", attn(a)), Step("resnet", resnet)]
    steps.append(Step("mid_end"))
    return steps


def embed(model, timestep, text_embeds=None, time_ids=None) -> torch.Tensor:
    """Timestep embedding plus SDXL's text_time conditioning (diffusers' get_time_embed + get_aug_embed)."""
    emb = model.time_embedding(model.time_proj(timestep))
    if model.time_conditioned:
        time_embeds = model.add_time_proj(time_ids.flatten()).reshape(time_ids.shape[0], -1)
        emb = emb + model.add_embedding(torch.cat([text_embeds, time_embeds.to(emb.dtype)], dim=-1))
    return emb


def context(attention: str, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """Apple's (B, C, 1, S) text layout → what the transformers take in this attention mode."""
    if attention == "split-einsum":
        return encoder_hidden_states
    return encoder_hidden_states.squeeze(2).transpose(1, 2)


def run_steps(steps: list[Step], attention: str, state: State, start: int, end: int) -> State:
    for step in steps[start:end]:
        if step.kind == "push":
            r = state.residuals.get(names.down_residual(state.pushed))
            state.skips.append(state.h if r is None else state.h + r)
            state.pushed += 1
        elif step.kind == "mid_end":
            r = state.residuals.get(names.MID_RESIDUAL)
            state.h = state.h if r is None else state.h + r
        elif step.kind == "resnet":
            h = torch.cat([state.h, state.skips.pop()], dim=1) if step.pop_skip else state.h
            state.h = step.module(h, state.emb)
        elif step.kind == "attn":
            if attention == "split-einsum":
                state.h = step.module(state.h, state.context)
            else:
                state.h = step.module(state.h, encoder_hidden_states=state.context, return_dict=False)[0]
        else:  # down / up
            state.h = step.module(state.h)
    return state


# ---- packages ---------------------------------------------------------------------------------------
def _base_inputs(steps: UnetSteps, args: tuple) -> tuple[tuple, tuple]:
    """Split a package's positional inputs into Apple's (sample, timestep, encoder_hidden_states[, text_embeds,
    time_ids]) and the rest."""
    n = 5 if steps.time_conditioned else 3
    return args[:n], args[n:]


class ControlledUnet(nn.Module):
    """The whole UNet with ControlNet residual inputs after Apple's: … → noise_pred."""

    def __init__(self, steps: UnetSteps):
        super().__init__()
        self.steps, self.residual_names = steps, steps.residual_names()

    def forward(self, *args):
        u = self.steps
        (sample, timestep, ehs, *added), residuals = _base_inputs(u, args)
        state = State(u.conv_in(sample), u.embed(timestep, *added), u.context(ehs),
                      residuals=dict(zip(self.residual_names, residuals)))
        return u.head(u.run(state, 0, len(u.steps)).h)


class UnetChunk1(nn.Module):
    """Apple's inputs (+ the residuals its steps read) → the state at the cut: chunk_h, chunk_emb, chunk_skip_0…"""

    def __init__(self, steps: UnetSteps, cut: int, residuals: bool = False):
        super().__init__()
        self.steps, self.cut = steps, cut
        self.residual_names = steps.residual_names(0, cut) if residuals else []

    def forward(self, *args):
        u = self.steps
        (sample, timestep, ehs, *added), residuals = _base_inputs(u, args)
        state = State(u.conv_in(sample), u.embed(timestep, *added), u.context(ehs),
                      residuals=dict(zip(self.residual_names, residuals)))
        state = u.run(state, 0, self.cut)
        return (state.h, state.emb, *state.skips)


class UnetChunk2(nn.Module):
    """The state at the cut (+ encoder_hidden_states, which Swift passes on from the original inputs, and the
    residuals its steps read) → noise_pred."""

    def __init__(self, steps: UnetSteps, cut: int, residuals: bool = False):
        super().__init__()
        self.steps, self.cut, self.n_skips = steps, cut, steps.skips_at(cut)
        self.residual_names = steps.residual_names(cut) if residuals else []

    def forward(self, encoder_hidden_states, chunk_h, chunk_emb, *rest):
        u = self.steps
        skips, residuals = rest[:self.n_skips], rest[self.n_skips:]
        state = State(chunk_h, chunk_emb, u.context(encoder_hidden_states), list(skips),
                      pushed=u.pushes_before(self.cut), residuals=dict(zip(self.residual_names, residuals)))
        return u.head(u.run(state, self.cut, len(u.steps)).h)


def chunk_output_names(n_skips: int) -> list[str]:
    return ["chunk_h", "chunk_emb"] + [f"chunk_skip_{i}" for i in range(n_skips)]


def validate_latent_size(config, latent_hw: tuple[int, int]) -> None:
    n_down = sum(1 for t in config.down_block_types) - 1
    factor = 2 ** max(n_down, 0)
    if any(x % factor for x in latent_hw):
        raise BadInput(f"latent size {latent_hw[1]}×{latent_hw[0]} must be a multiple of {factor} for this UNet "
                       f"(image size a multiple of {8 * factor})")
