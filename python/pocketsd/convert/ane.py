"""The Neural Engine rewrite of the UNet's transformer blocks ("split-einsum", after Apple's
ml-stable-diffusion and its "Deploying Transformers on the Apple Neural Engine" note).

Why each change (the ANE, not the GPU, is the target):
- Layout (B, C, 1, S): the ANE's native tensors are 4-D with channels second and the last axis
  contiguous; keeping tokens on the last axis avoids transposes and the 64-byte-aligned padding a
  (B, S, C) tensor would pay on a small last dimension.
- Linear → 1×1 conv: in that layout a Linear over C is exactly a 1×1 conv, which the ANE runs natively.
- Per-head einsum attention: splitting heads into a Python list of (B, d, 1, S) tensors and using two
  einsums per head (→ batched matmuls without reshape/transpose of the big attention matrix) keeps
  every intermediate in the ANE-friendly layout and small enough for its SRAM.
- LayerNorm over C of a (B, C, 1, S) tensor, written out with reductions over axis 1 (the stock
  layer_norm op normalises the last axis).

Built as a module tree from the diffusers UNet's own weights (sharing them), so the PyTorch forward of
the rewritten tree can be compared with diffusers' on the same weights (tests/test_convert_ane.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput
from ..palettize.layer import CompressedConv2d, CompressedLinear


def as_conv1x1(linear: nn.Module) -> nn.Module:
    """A Linear (plain or compressed) as a 1×1 conv acting on (B, C, 1, S); weights shared, not copied."""
    if isinstance(linear, CompressedLinear):  # same tensors, acting on (B, C, 1, S): R keeps its bytes
        linear.channels_first = True
        return linear
    if isinstance(linear, CompressedConv2d) and linear.shape[2:] == (1, 1):
        return linear  # SD 1.x/2.x project with 1×1 convs, which already act on (B, C, H, W)
    if isinstance(linear, nn.Linear):
        conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None, device="meta")
        conv.weight = nn.Parameter(linear.weight.data[:, :, None, None], requires_grad=False)
        if linear.bias is not None:
            conv.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        return conv
    if isinstance(linear, nn.Conv2d) and linear.kernel_size == (1, 1):
        return linear
    raise BadInput(f"cannot rewrite {type(linear).__name__} as a 1×1 conv for the Neural Engine")


class LayerNormChannels(nn.Module):
    """LayerNorm over axis 1 of (B, C, 1, S), from an nn.LayerNorm's weights."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        if norm.weight is None:
            raise BadInput("layer norms without affine weights are not supported by the ANE rewrite")
        self.eps = norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        var = (centred * centred).mean(dim=1, keepdim=True)
        out = centred * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)
        return out + self.bias.view(1, -1, 1, 1) if self.bias is not None else out


class SplitEinsumAttention(nn.Module):
    """diffusers `Attention` on (B, C, 1, S) with one pair of einsums per head."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        unsupported = [k for k in ("norm_q", "norm_k", "group_norm", "spatial_norm", "norm_cross")
                       if getattr(attn, k, None) is not None]
        if unsupported or getattr(attn, "residual_connection", False) or getattr(attn, "rescale_output_factor", 1.0) != 1.0:
            raise BadInput(f"attention with {unsupported or 'residual/rescale'} is not supported by the ANE rewrite")
        self.heads, self.scale = attn.heads, float(attn.scale)
        self.to_q, self.to_k, self.to_v = (as_conv1x1(attn.to_q), as_conv1x1(attn.to_k), as_conv1x1(attn.to_v))
        self.to_out = as_conv1x1(attn.to_out[0])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        head = q.shape[1] // self.heads
        outs = []
        for qh, kh, vh in zip(q.split(head, 1), k.split(head, 1), v.split(head, 1)):
            # Scores (B, S_k, 1, S_q): keys on axis 1 so the softmax is over channels, queries stay last.
            scores = torch.einsum("bchq,bchk->bkhq", qh, kh) * self.scale
            outs.append(torch.einsum("bkhq,bchk->bchq", scores.softmax(dim=1), vh))
        return self.to_out(torch.cat(outs, dim=1))


class FeedForwardChannels(nn.Module):
    """GEGLU feed-forward (SD/SDXL) with 1×1 convs; the gate split is along channels."""

    def __init__(self, ff: nn.Module):
        super().__init__()
        geglu = ff.net[0]
        if type(geglu).__name__ != "GEGLU":
            raise BadInput(f"feed-forward activation {type(geglu).__name__} is not supported by the ANE rewrite")
        self.approximate = getattr(geglu, "approximate", "none")
        self.proj_in, self.proj_out = as_conv1x1(geglu.proj), as_conv1x1(ff.net[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj_in(x).chunk(2, dim=1)
        return self.proj_out(hidden * F.gelu(gate, approximate=self.approximate))


class TransformerBlockChannels(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        if getattr(block, "norm_type", "layer_norm") != "layer_norm" or getattr(block, "only_cross_attention", False):
            raise BadInput(f"transformer block type {block.norm_type!r} is not supported by the ANE rewrite")
        self.norm1, self.attn1 = LayerNormChannels(block.norm1), SplitEinsumAttention(block.attn1)
        self.norm2, self.attn2 = LayerNormChannels(block.norm2), SplitEinsumAttention(block.attn2)
        self.norm3, self.ff = LayerNormChannels(block.norm3), FeedForwardChannels(block.ff)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DChannels(nn.Module):
    """diffusers `Transformer2DModel` (continuous input) rewritten for the ANE.

    Takes the image features (B, C, H, W) and the text context in Apple's (B, C_text, 1, S_text) layout.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not getattr(model, "is_input_continuous", True):
            raise BadInput("only continuous-input Transformer2DModel blocks are supported by the ANE rewrite")
        self.norm = model.norm  # GroupNorm on (B, C, H, W): already ANE-friendly
        # proj_in/out are Linear (use_linear_projection, SDXL) or 1×1 Conv (SD 1.x): the same 1×1 conv here.
        self.proj_in, self.proj_out = as_conv1x1(model.proj_in), as_conv1x1(model.proj_out)
        self.blocks = nn.ModuleList(TransformerBlockChannels(b) for b in model.transformer_blocks)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.proj_in(self.norm(x))
        inner = y.shape[1]
        y = y.reshape(b, inner, 1, h * w)
        for block in self.blocks:
            y = block(y, context)
        return self.proj_out(y.reshape(b, inner, h, w)) + x


def rewrite_for_ane(transformer: nn.Module) -> nn.Module:
    return Transformer2DChannels(transformer)
