"""The compressed model folder: its layout on disk and the read API other stages code against.

Folder layout
-------------
    <folder>/
      pocketsd.json               manifest, "kind": "compressed" (below)
      model_index.json, scheduler/, tokenizer/, tokenizer_2/, text_encoder/, text_encoder_2/, vae/
                                  copied unchanged from the source diffusers model
      unet/config.json            the source UNet's diffusers config, unchanged
      unet/pocketsd_unet.safetensors
                                  the compressed UNet (deliberately not named diffusion_pytorch_model.*
                                  so diffusers never mistakes it for a dense checkpoint)

Tensors in unet/pocketsd_unet.safetensors, for every compressed Linear/Conv2d module named N (its
diffusers module path, e.g. "down_blocks.1.attentions.0.proj_in"); shapes use the weight shape
(out, in) for Linear or (out, in, kh, kw) for Conv2d, and k = kh·kw (k = 1 for Linear):

    N.codes         uint8 [packed]  the residual's b-bit codes over the weight shape, row-major, packed by
                                    `packing.pack_codes` (LSB-first bit stream; for 4 bits element 2i is the
                                    low nibble of byte i). Palette codes are unsigned indices in [0, 2^b);
                                    int codes are signed in [-(2^(b-1)-1), 2^(b-1)-1], stored two's complement.
    N.lut           fp16 (out/G, 2^b)            palette only: one table per group of G consecutive output channels
    N.scales        fp16 (out, in/B) | (out, in/B, kh, kw)
                                                 int only: one scale per block of B consecutive input channels
                                                 (for convs: per block of input channels at each kernel tap)
    N.lowrank_up    fp16 (out, r)                L1 (absent when r = 0)
    N.lowrank_down  fp16 (r, in·k)               L2, columns in the order of weight.reshape(out, -1)
    N.smooth        fp16 (in,)                   s (absent when alpha = 0, i.e. s ≡ 1)
    N.bias          fp16 (out,)                  the layer's bias (absent if it has none)

Every other UNet parameter (embeddings, norms, layers kept fp16 — the recipe lists which) is stored under
its own diffusers state-dict key in fp16.

Semantics (exact; the Core ML conversion must reproduce them bit for bit)
-----------------------------------------------------------------------
Let s̃ be s repeated over the k kernel taps (s̃[i·k + t] = s[i]). The layer computes

    Ws  := R + (L1 @ L2).reshape(weight shape)          "smoothed weight" ≈ W·diag(s̃)
    y    = op(x / s, Ws) + b          ≡  op(x, Ws / s̃) + b        (op = linear or conv2d with the module's
                                                                    stride/padding/dilation)

and R, the quantized residual, is `dequantize_residual(layer)` — an fp16 tensor of the weight shape:

    palette (Core ML iOS18 `constexpr_lut_to_dense`):
        R[o, ...] = lut[o // G, codes[o, ...]]
        → indices = codes as uint{b} with the weight's shape; lut reshaped to (out/G, 1, 2^b, 1) for a Linear
          or (out/G, 1, 1, 1, 2^b, 1) for a Conv2d (VECTOR_SIZE 1, no vector_axis).
    int (Core ML iOS18 `constexpr_blockwise_shift_scale`, no offset, i.e. offset 0):
        R[o, i, ...] = fp16(scales[o, i // B, ...] · codes[o, i, ...])
        → data = codes as int{b} (b ∈ {4, 8}) with the weight's shape; scale = N.scales as stored (its shape
          already has the weight's rank, block sizes (1, B[, 1, 1])). The product of an fp16 scale and a small
          integer is computed exactly and rounded once to fp16, as numpy/Core ML do.

The quantizer field is "palette" or "int4"; "int4" names the symmetric block-wise integer family and the
layer's `bits` (4 or 8) says which integer type it uses. Palette allows bits 4, 6, 8.

LoRA merge (palettize/lora.py) appends to the low-rank branch without touching codes/lut/scales: since the
branch acts on x/s, a LoRA (B: out×r', A: r'×in·k) enters as L1 ← [L1, scale·B], L2 ← [L2; A·diag(s̃)].

Manifest (pocketsd.json)
------------------------
    kind "compressed", format_version, pocketsd_version, versions {torch, diffusers, safetensors, python},
    created_utc, source_model {spec, path}, recipe {...; "fp16_layers_rule": text}, calibration {...},
    unet {weights, config}, layers [ {name, kind, shape, quantizer, bits, group_size, block_size, rank,
    alpha, smoothed, has_bias, snr_db} ...], fp16_layers [names], accounting {see `accounting`}.
"""

from __future__ import annotations

import math
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..artifacts import atomic_dir, folder_bytes, read_json, write_json
from ..errors import BadInput
from .packing import pack_codes, packed_nbytes, unpack_codes

FORMAT_VERSION = 1
MANIFEST = "pocketsd.json"
UNET_WEIGHTS = "unet/pocketsd_unet.safetensors"
UNET_CONFIG = "unet/config.json"
PALETTE, INT = "palette", "int4"
# Components copied unchanged from the source diffusers folder.
COPIED = ("model_index.json", "scheduler", "tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae")


@dataclass
class CompressedLayer:
    """One compressed Linear/Conv2d. Tensors are on CPU; codes are unpacked (one element per weight)."""

    name: str
    kind: str  # "linear" | "conv"
    shape: tuple[int, ...]  # weight shape: (out, in) or (out, in, kh, kw)
    quantizer: str  # "palette" | "int4"
    bits: int
    codes: torch.Tensor  # weight shape; uint8 indices (palette) or int8 signed values (int4)
    group_size: int | None = None  # palette: output channels per LUT
    block_size: int | None = None  # int4: input channels per scale
    lut: torch.Tensor | None = None  # fp16 (out/G, 2^bits)
    scales: torch.Tensor | None = None  # fp16 (out, in/B[, kh, kw])
    lowrank_up: torch.Tensor | None = None  # L1 fp16 (out, r)
    lowrank_down: torch.Tensor | None = None  # L2 fp16 (r, in·k)
    smooth: torch.Tensor | None = None  # s fp16 (in,)
    bias: torch.Tensor | None = None  # fp16 (out,)
    alpha: float = 0.0
    snr_db: float | None = None  # measured output SNR on calibration inputs

    @property
    def rank(self) -> int:
        return 0 if self.lowrank_up is None else int(self.lowrank_up.shape[1])

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def tensor_bytes(self) -> dict[str, int]:
        """Bytes each stored tensor of this layer takes in the safetensors payload."""
        out = {"codes": packed_nbytes(self.numel, self.bits)}
        for key in ("lut", "scales", "lowrank_up", "lowrank_down", "smooth", "bias"):
            t = getattr(self, key)
            if t is not None:
                out[key] = t.numel() * 2
        return out

    def record(self) -> dict:
        """The layer's row in the manifest's per-layer table."""
        return {
            "name": self.name, "kind": self.kind, "shape": list(self.shape), "quantizer": self.quantizer,
            "bits": self.bits, "group_size": self.group_size, "block_size": self.block_size, "rank": self.rank,
            "alpha": self.alpha, "smoothed": self.smooth is not None, "has_bias": self.bias is not None,
            "snr_db": None if self.snr_db is None else round(float(self.snr_db), 3),
            "bytes": sum(self.tensor_bytes().values()),
        }


@dataclass
class CompressedUNet:
    layers: dict[str, CompressedLayer]
    leftover: dict[str, torch.Tensor]  # every other UNet parameter, fp16, by diffusers state-dict key
    unet_config: dict
    recipe: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    fp16_layers: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)  # as read from disk (empty for a fresh compression)

    def accounting(self, container_bytes: int | None = None) -> dict:
        return accounting(self, container_bytes)


def dequantize_residual(layer: CompressedLayer) -> torch.Tensor:
    """The exact fp16 weight R the quantized part represents (weight shape); see the module docstring."""
    if layer.quantizer == PALETTE:
        out = layer.shape[0]
        group_of_row = torch.arange(out) // layer.group_size
        lut_rows = layer.lut[group_of_row]  # (out, 2^b)
        codes = layer.codes.reshape(out, -1).long()
        return torch.gather(lut_rows, 1, codes).reshape(layer.shape)
    if layer.quantizer == INT:
        scales = layer.scales.float().repeat_interleave(layer.block_size, dim=1)
        return (scales * layer.codes.float()).to(torch.float16)
    raise ValueError(f"unknown quantizer {layer.quantizer!r} in layer {layer.name}")


def smoothed_weight(layer: CompressedLayer, dtype=torch.float32) -> torch.Tensor:
    """Ws = R + L1·L2 in the weight shape (the weight applied to x/s)."""
    w = dequantize_residual(layer).to(dtype)
    if layer.rank:
        w = w + (layer.lowrank_up.to(dtype) @ layer.lowrank_down.to(dtype)).reshape(layer.shape)
    return w


def effective_weight(layer: CompressedLayer, dtype=torch.float32) -> torch.Tensor:
    """The dense weight the layer applies to x: Ws / s̃ (what dense mode loads)."""
    w = smoothed_weight(layer, torch.float32)
    if layer.smooth is not None:
        s = layer.smooth.float().view(1, -1, *([1] * (len(layer.shape) - 2)))
        w = w / s
    return w.to(dtype)


# ---- accounting --------------------------------------------------------------------------------
def accounting(cunet: CompressedUNet, container_bytes: int | None = None) -> dict:
    """Bytes by category and effective bits per UNet parameter.

    `payload_bytes` counts every stored tensor (codes, tables, scales, low-rank factors, smoothing, biases,
    fp16 leftovers); `container_bytes` is the safetensors header (measured after writing; estimated before),
    and `total_bytes` = both = the size of unet/pocketsd_unet.safetensors. Bits per parameter divide
    8·total_bytes by the source UNet's parameter count.
    """
    cat = {"codes": 0, "lut": 0, "scales": 0, "lowrank": 0, "smooth": 0, "bias": 0}
    for layer in cunet.layers.values():
        for key, n in layer.tensor_bytes().items():
            cat["lowrank" if key.startswith("lowrank") else key] += n
    cat["fp16_leftover"] = sum(t.numel() * 2 for t in cunet.leftover.values())
    params = sum(l.numel + (l.out_features if l.bias is not None else 0) for l in cunet.layers.values())
    params += sum(t.numel() for t in cunet.leftover.values())
    payload = sum(cat.values())
    if container_bytes is None:  # safetensors header: ~90 bytes of JSON per tensor, padded to 8
        n_tensors = sum(len(l.tensor_bytes()) for l in cunet.layers.values()) + len(cunet.leftover)
        container_bytes = 8 + 90 * n_tensors
    total = payload + container_bytes
    return {
        "unet_params": params, "bytes_by_category": cat, "payload_bytes": payload,
        "container_bytes": container_bytes, "total_bytes": total, "fp16_bytes": 2 * params,
        "bits_per_param": 8 * total / params, "payload_bits_per_param": 8 * payload / params,
        "compression_vs_fp16": 2 * params / total,
    }


# ---- writing -----------------------------------------------------------------------------------
def _state_dict(cunet: CompressedUNet) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for name, layer in cunet.layers.items():
        sd[f"{name}.codes"] = pack_codes(layer.codes, layer.bits)
        for key in ("lut", "scales", "lowrank_up", "lowrank_down", "smooth", "bias"):
            t = getattr(layer, key)
            if t is not None:
                sd[f"{name}.{key}"] = t.to(torch.float16).contiguous()
    for key, t in cunet.leftover.items():
        sd[key] = t.to(torch.float16).contiguous()
    return sd


def _versions() -> dict:
    import diffusers
    import safetensors

    from .. import __version__

    return {"pocketsd": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def write_unet(cunet: CompressedUNet, folder: Path, source: dict | None = None, extra: dict | None = None) -> dict:
    """Write unet/config.json, unet/pocketsd_unet.safetensors and pocketsd.json into an existing folder.

    Used by `save_compressed` and by tools that rewrite a compressed folder (LoRA merge). Returns the manifest.
    """
    folder = Path(folder)
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    write_json(folder / UNET_CONFIG, cunet.unet_config)
    weights = folder / UNET_WEIGHTS
    save_file(_state_dict(cunet), str(weights), metadata={"format": "pocketsd-compressed-unet",
                                                          "format_version": str(FORMAT_VERSION)})
    weights.chmod(0o644)
    acc = accounting(cunet, container_bytes=None)
    acc = accounting(cunet, container_bytes=weights.stat().st_size - acc["payload_bytes"])
    acc["unet_file_bytes"] = weights.stat().st_size
    manifest = dict(cunet.manifest)
    manifest.update({
        "kind": "compressed", "format_version": FORMAT_VERSION, "versions": _versions(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": cunet.recipe, "calibration": cunet.calibration,
        "unet": {"weights": UNET_WEIGHTS, "config": UNET_CONFIG},
        "layers": [layer.record() for layer in cunet.layers.values()],
        "fp16_layers": list(cunet.fp16_layers), "accounting": acc,
    })
    manifest["pocketsd_version"] = manifest["versions"]["pocketsd"]
    if source is not None:
        manifest["source_model"] = source
    manifest.update(extra or {})
    write_json(folder / MANIFEST, manifest)
    cunet.manifest = manifest
    return manifest


def copy_components(source_folder: Path, folder: Path) -> None:
    """Copy the components compression does not change (text encoders, VAE, tokenizers, scheduler)."""
    source_folder = Path(source_folder)
    for name in COPIED:
        src = source_folder / name
        if src.is_dir():
            shutil.copytree(src, Path(folder) / name)
        elif src.is_file():
            shutil.copy2(src, Path(folder) / name)


def save_compressed(cunet: CompressedUNet, source_folder: Path, out: Path, source: dict | None = None,
                    extra: dict | None = None) -> dict:
    """Write a complete compressed model folder at `out` atomically (replacing it). Returns the manifest."""
    with atomic_dir(Path(out)) as tmp:
        copy_components(source_folder, tmp)
        manifest = write_unet(cunet, tmp, source or {"path": str(source_folder)}, extra)
    return manifest


# ---- reading -----------------------------------------------------------------------------------
def read_compressed(folder: Path) -> CompressedUNet:
    """Read a compressed folder's UNet: per-layer records (codes unpacked) and the fp16 leftovers."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BadInput(f"{folder} is not a compressed model folder (no {MANIFEST}); create one with `pocketsd compress`")
    manifest = read_json(manifest_path)
    if manifest.get("kind") != "compressed":
        raise BadInput(f"{folder} is a {manifest.get('kind')!r} folder, not a compressed model")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise BadInput(f"{folder} was written by a newer pocketsd (format {manifest['format_version']}); upgrade pocketsd")
    weights = folder / manifest.get("unet", {}).get("weights", UNET_WEIGHTS)
    if not weights.is_file():
        raise BadInput(f"{folder} has no {UNET_WEIGHTS}; the compressed folder is incomplete, re-run `pocketsd compress`")
    sd = load_file(str(weights))
    layers: dict[str, CompressedLayer] = {}
    for rec in manifest["layers"]:
        name, shape, bits = rec["name"], tuple(rec["shape"]), int(rec["bits"])
        signed = rec["quantizer"] == INT
        codes = unpack_codes(sd.pop(f"{name}.codes"), bits, math.prod(shape), signed=signed).reshape(shape)
        get = lambda key: sd.pop(f"{name}.{key}", None)  # noqa: E731
        layers[name] = CompressedLayer(
            name=name, kind=rec["kind"], shape=shape, quantizer=rec["quantizer"], bits=bits, codes=codes,
            group_size=rec.get("group_size"), block_size=rec.get("block_size"), lut=get("lut"),
            scales=get("scales"), lowrank_up=get("lowrank_up"), lowrank_down=get("lowrank_down"),
            smooth=get("smooth"), bias=get("bias"), alpha=float(rec.get("alpha", 0.0)), snr_db=rec.get("snr_db"))
    return CompressedUNet(layers=layers, leftover=sd, unet_config=read_json(folder / UNET_CONFIG),
                          recipe=manifest.get("recipe", {}), calibration=manifest.get("calibration", {}),
                          fp16_layers=manifest.get("fp16_layers", []), manifest=manifest)


def unet_bytes_on_disk(folder: Path) -> int:
    return folder_bytes(Path(folder) / UNET_WEIGHTS)
