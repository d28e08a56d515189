"""LoRA files: read them in any common key format, check them against a UNet, and apply them.

A LoRA adds ΔW = scale · (alpha / r) · B·A to a layer's weight. On a compressed layer
(W·diag(s) ≈ L1·L2 + Q4(…), the branch sees x/s) the same update is exact as a wider low-rank branch:

    L1 ← [L1, scale·(alpha/r)·B]      L2 ← [L2; A·diag(s)]

so the 4-bit residual is never touched. Conv LoRAs are matrices over (in·k·k), like the compressed convs.
Layers the compressed model kept in fp16, and every layer of a plain diffusers UNet, get ΔW added densely.
The rule itself is `CompressedLayer.append_lowrank`; `apply_loras` is the one place that applies LoRAs.

Key formats: diffusers/PEFT (`unet.<module>.lora_A.weight`, `text_encoder.…`, `text_encoder_2.…`), the older
diffusers ones (`.lora.down`, `attn1.processor.to_q_lora.down`, `lora_linear_layer`), bare PEFT
(`base_model.model.<module>…`) and kohya's (`lora_unet_…`, also with SGM `input_blocks` names, `lora_te1_…`,
`lora_te2_…`). A LoRA's text-encoder layers are applied to the text encoders the same way (`component=`). diffusers' own `lora_state_dict` converts kohya to diffusers keys and
`convert_unet_state_dict_to_peft` normalises the rest, so here we only group, check and apply.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Mapping, Sequence

import torch

from ..errors import BadInput
from ..models.family import FAMILIES
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


# diffusers' prefixes of the text encoders' keys (kohya's lora_te1_/lora_te2_ already turned into them) → the
# pipeline component they belong to, from every family's encoders; the longest first, so `text_encoder_2.` is never
# read as `text_encoder.`
_TE_PREFIXES = tuple((f"{c}.", c) for c in sorted({t.component for f in FAMILIES.values() for t in f.text_encoders},
                                                  key=len, reverse=True))
# CLIP's attention projections, which older LoRA formats name like the UNet's (to_q, to_out, …)
_CLIP_ATTENTION = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj", "to_out.0": "out_proj"}


@dataclass
class Lora:
    path: Path
    components: dict[str, dict[str, LoraLayer]]  # pipeline component → module name → factors

    @property
    def layers(self) -> dict[str, LoraLayer]:
        """The UNet's layers (most LoRAs are UNet-only)."""
        return self.components.get("unet", {})


MAX_LORA_SCALE = 100.0  # |scale| above this only overflows fp16 activations (a LoRA is trained near 1)


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """`FILE[:SCALE]` → (path, scale); the scale defaults to 1. `FILE:abc` with an existing FILE is a bad scale,
    said as such (not "file not found")."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return Path(head).expanduser(), float(tail)  # nan/inf parse here and are refused by check_lora_scale
        except ValueError:
            if Path(head).expanduser().is_file() and not Path(text).expanduser().exists():
                raise BadInput(f"--lora {text}: scale {tail!r} is not a number (FILE:SCALE, e.g. {head}:0.8)") from None
    return Path(text).expanduser(), 1.0


def check_lora_scale(path: Path | str, scale: float) -> None:
    """A LoRA scale is a finite number within ±MAX_LORA_SCALE (1e30 turns every pixel black)."""
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or abs(scale) > MAX_LORA_SCALE:
        raise BadInput(f"--lora {Path(path).name}: scale {scale} must be a finite number in "
                       f"[-{MAX_LORA_SCALE:g}, {MAX_LORA_SCALE:g}] (1 is the trained strength)")


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


def _component_of(key: str) -> tuple[str, str]:
    """(pipeline component, key without its component prefix) of a normalised diffusers-side LoRA key."""
    for prefix, component in _TE_PREFIXES:
        if key.startswith(prefix):
            return component, key[len(prefix):]
    for prefix in ("unet.", "base_model.model."):
        if key.startswith(prefix):
            return "unet", key[len(prefix):]
    return "unet", key


def _clip_module(module: str) -> str:
    """`…self_attn.to_q` (older formats) → `…self_attn.q_proj` (CLIP's own module name)."""
    head, sep, tail = module.partition(".self_attn.")
    return f"{head}{sep}{_CLIP_ATTENTION.get(tail, tail)}" if sep else module


def _peft_key(key: str) -> str:
    """One key in PEFT's spelling, by whichever of diffusers' converters recognises its format."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    for convert in (convert_unet_state_dict_to_peft,
                    lambda d: convert_state_dict_to_peft(convert_state_dict_to_diffusers(d))):
        try:
            new = next(iter(convert({key: 0})))
        except (ValueError, KeyError):
            continue
        if re.search(r"\.lora_[AB]\.weight$|\.alpha$", new):
            return new
    return key


def _normalise_keys(state_dict: dict, network_alphas: dict | None) -> dict[str, tuple[dict, dict[str, float]]]:
    """Any diffusers-side key format → per component ({'<module>.lora_A.weight': t, …}, {module: alpha}).

    diffusers' own `lora_state_dict` has already turned kohya's `lora_unet_`/`lora_te1_`/`lora_te2_` keys into
    `unet.`/`text_encoder.`/`text_encoder_2.` ones; `convert_unet_state_dict_to_peft` normalises every older
    diffusers spelling (`.lora.down`, `_lora.down`, `lora_linear_layer`) for both networks.
    """
    from diffusers.utils import convert_unet_state_dict_to_peft

    split: dict[str, dict] = {}
    for key, value in state_dict.items():
        component, rest = _component_of(key)
        split.setdefault(component, {})[rest] = value
    out = {}
    for component, part in split.items():
        if component == "unet":
            peft = convert_unet_state_dict_to_peft(part)
        else:  # diffusers writes kohya's text-encoder keys in two older spellings at once: normalise key by key
            peft = {_peft_key(k): v for k, v in part.items()}
        if component != "unet":
            peft = {re.sub(r"^(.*)(?=\.lora_[AB]\.weight$|\.alpha$)", lambda m: _clip_module(m.group(1)), k): v
                    for k, v in peft.items()}
        out[component] = (peft, {})
    for key, value in (network_alphas or {}).items():
        component, rest = _component_of(key.removesuffix(".alpha"))
        norm = _peft_key(rest)
        module = re.sub(r"\.lora_[AB](\.weight)?$", "", norm)
        out.setdefault(component, ({}, {}))[1][_clip_module(module) if component != "unet" else module] = float(value)
    # Plain `<module>.alpha` entries (kohya files that skipped conversion, PEFT exports).
    for peft, alphas in out.values():
        for key in [k for k in peft if k.endswith(".alpha")]:
            alphas[key[: -len(".alpha")]] = float(peft.pop(key))
    return out


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
    default_alpha, pattern = _metadata_alphas(metadata)
    components = {}
    for component, (peft, alphas) in _normalise_keys(dict(state_dict), network_alphas).items():
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
            if alpha is None and component == "unet":  # PEFT's metadata describes the UNet adapter
                alpha = next((v for k, v in pattern.items() if module == k or module.endswith("." + k)), default_alpha)
            layers[module] = LoraLayer(downs[module], ups[module], alpha)
        if layers:
            components[component] = layers
    return Lora(path, components)


def mismatches(lora: Lora, weight_shapes: Mapping[str, Sequence[int]],
               layers: Mapping[str, LoraLayer] | None = None) -> list[str]:
    """Why `lora` (its UNet part, or `layers`) does not fit a network whose Linear/Conv2d weights have
    `weight_shapes`; empty when it fits."""
    problems = []
    for module, layer in (lora.layers if layers is None else layers).items():
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


def check_fits(lora: Lora, weight_shapes: Mapping[str, Sequence[int]], layers: Mapping[str, LoraLayer] | None = None,
               component: str = "unet") -> None:
    problems = mismatches(lora, weight_shapes, layers)
    if problems:
        more = f" (+{len(problems) - _SHOW} more)" if len(problems) > _SHOW else ""
        what = "UNet" if component == "unet" else component.replace("_", " ")
        raise BadInput(f"LoRA {lora.path.name} does not fit this {what}: {'; '.join(problems[:_SHOW])}{more}")


def _aligned(layers: Mapping[str, LoraLayer], names: Mapping[str, object]) -> dict[str, LoraLayer]:
    """The LoRA's module names as this model spells them: LoRA files name CLIP's layers `text_model.encoder…`,
    which transformers 5 models call `encoder…` (the `text_model` wrapper is gone)."""
    out = {}
    for name, layer in layers.items():
        if name not in names and name.startswith("text_model.") and name[len("text_model."):] in names:
            name = name[len("text_model."):]
        elif name not in names and f"text_model.{name}" in names:
            name = f"text_model.{name}"
        out[name] = layer
    return out


def weight_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Weight shapes of every Linear/Conv2d of a model, compressed layers included (what a LoRA may target)."""
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, CompressedLayer):
            shapes[name] = tuple(module.shape)
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            shapes[name] = tuple(module.weight.shape)
    return shapes


def check_lora_files(specs: Iterable[tuple[Path | str, float]], unet_config: Mapping) -> None:
    """Read each LoRA file and check it against a UNet built from `unet_config` on the meta device (shapes only,
    no weights): a stage can refuse a bad LoRA before any heavy work."""
    specs = list(specs)
    if not specs:
        return
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
    with torch.device("meta"):
        skeleton = UNet2DConditionModel.from_config(config)
    shapes = weight_shapes(skeleton)
    for path, scale in specs:
        check_lora_scale(path, scale)
        check_fits(read_lora(path, skeleton.config), shapes)


def load_loras(specs: Iterable[tuple[Path | str, float]], unet_config=None) -> list[tuple[Lora, float]]:
    return [(read_lora(p, unet_config), float(s)) for p, s in specs]


@torch.no_grad()
def apply_loras(model: torch.nn.Module, loaded: Sequence[tuple[Lora, float]], component: str = "unet") -> list[dict]:
    """Apply the `component` part of read LoRAs in place, to any model: a compressed layer widens its low-rank
    branch (`CompressedLayer.append_lowrank`, the 4-bit residual untouched); a plain Linear/Conv2d (a layer kept
    in fp16, or any layer of an uncompressed model) gets ΔW added to its weight.

    Every LoRA is checked before any is applied, so a bad one leaves the model untouched. Returns one record
    per LoRA that touches this component (for the generation report and the compressed folder's manifest).
    """
    shapes = weight_shapes(model)
    parts = [(lora, scale, _aligned(lora.components.get(component, {}), shapes)) for lora, scale in loaded]
    for lora, _, layers in parts:
        check_fits(lora, shapes, layers, component)
    modules = dict(model.named_modules())
    records = []
    for lora, scale, layers in parts:
        if not layers:
            continue
        concat = dense = 0
        for name, layer in layers.items():
            module = modules[name]
            up, down = layer.factors(scale)
            if isinstance(module, CompressedLayer):
                module.append_lowrank(up, down)
                concat += 1
            else:
                w = module.weight
                w.add_((up @ down).reshape(w.shape).to(w.dtype))
                dense += 1
        records.append({"path": str(lora.path), "file": lora.path.name, "scale": scale, "component": component,
                        "layers": len(layers), "rank": max((l.rank for l in layers.values()), default=0),
                        "lowrank_concat": concat, "dense_fused": dense})
    return records


def apply_lora_files(model: torch.nn.Module, specs: Iterable[tuple[Path | str, float]],
                     component: str = "unet") -> list[dict]:
    """Read LoRA files (`FILE`, scale pairs) and apply their `component` part to `model` (`apply_loras`)."""
    config = getattr(model, "config", None) if component == "unet" else None
    return apply_loras(model, load_loras(specs, config), component)
