"""`pocketsd lora merge`: LoRAs appended to a compressed folder's low-rank branches, without re-quantizing.

The compressed UNet is loaded packed (its codes, tables and scales as stored), `palettize.lora.apply_loras`
widens the branches, and the state dict is written back: the residual's tensors are byte-identical.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import COMPRESSED
from ..artifacts.compressed import ComponentPayload, read_compressed_model, write_compressed_model
from ..errors import BadInput
from ..models import resolve_model
from ..models.components import load_compressed_component
from ..palettize.layer import compressed_layers, compressed_state_dict
from ..palettize.lora import apply_loras, load_loras


def merge_loras(model: str | Path, specs: list[tuple[Path, float]], out: Path) -> dict:
    """Write `out`: the compressed folder `model` with `specs` merged; returns the new manifest."""
    source = resolve_model(str(model))
    if source.kind != COMPRESSED:
        raise BadInput(f"{model} is a {source.kind.replace('_', '-')} model; `lora merge` needs a compressed folder "
                       "(run `pocketsd compress` first, or pass --lora to `pocketsd generate`)")
    if not specs:
        raise BadInput("give at least one --lora FILE[:SCALE]")
    compressed = read_compressed_model(source.path)
    unet = load_compressed_component(compressed, "unet", mode="packed")
    records = apply_loras(unet, load_loras(specs, compressed.config("unet")))
    old = compressed.components["unet"]
    payload = ComponentPayload(
        state_dict=compressed_state_dict(unet), config=compressed.config("unet"),
        layers=[layer.record() for layer in compressed_layers(unet).values()], fp16_layers=old.fp16_layers,
        library=old.library, class_name=old.class_name, recipe=old.recipe, calibration=old.calibration)
    keep = {name: rec.to_dict() for name, rec in compressed.components.items() if name != "unet"}
    extra = {k: v for k, v in compressed.manifest.items() if k in ("timings_s",)}
    extra["loras"] = compressed.loras + records
    return write_compressed_model(Path(out), compressed.folder, {"unet": payload}, source=compressed.source,
                                  extra=extra, keep=keep)
