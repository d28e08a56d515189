"""Test support for the conversion tests: a compressed model folder made in seconds.

Not the project's compressor (palettize.compress calibrates for minutes): a plain round-to-nearest
quantizer that builds `palettize.layer.CompressedLayer`s and writes a valid compressed folder through
`artifacts.compressed`, mixing both quantizers, low-rank branches and smoothing, so the conversion's exactness
checks are exercised on every case.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pocketsd.artifacts.compressed import ComponentPayload, LayerRecord, write_compressed_model
from pocketsd.palettize.layer import CompressedLayer, compressed_state_dict, set_submodule


def _palette(w2d: torch.Tensor, group: int):
    out = w2d.shape[0]
    lut = torch.empty(out // group, 16)
    codes = torch.empty_like(w2d, dtype=torch.uint8)
    for g in range(out // group):
        rows = w2d[g * group:(g + 1) * group]
        table = torch.linspace(float(rows.min()), float(rows.max()), 16).half().float()
        lut[g] = table
        codes[g * group:(g + 1) * group] = (rows[..., None] - table).abs().argmin(-1).to(torch.uint8)
    return codes, lut.half()


def _int4(w: torch.Tensor, block: int):
    out, inp = w.shape[:2]
    blocks = w.reshape(out, inp // block, block, *w.shape[2:])
    scale = (blocks.abs().amax(dim=2) / 7).clamp_min(1e-4).half()  # (out, in/B[, kh, kw])
    codes = torch.round(blocks / scale.float().unsqueeze(2)).clamp(-7, 7).to(torch.int8).reshape(w.shape)
    return codes, scale


def compress_quickly(model_path: Path, out: Path, rank: int = 4, min_numel: int = 2048) -> Path:
    """Every UNet Linear/Conv2d with ≥ min_numel weights → 4 bits (alternating palette/int4) + rank-`rank` branch."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(model_path) / "unet", torch_dtype=torch.float32)
    records = []
    g = torch.Generator().manual_seed(0)
    candidates = [(n, m) for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
                  and m.weight.numel() >= min_numel]
    for i, (name, module) in enumerate(candidates):
        w = module.weight.detach().float()
        shape = tuple(w.shape)
        smooth = (torch.rand(shape[1], generator=g) + 0.5).half() if i % 3 == 0 else None
        ws = w * smooth.float().view(1, -1, *([1] * (w.ndim - 2))) if smooth is not None else w
        mat = ws.reshape(shape[0], -1)
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        up, down = (u[:, :rank] * s[:rank]).half(), vh[:rank].half()
        resid = (mat - up.float() @ down.float()).reshape(shape)
        use_palette = i % 2 == 0 and shape[0] % 16 == 0
        if use_palette:
            codes, lut = _palette(resid.reshape(shape[0], -1), 16)
            quant = dict(quantizer="palette", group_size=16)
            tensors = dict(lut=lut)
            codes = codes.reshape(shape)
        elif shape[1] % 32 == 0:
            codes, scales = _int4(resid, 32)
            quant = dict(quantizer="int4", block_size=32)
            tensors = dict(scales=scales)
        else:
            continue
        record = LayerRecord(name, "linear" if w.ndim == 2 else "conv", shape, bits=4, rank=rank,
                             alpha=0.5 if smooth is not None else 0.0, smoothed=smooth is not None,
                             has_bias=module.bias is not None, **quant)
        layer = CompressedLayer.from_parts(record, module, codes, lowrank_up=up, lowrank_down=down, smooth=smooth,
                                           bias=module.bias, **tensors)
        set_submodule(unet, name, layer)
        records.append(record)
    payload = ComponentPayload(compressed_state_dict(unet), dict(unet.config), records,
                               recipe={"name": "test-rtn", "fp16_layers_rule": f"numel < {min_numel}"})
    write_compressed_model(Path(out), Path(model_path), {"unet": payload}, source={"path": str(model_path)})
    return Path(out)


def tiny_unet_pipeline(model_path: Path, out: Path) -> Path:
    """The model's folder with its UNet swapped for a two-level, one-layer UNet of the same interface.

    Used where a test needs a UNet *conversion* but not the reference UNet's size (multifunction, original
    attention): it converts in a few seconds.
    """
    import shutil

    from diffusers import UNet2DConditionModel

    out = Path(out)
    shutil.copytree(model_path, out, ignore=shutil.ignore_patterns("unet"))
    cfg = UNet2DConditionModel.load_config(Path(model_path) / "unet")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg.update(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
               block_out_channels=(32, 64), layers_per_block=1, transformer_layers_per_block=1, attention_head_dim=(2, 2))
    torch.manual_seed(0)
    UNet2DConditionModel(**cfg).save_pretrained(out / "unet")
    return out


def compressed_unet_layers(folder: Path, mode: str = "packed") -> dict:
    """name → CompressedLayer of a compressed folder's UNet (its stored tensors, read back through the format)."""
    from pocketsd.artifacts.compressed import read_compressed_model
    from pocketsd.models.components import load_compressed_component
    from pocketsd.palettize.layer import compressed_layers

    return compressed_layers(load_compressed_component(read_compressed_model(folder), "unet", mode))


def compressed_unet(folder: Path, mode: str = "dense"):
    """A compressed folder's UNet as a diffusers module (its compressed layers in `mode`)."""
    from pocketsd.artifacts.compressed import read_compressed_model
    from pocketsd.models.components import load_compressed_component

    return load_compressed_component(read_compressed_model(folder), "unet", mode)


def compress_text_encoders(model_path: Path, out: Path, recipe: str = "w4r0") -> Path:
    """`model_path` (a compressed or plain folder) with both text encoders compressed by the project's compressor
    (fixed recipe, no calibration: weight-space error) — seconds on the reference model's encoders."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from pocketsd.artifacts.compressed import is_compressed, read_compressed_model
    from pocketsd.palettize.compress import compress_network
    from pocketsd.palettize.layer import compressed_layers
    from pocketsd.palettize.recipes import make_recipe

    payloads = {}
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        encoder = cls.from_pretrained(Path(model_path) / name, dtype=torch.float32).eval()
        report = compress_network(encoder, make_recipe(recipe))
        payloads[name] = ComponentPayload(compressed_state_dict(encoder), encoder.config.to_dict(),
                                          [l.record() for l in compressed_layers(encoder).values()],
                                          report.fp16_layers, "transformers", cls.__name__, report.recipe)
    keep = {}
    if is_compressed(Path(model_path)):
        keep = {n: c.to_dict() for n, c in read_compressed_model(Path(model_path)).components.items()}
    write_compressed_model(Path(out), Path(model_path), payloads, source={"path": str(model_path)}, keep=keep)
    return Path(out)
