"""Runtime modules for compressed layers: y = L1(L2(x/s)) + Q(x/s) + b, as Linear and Conv2d drop-ins.

Two modes:
- "dense": dequantize once at load and fold everything into one weight Ws/s̃ (fastest, fp32 memory).
- "packed": keep the packed b-bit codes (plus tables/scales and the fp16 factors) in memory and rebuild the
  residual on every forward — memory close to the file size, at the cost of a dequantization per call.
  For the int quantizer at 4 bits, Linear residual products can instead go through torch's int4 CPU
  kernel (`use_int4_kernel=True`, see `_Int4Kernel`: bf16 activations, opt-in).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .format import INT, PALETTE, CompressedLayer, effective_weight
from .packing import pack_codes, unpack_codes

MODES = ("dense", "packed")


class _LowRankQuantBase(nn.Module):
    def __init__(self, layer: CompressedLayer, mode: str = "dense", dtype: torch.dtype = torch.float32):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.compute_dtype = mode, dtype
        self.shape, self.quantizer, self.bits = tuple(layer.shape), layer.quantizer, layer.bits
        self.group_size, self.block_size, self.rank = layer.group_size, layer.block_size, layer.rank
        bias = None if layer.bias is None else layer.bias.to(dtype)
        self.register_buffer("bias", bias)
        if mode == "dense":
            self.register_buffer("weight", effective_weight(layer, dtype))
            return
        self.register_buffer("packed_codes", pack_codes(layer.codes, layer.bits))
        self.register_buffer("lut", layer.lut)
        self.register_buffer("scales", layer.scales)
        self.register_buffer("lowrank_up", layer.lowrank_up)
        self.register_buffer("lowrank_down", layer.lowrank_down)
        inv = None if layer.smooth is None else (1.0 / layer.smooth.float()).to(dtype)
        self.register_buffer("inv_smooth", inv)

    def residual(self) -> torch.Tensor:
        """The dequantized residual R (weight shape) in the compute dtype, rebuilt from the packed codes."""
        out = self.shape[0]
        count = self.packed_numel
        if self.quantizer == PALETTE:
            codes = unpack_codes(self.packed_codes, self.bits, count).view(out, -1).long()
            lut = self.lut.to(self.compute_dtype).repeat_interleave(self.group_size, 0)
            return torch.gather(lut, 1, codes).view(self.shape)
        codes = unpack_codes(self.packed_codes, self.bits, count, signed=True).view(self.shape)
        scales = self.scales.float().repeat_interleave(self.block_size, 1)
        return (scales * codes.float()).to(torch.float16).to(self.compute_dtype)

    @property
    def packed_numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def extra_repr(self) -> str:
        return f"shape={self.shape}, {self.quantizer}{self.bits}, rank={self.rank}, mode={self.mode}"


class _Int4Kernel:
    """torch's int4 CPU matmul (`aten._weight_int4pack_mm_for_cpu`) for an int4 residual of a Linear.

    Its weights are w = (q − 8)·scale + zero with q ∈ [0, 16) per group of K (input) columns, so our signed
    codes c ∈ [−7, 7] map exactly to q = c + 8 with zero = 0 and the same per-block scales (transposed).
    The kernel is only fast for bfloat16 activations here (fp32/fp16 inputs take a ~70× slower path), so
    inputs are cast to bf16: results then differ from the dequantized fp32 product by bf16 rounding of the
    activations (~0.4% relative). Hence opt-in (`use_int4_kernel=True`), checked at construction.
    """

    GROUPS = (32, 64, 128, 256)

    @staticmethod
    def build(codes: torch.Tensor, scales: torch.Tensor, block: int):
        if block not in _Int4Kernel.GROUPS or not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            return None
        try:
            q = (codes.to(torch.int32) + 8).contiguous()
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            sz = torch.stack([scales.float().T, torch.zeros_like(scales.float().T)], -1).to(torch.bfloat16).contiguous()
            probe = torch.randn(3, codes.shape[1])
            got = torch.ops.aten._weight_int4pack_mm_for_cpu(probe.to(torch.bfloat16), packed, block, sz).float()
            want = probe @ (codes.float() * scales.float().repeat_interleave(block, 1)).T
            if float((got - want).norm() / want.norm().clamp_min(1e-30)) > 2e-2:
                return None
            return packed, sz
        except (RuntimeError, NotImplementedError):
            return None


class LowRankQuantLinear(_LowRankQuantBase):
    def __init__(self, layer: CompressedLayer, mode: str = "dense", dtype: torch.dtype = torch.float32,
                 use_int4_kernel: bool = False):
        super().__init__(layer, mode, dtype)
        self.int4_kernel = None
        if mode == "packed" and use_int4_kernel and layer.quantizer == INT and layer.bits == 4:
            built = _Int4Kernel.build(layer.codes, layer.scales, layer.block_size)
            if built is not None:  # the kernel's own packed copy replaces ours
                self.int4_kernel = True
                self.register_buffer("int4_packed", built[0])
                self.register_buffer("int4_scale_zeros", built[1])
                self.packed_codes = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dense":
            return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        xs = x if self.inv_smooth is None else x * self.inv_smooth.to(x.dtype)
        if self.int4_kernel:
            flat = xs.reshape(-1, xs.shape[-1]).to(torch.bfloat16).contiguous()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.int4_packed, self.block_size,
                                                           self.int4_scale_zeros)
            y = y.to(x.dtype).reshape(*xs.shape[:-1], -1)
        else:
            y = F.linear(xs, self.residual().to(x.dtype))
        if self.rank:
            y = y + F.linear(F.linear(xs, self.lowrank_down.to(x.dtype)), self.lowrank_up.to(x.dtype))
        return y if self.bias is None else y + self.bias.to(x.dtype)


class LowRankQuantConv2d(_LowRankQuantBase):
    def __init__(self, layer: CompressedLayer, conv: nn.Conv2d, mode: str = "dense",
                 dtype: torch.dtype = torch.float32):
        super().__init__(layer, mode, dtype)
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError(f"{layer.name}: only groups=1, zero-padded convolutions can be compressed")
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.mode == "dense":
            return F.conv2d(x, self.weight.to(x.dtype), bias, self.stride, self.padding, self.dilation)
        xs = x if self.inv_smooth is None else x * self.inv_smooth.to(x.dtype).view(1, -1, 1, 1)
        y = F.conv2d(xs, self.residual().to(x.dtype), bias, self.stride, self.padding, self.dilation)
        if self.rank:
            out, cin, kh, kw = self.shape
            down = self.lowrank_down.to(x.dtype).view(self.rank, cin, kh, kw)
            h = F.conv2d(xs, down, None, self.stride, self.padding, self.dilation)
            y = y + F.conv2d(h, self.lowrank_up.to(x.dtype).view(out, self.rank, 1, 1))
        return y


def make_module(layer: CompressedLayer, original: nn.Module, mode: str = "dense",
                dtype: torch.dtype = torch.float32, int4_kernel: bool = False) -> nn.Module:
    """The runtime module replacing `original` (a Linear or Conv2d of the same shape)."""
    if isinstance(original, nn.Conv2d):
        return LowRankQuantConv2d(layer, original, mode, dtype)
    if isinstance(original, nn.Linear):
        return LowRankQuantLinear(layer, mode, dtype, use_int4_kernel=int4_kernel)
    raise TypeError(f"{layer.name}: cannot replace a {type(original).__name__}")


__all__ = ["LowRankQuantLinear", "LowRankQuantConv2d", "make_module", "MODES", "INT"]
