"""Writing a trained LoRA in the diffusers/PEFT format `generate --lora` and `lora merge` read.

`unet.<module>.lora_A.weight` (down, r × in[·k·k]), `unet.<module>.lora_B.weight` (up), fp16, with PEFT's adapter
config (r, lora_alpha, target_modules) in the safetensors header, written by diffusers' own `save_lora_weights`
as its training scripts do (with PEFT's key names kept); text-encoder factors (when trained) under `text_encoder.` / `text_encoder_2.`.
The file is written beside `out` and renamed into place. The UNet part is then read back through
`palettize.lora.read_lora`, the reader every other command uses, so a file that would not load is never left.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from ..artifacts.outputs import LORA_MARKER, temp_prefix
from ..errors import BadInput
from ..models import ModelComponents
from .adapters import TEXT_TARGETS, UNET_TARGETS, lora_state_dict


def _fp16(layers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # PEFT's own key names, kept as they are (diffusers' convert_state_dict_to_diffusers would rename the attention
    # layers to the older `.lora.down/.lora.up`, mixing two spellings in one file); diffusers loads these directly.
    return {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in layers.items()}


def write_lora(out: Path, comps: ModelComponents, modules: dict[str, torch.nn.Module], rank: int, alpha: float) -> int:
    """Write the adapters of `modules` ({"unet": …, "text_encoder": …}) to `out`; returns the UNet layer count."""
    from ..models.components import pipeline_class

    pipeline = pipeline_class(comps.model_family)
    meta = {"r": rank, "lora_alpha": alpha}
    kwargs = {"unet_lora_layers": _fp16(lora_state_dict(modules["unet"])),
              "unet_lora_adapter_metadata": {**meta, "target_modules": UNET_TARGETS}}
    for name in ("text_encoder", "text_encoder_2"):
        if name in modules:
            kwargs[f"{name}_lora_layers"] = _fp16(lora_state_dict(modules[name]))
            kwargs[f"{name}_lora_adapter_metadata"] = {**meta, "target_modules": TEXT_TARGETS}
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), dir=out.parent))  # pid-named: a later run knows it stale
    try:
        pipeline.save_lora_weights(tmp, weight_name="lora.safetensors", safe_serialization=True, **kwargs)
        written = tmp / "lora.safetensors"
        _mark_as_ours(written)
        written.chmod(0o644)
        layers = _check_readable(written, comps, len(kwargs["unet_lora_layers"]) // 2, text="text_encoder" in modules)
        written.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return layers


def _mark_as_ours(path: Path) -> None:
    """Add `pocketsd_version` to the header's metadata: the --out guard then lets a later run replace this file."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from .. import __version__

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    save_file(load_file(str(path)), str(path), metadata={**meta, LORA_MARKER: __version__})


def _check_readable(path: Path, comps: ModelComponents, expected: int, text: bool) -> int:
    """Read the file back as `generate --lora` will; its UNet layers must all be there."""
    from safetensors.torch import load_file, save_file

    from ..palettize.lora import read_lora

    if text:  # the shared reader takes UNet LoRAs; check the UNet part on its own
        unet_only = {k: v for k, v in load_file(str(path)).items() if k.startswith("unet.")}
        probe = path.with_name("unet-part.safetensors")
        save_file(unet_only, str(probe), metadata={"format": "pt"})
        path = probe
    lora = read_lora(path, comps.config("unet"))
    if len(lora.layers) != expected:
        raise BadInput(f"the written LoRA reads back with {len(lora.layers)} UNet layers, not {expected}")
    return len(lora.layers)
