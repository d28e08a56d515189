"""LoRA files: read them in any common key format, check them against a UNet, and apply them.

A LoRA adds ΔW = scale · (alpha / r) · B·A to a layer's weight. On a compressed layer
(W·diag(s) ≈ L1·L2 + Q4(…), the branch sees x/s) the same update is exact as a wider low-rank branch:

    L1 ← [L1, scale·(alpha/r)·B]      L2 ← [L2; A·diag(s)]

so the 4-bit residual is never touched. Conv LoRAs are matrices over (in·k·k), like the compressed convs.
Layers the compressed model kept in fp16, and every layer of a plain diffusers UNet, get ΔW added densely.
The rule itself is `CompressedLayer.append_lowrank`; `apply_loras` is the one place that applies LoRAs.

Key formats: diffusers/PEFT (`unet.<module>.lora_A.weight`), the older diffusers ones (`.lora.down`,
`attn1.processor.to_q_lora.down`), bare PEFT (`base_model.model.<module>…`) and kohya's (`lora_unet_…`, also with
SGM `input_blocks` names). diffusers' own `lora_state_dict` converts kohya to diffusers keys and
`convert_unet_state_dict_to_peft` normalises the rest, so here we only group, check and apply.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Mapping, Sequence

import torch

from ..errors import BadInput
from .layer import CompressedLayer

_SHOW = 3  # how many mismatches a BadInput lists


@dataclass
class LoraLayer:
    """One layer's LoRA: down (A) is (r, in) or (r, in, kh, kw); up (B) is (out, r) or (out, r, 1, 1)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def factors(self, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(B', A') as float32 matrices with B'·A' = ΔW flattened to (out, in·k·k); the scaling sits in B'."""
        gain = scale * ((self.alpha / self.rank) if self.alpha is not None else 1.0)
        return gain * self.up.float().flatten(1), self.down.float().flatten(1)

    def delta(self, weight_shape: Sequence[int], scale: float = 1.0) -> torch.Tensor:
        b, a = self.factors(scale)
        return (b @ a).reshape(tuple(weight_shape))


@dataclass
class Lora:
    path: Path
    layers: dict[str, LoraLayer]  # UNet module name → factors


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """`FILE[:SCALE]` → (path, scale); the scale defaults to 1."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tail):
        path, scale = head, float(tail)
    return Path(path).expanduser(), scale


def _config_view(unet_config) -> object | None:
    """diffusers' SGM remapping reads `config.layers_per_block` as an attribute."""
    if unet_config is None:
        return None
    return unet_config if hasattr(unet_config, "layers_per_block") else SimpleNamespace(**dict(unet_config))


def _metadata_alphas(metadata: Mapping[str, str] | None) -> tuple[float | None, dict[str, float]]:
    """PEFT's adapter config as diffusers stores it in the safetensors header (lora_alpha, alpha_pattern)."""
    if not metadata:
        return None, {}
    raw = metadata.get("lora_adapter_metadata") or metadata.get("unet.lora_adapter_metadata")
    if not raw:
        return None, {}
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError:
        return None, {}
    if not isinstance(cfg, dict):
        return None, {}
    # diffusers writes the UNet's config either nested under "unet" or flattened as "unet.<field>".
    cfg = cfg.get("unet") if isinstance(cfg.get("unet"), dict) else {k.removeprefix("unet."): v for k, v in cfg.items()}
    alpha = cfg.get("lora_alpha")
    return (float(alpha) if alpha is not None else None), {k: float(v) for k, v in (cfg.get("alpha_pattern") or {}).items()}


def _normalise_keys(state_dict: dict, network_alphas: dict | None) -> tuple[dict, dict[str, float]]:
    """Any diffusers-side key format → {'<module>.lora_A.weight': t, …} and {module: alpha}."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    foreign = [k for k in state_dict if k.startswith(("text_encoder", "te_", "te1_", "te2_", "lora_te"))]
    if foreign:
        raise BadInput(f"LoRA has text-encoder layers (e.g. {foreign[0]}); only UNet LoRAs are supported")
    stripped = {}
    for key, value in state_dict.items():
        for prefix in ("unet.", "base_model.model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        stripped[key] = value
    peft = convert_unet_state_dict_to_peft(stripped)
    alphas: dict[str, float] = {}
    for key, value in (network_alphas or {}).items():
        key = key.removeprefix("unet.").removesuffix(".alpha")
        norm = next(iter(convert_unet_state_dict_to_peft({key: 0})))
        module = re.sub(r"\.lora_[AB](\.weight)?$", "", norm)
        alphas[module] = float(value)
    # Plain `<module>.alpha` entries (kohya files that skipped conversion, PEFT exports).
    for key in [k for k in peft if k.endswith(".alpha")]:
        alphas[key[: -len(".alpha")]] = float(peft.pop(key))
    return peft, alphas


def read_lora(path: Path | str, unet_config=None) -> Lora:
    """Read a LoRA .safetensors file (any supported key format) into per-module factors."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"LoRA file {path} does not exist")
    if path.suffix != ".safetensors":
        raise BadInput(f"LoRA {path.name}: only .safetensors LoRA files are read (pickled weights can run code)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
            raw = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise BadInput(f"LoRA {path.name} is not a readable safetensors file ({exc})") from None
    if not raw:
        raise BadInput(f"LoRA {path.name} holds no tensors")
    raw = {k: v for k, v in raw.items() if "dora_scale" not in k}
    try:
        state_dict, network_alphas = StableDiffusionXLPipeline.lora_state_dict(raw, unet_config=_config_view(unet_config))
    except (ValueError, KeyError, IndexError) as exc:
        raise BadInput(f"LoRA {path.name}: key format not recognised ({exc})") from None
    peft, alphas = _normalise_keys(dict(state_dict), network_alphas)
    default_alpha, pattern = _metadata_alphas(metadata)

    downs, ups, odd = {}, {}, []
    for key, value in peft.items():
        m = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key)
        if not m:
            odd.append(key)
            continue
        (downs if m.group(2) == "A" else ups)[m.group(1)] = value
    unpaired = sorted(set(downs) ^ set(ups))
    if odd or unpaired:
        listed = ", ".join((odd + [f"{u} (lora_A/lora_B pair incomplete)" for u in unpaired])[:_SHOW])
        raise BadInput(f"LoRA {path.name}: unrecognised keys: {listed}")
    layers = {}
    for module in sorted(downs):
        alpha = alphas.get(module)
        if alpha is None:
            alpha = next((v for k, v in pattern.items() if module == k or module.endswith("." + k)), default_alpha)
        layers[module] = LoraLayer(downs[module], ups[module], alpha)
    return Lora(path, layers)


def mismatches(lora: Lora, weight_shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """Why `lora` does not fit a UNet whose Linear/Conv2d weights have `weight_shapes`; empty when it fits."""
    problems = []
    for module, layer in lora.layers.items():
        shape = weight_shapes.get(module)
        if shape is None:
            problems.append(f"{module}: no such layer")
            continue
        out, inp, *kernel = shape
        d, u = layer.down, layer.up
        if u.shape[0] != out or u.shape[1] != d.shape[0]:
            problems.append(f"{module}: up {tuple(u.shape)} vs layer out {out}, rank {d.shape[0]}")
        elif d.shape[1] != inp or list(d.shape[2:]) != list(kernel) or (u.ndim > 2 and any(x != 1 for x in u.shape[2:])):
            problems.append(f"{module}: down {tuple(d.shape)} vs weight {tuple(shape)}")
    return problems


def check_fits(lora: Lora, weight_shapes: Mapping[str, Sequence[int]]) -> None:
    problems = mismatches(lora, weight_shapes)
    if problems:
        more = f" (+{len(problems) - _SHOW} more)" if len(problems) > _SHOW else ""
        raise BadInput(f"LoRA {lora.path.name} does not fit this UNet: {'; '.join(problems[:_SHOW])}{more}")


def weight_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Weight shapes of every Linear/Conv2d of a model, compressed layers included (what a LoRA may target)."""
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, CompressedLayer):
            shapes[name] = tuple(module.shape)
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            shapes[name] = tuple(module.weight.shape)
    return shapes


def load_loras(specs: Iterable[tuple[Path | str, float]], unet_config=None) -> list[tuple[Lora, float]]:
    return [(read_lora(p, unet_config), float(s)) for p, s in specs]


@torch.no_grad()
def apply_loras(model: torch.nn.Module, loaded: Sequence[tuple[Lora, float]]) -> list[dict]:
    """Apply read LoRAs in place, to any model: a compressed layer widens its low-rank branch
    (`CompressedLayer.append_lowrank`, the 4-bit residual untouched); a plain Linear/Conv2d (a layer kept in
    fp16, or any layer of an uncompressed model) gets ΔW added to its weight.

    Every LoRA is checked before any is applied, so a bad one leaves the model untouched. Returns one record
    per LoRA (for the generation report and the compressed folder's manifest).
    """
    shapes = weight_shapes(model)
    for lora, _ in loaded:
        check_fits(lora, shapes)
    modules = dict(model.named_modules())
    records = []
    for lora, scale in loaded:
        concat = dense = 0
        for name, layer in lora.layers.items():
            module = modules[name]
            up, down = layer.factors(scale)
            if isinstance(module, CompressedLayer):
                module.append_lowrank(up, down)
                concat += 1
            else:
                w = module.weight
                w.add_((up @ down).reshape(w.shape).to(w.dtype))
                dense += 1
        records.append({"path": str(lora.path), "file": lora.path.name, "scale": scale, "layers": len(lora.layers),
                        "rank": max((l.rank for l in lora.layers.values()), default=0),
                        "lowrank_concat": concat, "dense_fused": dense})
    return records


def apply_lora_files(model: torch.nn.Module, specs: Iterable[tuple[Path | str, float]]) -> list[dict]:
    """Read LoRA files (`FILE`, scale pairs) against `model`'s config and apply them (`apply_loras`)."""
    return apply_loras(model, load_loras(specs, getattr(model, "config", None)))
