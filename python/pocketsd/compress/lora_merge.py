"""`pocketsd lora merge`: LoRAs appended to a compressed folder's low-rank branches, without re-quantizing.

The compressed UNet is loaded packed (its codes, tables and scales as stored), `palettize.lora.apply_loras`
widens the branches, and the state dict is written back: the residual's tensors are byte-identical.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..artifacts import COMPRESSED
from ..artifacts.compressed import ComponentPayload, read_compressed_model, write_compressed_model
from ..artifacts.model_folder import family_of_folder
from ..errors import BadInput
from ..models import resolve_model
from ..models.components import load_compressed_component
from ..palettize.layer import compressed_layers, compressed_state_dict
from ..artifacts.outputs import check_out
from ..palettize.lora import apply_loras, check_lora_scale, load_loras


def merge_loras(model: str | Path, specs: list[tuple[Path, float]], out: Path, *, force: bool = False) -> dict:
    """Write `out`: the compressed folder `model` with `specs` merged; returns the new manifest."""
    source = resolve_model(str(model))
    if source.kind != COMPRESSED:
        raise BadInput(f"{model} is a {source.kind.replace('_', '-')} model; `lora merge` needs a compressed folder "
                       "(run `pocketsd compress` first, or pass --lora to `pocketsd generate`)")
    if not specs:
        raise BadInput("give at least one --lora FILE[:SCALE]")
    for path, scale in specs:
        check_lora_scale(path, scale)
        if not Path(path).is_file():
            raise BadInput(f"LoRA file {path} does not exist" + (" (it is a folder)" if Path(path).is_dir() else ""))
    check_out(out, COMPRESSED, inputs=[("--model", source.path), *(("--lora", p) for p, _ in specs)], force=force,
              command="pocketsd lora merge")
    compressed = read_compressed_model(source.path)
    loaded = load_loras(specs, compressed.config("unet") if "unet" in compressed.components else None)
    family = family_of_folder(compressed.folder)
    foreign = [c for lora, _ in loaded for c in lora.components if c not in family.adapted_components]
    if foreign:
        lora = next(lora for lora, _ in loaded if foreign[0] in lora.components)
        raise BadInput(f"LoRA {lora.path.name} has {foreign[0]} layers, but {model} is a {family.title} model, which "
                       f"has no {foreign[0]} (a LoRA for another model family?)")
    touched = [c for c in family.adapted_components if any(c in lora.components for lora, _ in loaded)]
    dense = [c for c in touched if c not in compressed.components]
    if dense:
        lora = next(lora for lora, _ in loaded if dense[0] in lora.components)
        raise BadInput(f"LoRA {lora.path.name} has {dense[0]} layers, but {model} keeps its {dense[0]} uncompressed; "
                       f"compress it too (`pocketsd compress --components …,{dense[0]}`) or pass the LoRA to "
                       "`pocketsd generate --lora` instead")
    payloads, records = {}, []
    for name in touched:  # every component is checked before any is written (the folder is written atomically)
        network = load_compressed_component(compressed, name, mode="packed")
        records += apply_loras(network, loaded, name)
        old = compressed.components[name]
        payloads[name] = ComponentPayload(
            state_dict=compressed_state_dict(network), config=compressed.config(name),
            layers=[layer.record() for layer in compressed_layers(network).values()], fp16_layers=old.fp16_layers,
            library=old.library, class_name=old.class_name, recipe=old.recipe, calibration=old.calibration)
    keep = {name: rec.to_dict() for name, rec in compressed.components.items() if name not in payloads}
    extra = {k: v for k, v in compressed.manifest.items() if k in ("timings_s",)}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    extra["loras"] = compressed.loras + [dict(r, merged_utc=stamp) for r in records]
    extra["created_utc"] = stamp
    return write_compressed_model(Path(out), compressed.folder, payloads, source=compressed.source,
                                  extra=extra, keep=keep)
