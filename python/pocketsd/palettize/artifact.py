"""Loading a compressed model folder back into a diffusers UNet, and describing it for `pocketsd info`."""

from __future__ import annotations

from pathlib import Path

import torch

from .format import (CompressedUNet, read_compressed, read_json, unet_bytes_on_disk,  # noqa: F401
                     MANIFEST, UNET_WEIGHTS)
from .layers import make_module


def _set_submodule(root: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def build_unet(cunet: CompressedUNet, mode: str = "dense", dtype: torch.dtype = torch.float32,
               int4_kernel: bool = False):
    """A `UNet2DConditionModel` whose compressed layers are LowRankQuant modules (no dense fp32 copy is made
    of the original weights: the skeleton is built on the meta device and filled from the file)."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in cunet.unet_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    for name, layer in cunet.layers.items():
        _set_submodule(unet, name, make_module(layer, unet.get_submodule(name), mode, dtype, int4_kernel))
    leftover = {k: v.to(dtype) for k, v in cunet.leftover.items()}
    missing, unexpected = unet.load_state_dict(leftover, strict=False, assign=True)
    unexpected = [k for k in unexpected]
    still_meta = [n for n, t in list(unet.named_parameters()) + list(unet.named_buffers()) if t.is_meta]
    if unexpected or still_meta:
        raise ValueError(f"compressed UNet does not fit its config: unexpected {unexpected[:5]}, missing {still_meta[:5]}")
    return unet.eval().requires_grad_(False)


def load_compressed_unet(folder: Path, mode: str = "dense", dtype: torch.dtype = torch.float32,
                         int4_kernel: bool = False):
    """Load the compressed UNet of `folder` as a diffusers `UNet2DConditionModel`.

    mode "dense": weights dequantized once (fast forward); "packed": codes stay packed and are dequantized
    per forward (small memory). int4_kernel: in packed mode, run 4-bit int Linear layers through torch's
    int4 CPU kernel (bf16 activations; see layers._Int4Kernel).
    """
    return build_unet(read_compressed(Path(folder)), mode, dtype, int4_kernel)


def describe(path: Path) -> str:
    """Human-readable summary of a compressed folder: recipe, per-layer table, size accounting."""
    path = Path(path)
    manifest = read_json(path / MANIFEST)
    acc = manifest["accounting"]
    recipe = manifest.get("recipe", {})
    lines = [
        f"{path}: compressed model (format {manifest.get('format_version')}, pocketsd {manifest.get('pocketsd_version')})",
        f"source model: {manifest.get('source_model', {}).get('path')}",
        f"recipe: {recipe.get('name')}  quantizer={recipe.get('quantizer')}  "
        f"group={recipe.get('group_size')}  block={recipe.get('block_size')}  budget={recipe.get('bits_budget')}",
        f"kept fp16: {recipe.get('fp16_layers_rule', '')}",
        "",
        f"{'layer':<64} {'shape':>16} {'quant':>8} {'bits':>4} {'grp/blk':>7} {'rank':>4} {'alpha':>5} {'SNR dB':>7}",
    ]
    for rec in manifest["layers"]:
        gb = rec["group_size"] if rec["quantizer"] == "palette" else rec["block_size"]
        snr = "" if rec.get("snr_db") is None else f"{rec['snr_db']:.1f}"
        lines.append(f"{rec['name'][-64:]:<64} {'x'.join(map(str, rec['shape'])):>16} {rec['quantizer']:>8} "
                     f"{rec['bits']:>4} {gb:>7} {rec['rank']:>4} {rec['alpha']:>5.2f} {snr:>7}")
    if manifest.get("fp16_layers"):
        lines.append(f"fp16 layers ({len(manifest['fp16_layers'])}): " + ", ".join(manifest["fp16_layers"]))
    cat = acc["bytes_by_category"]
    lines += ["", "size accounting (bytes):"]
    lines += [f"  {k:<14} {v:>14,}" for k, v in cat.items()]
    lines += [
        f"  {'container':<14} {acc['container_bytes']:>14,}",
        f"  {'total':<14} {acc['total_bytes']:>14,}   on disk: {unet_bytes_on_disk(path):,}",
        f"UNet parameters: {acc['unet_params']:,}   fp16 size: {acc['fp16_bytes']:,} bytes",
        f"effective bits per parameter: {acc['bits_per_param']:.3f}   ({acc['compression_vs_fp16']:.2f}x smaller than fp16)",
    ]
    return "\n".join(lines)
