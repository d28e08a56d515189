"""The compressed layer: one module type that owns its tensors and its maths, whose state dict is the format.

    W·diag(s̃) ≈ R + L1·L2                    R: the b-bit quantized residual, L1·L2: the fp16 low-rank branch
    y = op(x / s, R + L1·L2) + b              op: linear, or conv2d with the module's stride/padding/dilation

(s̃ is s repeated over the kernel taps: s̃[i·k + t] = s[i].) The module's persistent buffers are exactly the
tensors `pocketsd.artifacts.compressed` documents — `codes` (packed), `lut` | `scales`, `lowrank_up`,
`lowrank_down`, `smooth`, `bias` — so `model.state_dict()` is what the compressed folder stores and
`load_state_dict` is how it is read back (the idea of Nunchaku's quantized linear layer).

R is defined bit for bit as Core ML's iOS18 constexpr ops compute it:
    palette (`constexpr_lut_to_dense`):        R[o, …] = lut[o // G, codes[o, …]]
    int (`constexpr_blockwise_shift_scale`):   R[o, i, …] = fp16(scales[o, i // B, …] · codes[o, i, …])
(the product of an fp16 scale and a small integer is exact in fp32 and rounded once, as numpy/Core ML do).

One type, four ways to run (`set_mode`):
- "packed": only the stored tensors in memory; R is rebuilt on every forward (memory ≈ the file size);
- "dense":  R + L1·L2 folded once into one weight Ws/s̃ (fastest forward, fp32 memory);
- "export": R, the factors and 1/s materialised as fp32 tensors whose values are fp16-exact, for
            torch.export → Core ML: the converter then sees a weight const bit-identical to R, which
            `convert/mil_weights` swaps for a constexpr op built from our codes. `channels_first` makes a
            Linear act on the Neural Engine's (B, C, 1, S) layout as a 1×1 conv;
- "train":  the small tensors chosen by `trainable` (factors, table or scales, bias) become fp32
            `nn.Parameter`s — each divided by a power of two near its RMS, so one optimizer step size is a
            relative step for tables, factors and biases alike — held outside the state dict (which stays the
            format), and the
            forward rebuilds R from the frozen codes and the current table/scales, so gradients reach only
            them; `commit_trained` rounds them back into the fp16 buffers (`palettize.distill` uses this).
The LoRA rule lives here once (`append_lowrank`): since the branch acts on x/s, a LoRA (B: out×r', A: r'×in·k)
enters as L1 ← [L1, B], L2 ← [L2; A·diag(s̃)], and R is never touched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..artifacts.compressed import INT, PALETTE, LayerRecord
from .packing import pack_codes, packed_nbytes, unpack_codes

MODES = ("packed", "dense", "export", "train")
# What the "train" mode may make trainable: the low-rank factors, the palette table or int scales, the bias.
TRAINABLE = ("lowrank", "table", "bias")


class CompressedLayer(nn.Module):
    """Base of `CompressedLinear` and `CompressedConv2d`; build one with `from_parts` or `shell`."""

    kind = ""

    def __init__(self, record: LayerRecord, device=None):
        super().__init__()
        if record.quantizer not in (PALETTE, INT):
            raise ValueError(f"{record.name}: unknown quantizer {record.quantizer!r}")
        self.name, self.shape = record.name, tuple(record.shape)
        self.quantizer, self.bits = record.quantizer, int(record.bits)
        self.group_size, self.block_size = record.group_size, record.block_size
        self.alpha, self.snr_db = float(record.alpha), record.snr_db
        self.mode, self.compute_dtype, self.channels_first = "packed", torch.float32, False
        self.trained: dict[str, nn.Parameter] = {}  # "train" mode only: fp32 copies / RMS, out of the state dict
        self.train_unit: dict[str, float] = {}  # each trained tensor's RMS: value = parameter · unit
        out, cin = self.shape[0], self.shape[1]
        f16 = dict(dtype=torch.float16, device=device)
        self.register_buffer("codes", torch.empty(packed_nbytes(self.numel, self.bits), dtype=torch.uint8, device=device))
        if self.quantizer == PALETTE:
            self.register_buffer("lut", torch.empty(out // self.group_size, 1 << self.bits, **f16))
            self.register_buffer("scales", None)
        else:
            self.register_buffer("lut", None)
            self.register_buffer("scales", torch.empty(out, cin // self.block_size, *self.shape[2:], **f16))
        rank = int(record.rank)
        self.register_buffer("lowrank_up", torch.empty(out, rank, **f16) if rank else None)
        self.register_buffer("lowrank_down", torch.empty(rank, self.numel // out, **f16) if rank else None)
        self.register_buffer("smooth", torch.empty(cin, **f16) if record.smoothed else None)
        self.register_buffer("bias", torch.empty(out, **f16) if record.has_bias else None)
        self._int4 = None

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def shell(cls, record: LayerRecord, like: nn.Module, device="meta") -> "CompressedLayer":
        """An empty layer of the record's shapes replacing `like` (a Linear/Conv2d/Embedding), to be filled by
        `load_state_dict(..., assign=True)`."""
        target = CompressedConv2d if isinstance(like, nn.Conv2d) else \
            CompressedEmbedding if isinstance(like, nn.Embedding) else CompressedLinear
        layer = target(record, device=device)
        if isinstance(layer, CompressedConv2d):
            layer.take_conv_args(like)
        elif isinstance(layer, CompressedEmbedding):
            layer.take_embedding_args(like)
        return layer

    @classmethod
    def from_parts(cls, record: LayerRecord, like: nn.Module, codes: torch.Tensor, *, lut=None, scales=None,
                   lowrank_up=None, lowrank_down=None, smooth=None, bias=None) -> "CompressedLayer":
        """A layer from a compression result: `codes` unpacked in the weight's shape, the rest as stored."""
        layer = cls.shell(record, like, device="cpu")
        layer.codes = pack_codes(codes, record.bits)
        for name, value in (("lut", lut), ("scales", scales), ("lowrank_up", lowrank_up),
                            ("lowrank_down", lowrank_down), ("smooth", smooth), ("bias", bias)):
            expected = getattr(layer, name)
            if (value is None) != (expected is None):
                raise ValueError(f"{record.name}: {name} is {'missing' if value is None else 'unexpected'} for its record")
            if value is not None:
                setattr(layer, name, value.detach().to("cpu", torch.float16).contiguous())
        return layer

    def record(self) -> LayerRecord:
        """The layer's manifest row (`bytes` is filled in by the writer)."""
        return LayerRecord(self.name, self.kind, self.shape, self.quantizer, self.bits,
                           self.group_size if self.quantizer == PALETTE else None,
                           self.block_size if self.quantizer == INT else None, self.rank, self.alpha,
                           self.smooth is not None, self.bias is not None, self.snr_db)

    # ---- what it stores ----------------------------------------------------------------------------
    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rank(self) -> int:
        return 0 if self.lowrank_up is None else int(self.lowrank_up.shape[1])

    @property
    def taps(self) -> int:
        return math.prod(self.shape[2:]) if len(self.shape) > 2 else 1

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.lut, self.scales, self.lowrank_up,
                                                          self.lowrank_down, self.smooth, self.bias) if t is not None)

    def unpacked_codes(self) -> torch.Tensor:
        """Codes in the weight's shape: uint8 indices (palette) or int8 values (int)."""
        signed = self.quantizer == INT
        return unpack_codes(self.codes, self.bits, self.numel, signed=signed).view(self.shape)

    # ---- the maths -------------------------------------------------------------------------------
    def residual(self) -> torch.Tensor:
        """R, exactly as Core ML decompresses it: an fp16 tensor of the weight's shape."""
        out = self.shape[0]
        if self.quantizer == PALETTE:
            codes = self.unpacked_codes().reshape(out, -1).long()
            rows = self.lut.repeat_interleave(self.group_size, 0)
            return torch.gather(rows, 1, codes).view(self.shape)
        scales = self.scales.float().repeat_interleave(self.block_size, dim=1)
        return (scales * self.unpacked_codes().float()).to(torch.float16)

    def smooth_taps(self) -> torch.Tensor | None:
        """s̃ (fp32): s repeated over the kernel taps, in the column order of weight.reshape(out, -1)."""
        return None if self.smooth is None else self.smooth.float().repeat_interleave(self.taps)

    def smoothed_weight(self, dtype=torch.float32) -> torch.Tensor:
        """Ws = R + L1·L2 (the weight applied to x/s), in the weight's shape."""
        w = self.residual().to(dtype)
        if self.rank:
            w = w + (self.lowrank_up.to(dtype) @ self.lowrank_down.to(dtype)).view(self.shape)
        return w

    def effective_weight(self, dtype=torch.float32) -> torch.Tensor:
        """Ws / s̃: the dense weight the layer applies to x."""
        w = self.smoothed_weight(torch.float32)
        if self.smooth is not None:
            w = w / self.smooth.float().view(1, -1, *([1] * (len(self.shape) - 2)))
        return w.to(dtype)

    @torch.no_grad()
    def append_lowrank(self, up: torch.Tensor, down: torch.Tensor) -> None:
        """Widen the branch by a LoRA's factors (up: out×r', down: r'×in·k, acting on x): L1 ← [L1, up],
        L2 ← [L2; down·diag(s̃)]. Stored factors are kept bit for bit; the new ones are rounded to fp16 once."""
        s = self.smooth_taps()
        down = down.float() * s[None, :] if s is not None else down.float()
        up16, down16 = up.float().to(torch.float16), down.to(torch.float16)
        if self.lowrank_up is None:
            self.lowrank_up, self.lowrank_down = up16.contiguous(), down16.contiguous()
        else:
            self.lowrank_up = torch.cat([self.lowrank_up, up16], 1).contiguous()
            self.lowrank_down = torch.cat([self.lowrank_down, down16], 0).contiguous()
        self.set_mode(self.mode, self.compute_dtype, int4_kernel=self._int4 is not None)

    # ---- training the small tensors (codes frozen) --------------------------------------------------
    def trainable_names(self, trainable=TRAINABLE) -> list[str]:
        """The stored tensors `trainable` selects that this layer has (factors only at rank > 0)."""
        unknown = set(trainable) - set(TRAINABLE)
        if unknown:
            raise ValueError(f"trainable must be a subset of {TRAINABLE}, got {sorted(unknown)}")
        names = []
        if "lowrank" in trainable and self.rank:
            names += ["lowrank_up", "lowrank_down"]
        if "table" in trainable:
            names.append("lut" if self.quantizer == PALETTE else "scales")
        if "bias" in trainable and self.bias is not None:
            names.append("bias")
        return names

    def _train_residual(self) -> torch.Tensor:
        """R (fp32) as a differentiable function of the table or scales, from the frozen codes."""
        out = self.shape[0]
        if self.quantizer == PALETTE:
            lut = self.train_value("lut")
            rows = lut.repeat_interleave(self.group_size, 0)
            return torch.gather(rows, 1, self.train_codes).view(self.shape)
        scales = self.train_value("scales").repeat_interleave(self.block_size, dim=1)
        r = scales * self.train_codes
        # Core ML rounds each product to fp16: the forward does too, the gradient passes straight through
        return r + (r.detach().to(torch.float16).float() - r.detach())

    def _train_weight(self) -> torch.Tensor:
        """Ws = R + L1·L2 in fp32 from the current (trainable or frozen) tensors."""
        if self.train_frozen_weight is not None:
            return self.train_frozen_weight
        w = self.train_fixed_residual if self.train_fixed_residual is not None else self._train_residual()
        if self.rank:
            up, down = self.train_value("lowrank_up"), self.train_value("lowrank_down")
            w = w + (up @ down).view(self.shape)
        return w

    def _train_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.train_value("bias")

    def train_value(self, name: str) -> torch.Tensor:
        """A stored tensor's current fp32 value: the trained one (parameter · unit) or the frozen buffer."""
        p = self.trained.get(name)
        return getattr(self, name).float() if p is None else p * self.train_unit[name]

    @torch.no_grad()
    def commit_trained(self) -> dict[str, float]:
        """Round the trained fp32 tensors into the fp16 buffers (same names and shapes: the format is
        unchanged; `codes` is never touched). Returns each tensor's relative change. Stays in "train" mode
        with fresh fp32 copies of the rounded values."""
        change = {}
        for name, p in self.trained.items():
            old = getattr(self, name)
            new = p.detach().float() * self.train_unit[name]
            if not torch.isfinite(new).all() or new.abs().max() > 65504:
                raise ValueError(f"{self.name}: trained {name} left the fp16 range")
            new16 = new.to(torch.float16)
            change[name] = float((new16.float() - old.float()).norm() / old.float().norm().clamp_min(1e-30))
            setattr(self, name, new16.contiguous())
        if self.trained:
            self.set_mode("train", trainable=self._trainable)
        return change

    # ---- modes -----------------------------------------------------------------------------------
    def set_mode(self, mode: str, dtype: torch.dtype = torch.float32, int4_kernel: bool = False,
                 trainable=TRAINABLE) -> "CompressedLayer":
        """Switch how the layer runs (see the module docstring); derived tensors are not persistent.
        `trainable` (train mode only): which of TRAINABLE get fp32 parameters."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.compute_dtype = mode, dtype
        for name in ("dense_weight", "export_residual", "export_up", "export_down", "export_inv_smooth",
                     "export_bias", "compute_bias", "compute_inv_smooth", "train_codes", "train_fixed_residual",
                     "train_frozen_weight"):
            self._buffers.pop(name, None)
            self._non_persistent_buffers_set.discard(name)
        self._int4 = None
        self.trained, self.train_unit, self._trainable = {}, {}, tuple(trainable)
        if mode == "train":
            names = self.trainable_names(trainable)
            for n in names:
                value = getattr(self, n).detach().float()
                # a power of two near the RMS: value / unit · unit is then exact, so the untrained forward is
                # bit for bit the stored one (int products sit on fp16 rounding ties)
                rms = max(float(value.pow(2).mean().sqrt()), 1e-12)
                self.train_unit[n] = 2.0 ** round(math.log2(rms))
                self.trained[n] = nn.Parameter(value / self.train_unit[n])
            inv = None if self.smooth is None else 1.0 / self.smooth.float()
            self.register_buffer("compute_inv_smooth", inv, persistent=False)
            table = "lut" if self.quantizer == PALETTE else "scales"
            codes = fixed = frozen = None
            if table in self.trained:  # R varies with the table: keep the codes unpacked (int64 indices for gather)
                codes = self.unpacked_codes().reshape(self.shape[0], -1)
                codes = codes.long() if self.quantizer == PALETTE else codes.float().view(self.shape)
            else:
                fixed = self.residual().float()
                if not any(n in self.trained for n in ("lowrank_up", "lowrank_down")):  # the weight is fixed
                    frozen = fixed if not self.rank else \
                        fixed + (self.lowrank_up.float() @ self.lowrank_down.float()).view(self.shape)
            self.register_buffer("train_codes", codes, persistent=False)
            self.register_buffer("train_fixed_residual", fixed, persistent=False)
            self.register_buffer("train_frozen_weight", frozen, persistent=False)
            return self
        bias = None if self.bias is None else self.bias.to(dtype)
        if mode == "dense":
            self.register_buffer("dense_weight", self.effective_weight(dtype), persistent=False)
            self.register_buffer("compute_bias", bias, persistent=False)
        elif mode == "packed":
            self.register_buffer("compute_bias", bias, persistent=False)
            inv = None if self.smooth is None else (1.0 / self.smooth.float()).to(dtype)
            self.register_buffer("compute_inv_smooth", inv, persistent=False)
            if int4_kernel:
                self._int4 = _Int4Kernel.build(self)
        else:  # export: fp32 tensors whose values are the stored fp16 ones (the fp16 cast in ct.convert is exact)
            # contiguous: torch.export refuses constants in any other dim order (Core ML has no strides)
            self.register_buffer("export_residual", self.residual().float().contiguous(), persistent=False)
            self.register_buffer("export_up", None if not self.rank else self.lowrank_up.float().contiguous(),
                                 persistent=False)
            self.register_buffer("export_down", None if not self.rank else self.lowrank_down.float().contiguous(),
                                 persistent=False)
            inv = None if self.smooth is None else (1.0 / self.smooth.float()).contiguous()
            self.register_buffer("export_inv_smooth", inv, persistent=False)
            self.register_buffer("export_bias", None if self.bias is None else self.bias.float().contiguous(),
                                 persistent=False)
        return self

    def extra_repr(self) -> str:
        return f"shape={self.shape}, {self.quantizer}{self.bits}, rank={self.rank}, mode={self.mode}"


class _Int4Kernel:
    """torch's int4 CPU matmul (`aten._weight_int4pack_mm_for_cpu`) for an int4 residual of a Linear.

    Its weights are w = (q − 8)·scale + zero with q ∈ [0, 16) per group of K (input) columns, so our signed
    codes c ∈ [−7, 7] map exactly to q = c + 8 with zero = 0 and the same per-block scales (transposed).
    The kernel is only fast for bfloat16 activations (fp32/fp16 inputs take a ~70× slower path), so inputs are
    cast to bf16: results then differ from the dequantized product by bf16 rounding of the activations (~0.4 %).
    Hence opt-in, and checked on a probe at construction.
    """

    GROUPS = (32, 64, 128, 256)

    @staticmethod
    def build(layer: "CompressedLayer"):
        if not (isinstance(layer, CompressedLinear) and layer.quantizer == INT and layer.bits == 4
                and layer.block_size in _Int4Kernel.GROUPS and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")):
            return None
        codes, scales, block = layer.unpacked_codes(), layer.scales, layer.block_size
        try:
            q = (codes.to(torch.int32) + 8).contiguous()
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            sz = torch.stack([scales.float().T, torch.zeros_like(scales.float().T)], -1).to(torch.bfloat16).contiguous()
            probe = torch.randn(3, codes.shape[1])
            got = torch.ops.aten._weight_int4pack_mm_for_cpu(probe.to(torch.bfloat16), packed, block, sz).float()
            want = probe @ layer.residual().float().T
            if float((got - want).norm() / want.norm().clamp_min(1e-30)) > 2e-2:
                return None
            return packed, sz
        except (RuntimeError, NotImplementedError):
            return None


class CompressedLinear(CompressedLayer):
    kind = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first and self.mode != "export":
            # the Neural Engine layout (B, C, 1, S) outside export (e.g. a chunk run in torch to size the other):
            # the same maths over the channel axis
            # (contiguous: these outputs become the next chunk's example inputs, and torch.export refuses strides)
            return self._forward(x.movedim(1, -1)).movedim(-1, 1).contiguous()
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dense":
            bias = None if self.compute_bias is None else self.compute_bias.to(x.dtype)
            return F.linear(x, self.dense_weight.to(x.dtype), bias)
        if self.mode == "export":
            return self._export_forward(x)
        xs = x if self.compute_inv_smooth is None else x * self.compute_inv_smooth.to(x.dtype)
        if self.mode == "train":
            bias = self._train_bias()
            return F.linear(xs, self._train_weight().to(x.dtype), None if bias is None else bias.to(x.dtype))
        if self._int4 is not None:
            packed, sz = self._int4
            flat = xs.reshape(-1, xs.shape[-1]).to(torch.bfloat16).contiguous()
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, self.block_size, sz)
            y = y.to(x.dtype).reshape(*xs.shape[:-1], -1)
        else:
            y = F.linear(xs, self.residual().to(x.dtype))
        if self.rank:
            y = y + F.linear(F.linear(xs, self.lowrank_down.to(x.dtype)), self.lowrank_up.to(x.dtype))
        return y if self.compute_bias is None else y + self.compute_bias.to(x.dtype)

    def _export_forward(self, x: torch.Tensor) -> torch.Tensor:
        cf = self.channels_first  # (B, C, 1, S): the Linear is a 1×1 conv over C
        if self.export_inv_smooth is not None:
            x = x * self.export_inv_smooth.view(1, -1, 1, 1) if cf else x * self.export_inv_smooth
        if cf:
            y = F.conv2d(x, self.export_residual[:, :, None, None])
            if self.rank:
                y = y + F.conv2d(F.conv2d(x, self.export_down[:, :, None, None]), self.export_up[:, :, None, None])
        else:
            y = F.linear(x, self.export_residual)
            if self.rank:
                y = y + F.linear(F.linear(x, self.export_down), self.export_up)
        if self.export_bias is not None:
            y = y + (self.export_bias.view(1, -1, 1, 1) if cf else self.export_bias)
        return y


class CompressedConv2d(CompressedLayer):
    kind = "conv"

    def __init__(self, record: LayerRecord, device=None):
        super().__init__(record, device)
        self.stride, self.padding, self.dilation = (1, 1), (0, 0), (1, 1)

    def take_conv_args(self, conv: nn.Conv2d) -> None:
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"{self.name}: only groups=1, zero-padded convolutions can be compressed")
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.stride, self.padding, self.dilation)
        if self.mode == "dense":
            bias = None if self.compute_bias is None else self.compute_bias.to(x.dtype)
            return F.conv2d(x, self.dense_weight.to(x.dtype), bias, *args)
        if self.mode == "train":
            xs = x if self.compute_inv_smooth is None else x * self.compute_inv_smooth.to(x.dtype).view(1, -1, 1, 1)
            bias = self._train_bias()
            return F.conv2d(xs, self._train_weight().to(x.dtype), None if bias is None else bias.to(x.dtype), *args)
        if self.mode == "export":
            inv, residual, up, down, bias = (self.export_inv_smooth, self.export_residual, self.export_up,
                                             self.export_down, self.export_bias)
        else:
            inv, residual, bias = self.compute_inv_smooth, self.residual().to(x.dtype), self.compute_bias
            up, down = self.lowrank_up, self.lowrank_down
        xs = x if inv is None else x * inv.to(x.dtype).view(1, -1, 1, 1)
        y = F.conv2d(xs, residual.to(x.dtype), None if bias is None else bias.to(x.dtype), *args)
        if self.rank:
            out, cin, kh, kw = self.shape
            h = F.conv2d(xs, down.to(x.dtype).view(self.rank, cin, kh, kw), None, *args)
            y = y + F.conv2d(h, up.to(x.dtype).view(out, self.rank, 1, 1))
        return y


class CompressedEmbedding(CompressedLayer):
    """A token embedding table (vocab, dim) stored as codes: its rows are what a gather reads, so R is the table.

    The stored tensors and R are the base class's with "output channel" = token row: int codes with one scale per
    row (`constexpr_blockwise_shift_scale`), or a palette per group of rows (`constexpr_lut_to_dense`). In Core ML
    the constexpr op's output feeds the gather directly (export mode hands torch.export R as the embedding's
    weight, which `convert/mil_weights` swaps for the op). No low-rank branch, smoothing or bias: a lookup has no
    input to smooth, and its error does not compound through a matmul."""

    kind = "embedding"

    def __init__(self, record: LayerRecord, device=None):
        if record.rank or record.smoothed or record.has_bias:
            raise ValueError(f"{record.name}: an embedding has no low-rank branch, smoothing or bias")
        super().__init__(record, device)
        self.padding_idx = None

    def take_embedding_args(self, embedding: nn.Embedding) -> None:
        if embedding.max_norm is not None or embedding.sparse:
            raise ValueError(f"{self.name}: only plain embeddings (no max_norm, not sparse) can be compressed")
        self.padding_idx = embedding.padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.mode == "dense":
            table = self.dense_weight
        elif self.mode == "export":
            table = self.export_residual
        elif self.mode == "train":
            table = self._train_weight()
        else:
            table = self.residual().to(self.compute_dtype)
        return F.embedding(ids, table, self.padding_idx)


# ---- whole models ----------------------------------------------------------------------------------
def compressed_layers(model: nn.Module) -> dict[str, CompressedLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, CompressedLayer)}


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def load_compressed(skeleton: nn.Module, records: list[LayerRecord], state_dict: dict, mode: str = "dense",
                    dtype: torch.dtype = torch.float32, int4_kernel: bool = False) -> nn.Module:
    """Fill `skeleton` (the component's module built from its config, ideally on the meta device so no dense
    copy of the original weights is ever made) with a compressed state dict: each recorded layer becomes a
    `CompressedLayer`, everything else is loaded in `dtype`. Returns the model in eval mode.

    Raises ValueError naming the first layer or tensor that does not fit."""
    modules = dict(skeleton.named_modules())
    for record in records:
        like = modules.get(record.name)
        if not isinstance(like, (nn.Linear, nn.Conv2d, nn.Embedding)):
            raise ValueError(f"compressed layer {record.name} is not a Linear/Conv2d/Embedding of this model's config")
        if tuple(like.weight.shape) != record.shape:
            raise ValueError(f"compressed layer {record.name} has shape {record.shape}, the model expects "
                             f"{tuple(like.weight.shape)}")
        set_submodule(skeleton, record.name, CompressedLayer.shell(record, like))
    owned = {r.name for r in records}
    state = {k: (v if k.rpartition(".")[0] in owned or not v.is_floating_point() else v.to(dtype))
             for k, v in state_dict.items()}
    try:
        skeleton.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise ValueError(str(exc).splitlines()[-1].strip()) from None
    expected = set(skeleton.state_dict())
    unexpected = sorted(set(state) - expected)
    still_meta = [n for n, t in list(skeleton.named_parameters()) + list(skeleton.named_buffers()) if t.is_meta]
    if unexpected or still_meta:
        raise ValueError(f"the compressed weights do not fit the config: unexpected {unexpected[:3]}, "
                         f"missing {still_meta[:3]}")
    for layer in compressed_layers(skeleton).values():
        layer.set_mode(mode, dtype, int4_kernel)
    return skeleton.eval().requires_grad_(False)


def set_mode(model: nn.Module, mode: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    for layer in compressed_layers(model).values():
        layer.set_mode(mode, dtype)
    return model


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every "train"-mode parameter of the model's compressed layers, named `<layer>.<tensor>` like the format."""
    return {f"{name}.{t}": p for name, layer in compressed_layers(model).items() for t, p in layer.trained.items()}


def compressed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as the format stores it (non-persistent derived tensors are not in it)."""
    return {k: v.detach() for k, v in model.state_dict().items()}
