"""The compressed UNet as a PyTorch module tree ready for torch.export.

Each compressed Linear/Conv2d becomes an `ExportLowRankLayer` computing exactly the format's semantics
(palettize/format.py):  y = op(x·(1/s), R) + up(down(x·(1/s))) + b.  R is held as an fp32 tensor whose
values are the fp16 dequantized residual, so after the fp16 cast in ct.convert the MIL program holds a
const that is bit-identical to R; `mil_weights` then swaps that const for a constexpr op built from our
codes and tables (nothing is re-clustered). The low-rank branch stays two small fp16 convs/matmuls
beside the residual, which is what lets LoRAs be appended without touching R.

Written here rather than reusing palettize's runtime layers because export needs a different shape of
module: plain F.linear/F.conv2d on a materialised R (so the converter emits one weight const we can
recognise), and a channels-first (B, C, 1, S) variant for the Neural Engine rewrite.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput


def fp16_key(values: np.ndarray | torch.Tensor) -> str:
    """Identity of a weight by its fp16 bytes (shape-agnostic: (o,i) and (o,i,1,1) share a key)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to(torch.float16).contiguous().numpy()
    return hashlib.sha1(np.ascontiguousarray(values.astype(np.float16)).tobytes()).hexdigest()


class ExportLowRankLayer(nn.Module):
    """One compressed layer in export form. `weight_shape` is the diffusers weight shape (o, i[, kh, kw])."""

    def __init__(self, layer, conv_args: dict | None = None):
        super().__init__()
        from ..palettize.format import dequantize_residual

        self.name = layer.name
        self.layer = layer  # the CompressedLayer (codes, tables) — read by mil_weights, not by forward
        self.kind = layer.kind
        self.weight_shape = tuple(layer.shape)
        self.conv_args = dict(conv_args or {})
        self.channels_first = False  # True after the ANE rewrite: a Linear acting on (B, C, 1, S)
        residual = dequantize_residual(layer)
        self.residual = nn.Parameter(residual.float(), requires_grad=False)
        self.key = fp16_key(residual)
        self.up = self.down = None
        if layer.rank:
            self._set_lowrank(layer.lowrank_up.float(), layer.lowrank_down.float())
        inv = None if layer.smooth is None else 1.0 / layer.smooth.float()
        self.inv_smooth = None if inv is None else nn.Parameter(inv, requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.float(), requires_grad=False)

    # -- the low-rank branch ------------------------------------------------------------------
    def _set_lowrank(self, up: torch.Tensor, down: torch.Tensor) -> None:
        self.up = nn.Parameter(up.contiguous(), requires_grad=False)  # (out, r)
        self.down = nn.Parameter(down.contiguous(), requires_grad=False)  # (r, in·k)

    @property
    def lowrank_up(self):  # palettize.lora recognises compressed layers by this attribute
        return self.up

    @property
    def rank(self) -> int:
        return 0 if self.up is None else int(self.up.shape[1])

    def _smooth_taps(self) -> torch.Tensor | None:
        if self.inv_smooth is None:
            return None
        k = int(np.prod(self.weight_shape[2:])) if len(self.weight_shape) > 2 else 1
        return (1.0 / self.inv_smooth.float()).repeat_interleave(k)

    @torch.no_grad()
    def append_lowrank(self, b: torch.Tensor, a: torch.Tensor) -> None:
        """LoRA (B: out×r', A: r'×in·k) → L1 ← [L1, B], L2 ← [L2; A·diag(s̃)] (the format's rule)."""
        s = self._smooth_taps()
        a = a.float() * s[None, :] if s is not None else a.float()
        # Stored as fp16 in the bundle, like the compressed folder's own factors.
        b, a = b.float().half().float(), a.half().float()
        if self.up is None:
            self._set_lowrank(b, a)
        else:
            self._set_lowrank(torch.cat([self.up, b], 1), torch.cat([self.down, a], 0))

    # -- layout ------------------------------------------------------------------------------
    def to_channels_first(self) -> "ExportLowRankLayer":
        """A Linear becomes a 1×1 conv over (B, C, 1, S); same values, so R keeps its key."""
        if self.kind != "linear":
            raise ValueError(f"{self.name}: only Linear layers have a channels-first form")
        self.channels_first = True
        return self

    def stored_bytes(self) -> int:
        """Bytes this layer takes in the bundle (codes + tables/scales + fp16 factors, smoothing, bias)."""
        fixed = sum(n for k, n in self.layer.tensor_bytes().items() if not k.startswith("lowrank"))
        return fixed + (0 if self.up is None else 2 * (self.up.numel() + self.down.numel()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_smooth is not None:
            shape = (1, -1, 1, 1) if (self.kind == "conv" or self.channels_first) else (-1,)
            x = x * self.inv_smooth.view(shape)
        if self.kind == "conv":
            y = F.conv2d(x, self.residual, None, **self.conv_args)
            if self.up is not None:
                o, i, kh, kw = self.weight_shape
                low = F.conv2d(x, self.down.view(-1, i, kh, kw), None, **self.conv_args)
                y = y + F.conv2d(low, self.up[:, :, None, None])
        elif self.channels_first:
            y = F.conv2d(x, self.residual[:, :, None, None])
            if self.up is not None:
                y = y + F.conv2d(F.conv2d(x, self.down[:, :, None, None]), self.up[:, :, None, None])
        else:
            y = F.linear(x, self.residual)
            if self.up is not None:
                y = y + F.linear(F.linear(x, self.down), self.up)
        if self.bias is not None:
            y = y + (self.bias.view(1, -1, 1, 1) if (self.kind == "conv" or self.channels_first) else self.bias)
        return y


def _conv_args(module: nn.Conv2d) -> dict:
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise BadInput(f"conv layers with padding mode {module.padding_mode!r}/{module.padding!r} are not supported")
    return dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups)


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def build_compressed_unet(folder) -> tuple[nn.Module, dict[str, ExportLowRankLayer]]:
    """A diffusers UNet (fp32) whose compressed layers are `ExportLowRankLayer`s; leftovers loaded in fp32."""
    from diffusers import UNet2DConditionModel

    from ..palettize.format import read_compressed

    cunet = read_compressed(folder)
    config = {k: v for k, v in cunet.unet_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    layers: dict[str, ExportLowRankLayer] = {}
    modules = dict(unet.named_modules())
    for name, layer in cunet.layers.items():
        module = modules.get(name)
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise BadInput(f"compressed layer {name} is not a Linear/Conv2d of this UNet config; the folder is inconsistent")
        if tuple(module.weight.shape) != tuple(layer.shape):
            raise BadInput(f"compressed layer {name} has shape {layer.shape}, the UNet expects {tuple(module.weight.shape)}")
        new = ExportLowRankLayer(layer, _conv_args(module) if isinstance(module, nn.Conv2d) else None)
        _set_module(unet, name, new)
        layers[name] = new
    # Everything else: fp16 leftovers, materialised from meta in fp32.
    leftover = {k: v.float() for k, v in cunet.leftover.items()}
    missing = [k for k, _ in unet.named_parameters() if k not in leftover and not _owned_by(k, layers)]
    if missing:
        raise BadInput(f"compressed folder lacks UNet weights, e.g. {missing[0]}; re-run `pocketsd compress`")
    unet.load_state_dict(_with_layer_params(unet, leftover, layers), strict=True, assign=True)
    for name, buf in list(unet.named_buffers()):
        if buf.is_meta:
            raise BadInput(f"UNet buffer {name} has no value in the compressed folder")
    return unet.eval(), layers


def _owned_by(key: str, layers: dict) -> bool:
    return any(key.startswith(n + ".") for n in layers)


def _with_layer_params(unet: nn.Module, leftover: dict, layers: dict) -> dict:
    sd = dict(leftover)
    for name, layer in layers.items():
        for pname, p in layer.named_parameters():
            sd[f"{name}.{pname}"] = p.data
    return sd


def apply_loras(unet: nn.Module, specs: list[tuple]) -> list[dict]:
    """Bake LoRAs into the export tree: compressed layers get a wider low-rank branch (R untouched),
    fp16 layers get ΔW added. File reading and fit checks are palettize.lora's (all key formats)."""
    from ..palettize.lora import check_fits, fuse_dense, load_loras

    modules = dict(unet.named_modules())
    shapes = {n: tuple(m.weight_shape) if isinstance(m, ExportLowRankLayer) else tuple(m.weight.shape)
              for n, m in modules.items() if isinstance(m, (ExportLowRankLayer, nn.Linear, nn.Conv2d))}
    loaded = load_loras(specs, getattr(unet, "config", None))
    for lora, _ in loaded:
        check_fits(lora, shapes)  # every LoRA checked before any is applied
    records = []
    for lora, scale in loaded:
        concat = dense = 0
        for name, layer in lora.layers.items():
            module = modules[name]
            if isinstance(module, ExportLowRankLayer):
                module.append_lowrank(*layer.factors(scale))
                concat += 1
            else:
                fuse_dense(module, layer, scale)
                dense += 1
        records.append({"path": str(lora.path), "scale": scale, "layers": len(lora.layers),
                        "lowrank_concat": concat, "dense_fused": dense})
    return records
