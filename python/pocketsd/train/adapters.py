"""LoRA adapters for training, on plain and on compressed layers (the QLoRA idea), through PEFT.

PEFT's `LoraConfig` wraps every plain `nn.Linear`/`nn.Conv2d` itself (an fp16 model, and the layers a compressed
model kept in fp16). PEFT cannot wrap our `CompressedLayer` out of the box, so two small LoRA layer types are
registered with its custom-module mapping (`LoraConfig._register_custom_module`): they keep PEFT's own
bookkeeping, initialisation, scaling and state-dict keys (`<module>.lora_A.weight`, `lora_B.weight`), so the
export is PEFT's and diffusers' as for any other model. Only the frozen forward is ours:

- the compressed layer (4-bit codes, tables/scales, its own low-rank branch, smoothing) runs as stored, without
  gradients for any of its tensors — they are buffers, never parameters, so nothing but the new factors learns;
- autograd would keep each layer's dequantized weight alive from the forward until the backward (it is what
  the input gradient needs), which brings back the dense model's memory. `_FrozenCompressed` stores nothing
  and rebuilds the weight in the backward instead, as bitsandbytes' 4-bit matmul does for QLoRA (bitsandbytes
  only knows its own NF4/FP4 formats, and only on CUDA, so this is written here).

A LoRA trained this way merges into the compressed model exactly as any other LoRA: `append_lowrank` widens the
low-rank branch and the residual is not touched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..palettize.layer import CompressedConv2d, CompressedLayer, CompressedLinear

# What a LoRA adapts, by module-name suffix (PEFT matches these). UNet: every attention projection, the
# transformer blocks' in/out projections, the feed-forward pair and the resnets' second 3×3 conv (styles are
# largely spatial texture, which convs draw cheaply) — the same set as the shipped reference LoRAs.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv2"]
# CLIP text encoders: the attention projections (what diffusers' SDXL LoRA script adapts).
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class _FrozenCompressed(torch.autograd.Function):
    """y = layer(x) with the layer frozen; saves no tensor for the backward: dx is computed from the weight
    rebuilt on the spot (dense mode: the layer's folded weight; packed: dequantized again from the codes)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: CompressedLayer) -> torch.Tensor:
        ctx.layer, ctx.input_shape = layer, x.shape
        return layer(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layer = ctx.layer
        if not ctx.needs_input_grad[0]:
            return None, None
        weight = layer.dense_weight if layer.mode == "dense" else layer.effective_weight(torch.float32)
        weight = weight.to(grad.dtype)
        if isinstance(layer, CompressedConv2d):
            dx = torch.nn.grad.conv2d_input(ctx.input_shape, weight, grad, layer.stride, layer.padding, layer.dilation)
        else:
            dx = grad @ weight
        return dx, None


def frozen_forward(layer: CompressedLayer, x: torch.Tensor) -> torch.Tensor:
    if layer.mode == "export":
        raise ValueError(f"{layer.name}: LoRA training needs a dense or packed compressed layer, not export mode")
    if not torch.is_grad_enabled() or not x.requires_grad:
        return layer(x)
    return _FrozenCompressed.apply(x, layer)


def _lora_layer_base():
    from peft.tuners.lora.layer import LoraLayer

    return LoraLayer


class _CompressedLoraMixin:
    """PEFT LoRA bookkeeping around a frozen `CompressedLayer` (see the module docstring)."""

    def _init_lora(self, base_layer, adapter_name, config, r, lora_alpha, **kwargs) -> None:
        _lora_layer_base().__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return int(module.shape[1]), int(module.shape[0])

    def merge(self, *args, **kwargs) -> None:  # a compressed weight is never rewritten: use `pocketsd lora merge`
        raise NotImplementedError("merge a trained LoRA into a compressed model with `pocketsd lora merge`")

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = frozen_forward(self.base_layer, x)
        if self.disable_adapters:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            h = self.lora_dropout[name](x.to(lora_a.weight.dtype))
            result = result + (lora_b(lora_a(h)) * self.scaling[name]).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def _make_classes():
    LoraLayer = _lora_layer_base()

    class CompressedLoraLinear(_CompressedLoraMixin, nn.Module, LoraLayer):
        def __init__(self, base_layer, adapter_name: str, config, r: int = 0, lora_alpha: int = 1, **kwargs):
            nn.Module.__init__(self)
            self._init_lora(base_layer, adapter_name, config, r, lora_alpha, **kwargs)

    class CompressedLoraConv2d(CompressedLoraLinear):
        """PEFT's update_layer builds Linear factors; a conv gets (r, in, kh, kw) down and (out, r, 1, 1) up,
        as PEFT's own Conv2d LoRA and diffusers' conv LoRA keys have them."""

        def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
            super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
            base = self.get_base_layer()
            self.lora_A[adapter_name] = nn.Conv2d(self.in_features, r, tuple(base.shape[2:]), base.stride,
                                                  base.padding, base.dilation, bias=False)
            self.lora_B[adapter_name] = nn.Conv2d(r, self.out_features, 1, bias=False)
            self.reset_lora_parameters(adapter_name, config.init_lora_weights)
            self.set_adapter(self.active_adapters)

    return CompressedLoraLinear, CompressedLoraConv2d


def lora_config(rank: int, alpha: float, targets: list[str]):
    """PEFT's LoraConfig with our compressed layer types registered."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    linear, conv = _make_classes()
    config._register_custom_module({CompressedLinear: linear, CompressedConv2d: conv})
    return config


def add_lora(model: nn.Module, rank: int, alpha: float, targets: list[str], seed: int) -> list[nn.Parameter]:
    """Freeze `model` and give it one LoRA adapter; returns the new factors, the only trainable parameters. The
    factors' initial values depend only on `seed`."""
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    config = lora_config(rank, alpha, targets)
    compressed = [m for m in model.modules() if isinstance(m, CompressedLayer)]
    for layer in compressed:  # PEFT places new factors on the device of the wrapped layer's `weight`/`qweight`
        layer.qweight = layer.codes  # plain attribute for the injection only; removed below
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % 2**64)  # PEFT's gaussian init draws from the global generator; seed+k may pass 2^64-1
            # PEFT's own injection (what diffusers' `add_adapter` calls; transformers 5's wants a PEFT not yet released)
            inject_adapter_in_model(config, model)
    finally:
        for layer in compressed:
            del layer.qweight
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"no layer of {type(model).__name__} matches the LoRA targets {targets}")
    return params


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's factors in PEFT's key format (`<module>.lora_A.weight`, …)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def trainable_named(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
