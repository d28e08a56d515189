"""The UNet's conversion: one package or two chunks, one function or one per LoRA style, our codes placed as
constexpr ops and read back bit for bit.

Each variant (function) is built from the source afresh: the compressed UNet in its "export" mode
(`palettize.layer`), LoRAs appended to its low-rank branches (`palettize.lora.apply_loras`), then the ANE
rewrite (`unet_graph`), torch.export and ct.convert with `mil_weights`' pass. Variants of one package are
joined into a multifunction package that stores the shared 4-bit weights once.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ..artifacts import bundle as names
from ..artifacts.bundle import TensorSpec
from ..artifacts.compressed import read_compressed_model
from ..models.components import load_compressed_component
from ..models.family import takes_time_ids
from ..palettize.layer import compressed_layers
from ..palettize.lora import apply_lora_files
from . import bundle as B
from .export import _example, convert_module, unet_specs
from .plan import ConvertPlan, source_digest


def unet_fingerprint(plan: ConvertPlan) -> dict:
    o = plan.opts
    return dict(plan.base_fingerprint, attention=o.attention, batch=1 if o.unet_batch_one else 2,
                loras=[[str(p), s] for p, s in plan.loras], functions=[str(p) for p in o.lora_functions],
                source_sha=source_digest(plan, names.UNET), precision="float16",
                controlnet_inputs=bool(plan.controlnets))


def function_name(path: Path) -> str:
    return re.sub(r"\W+", "_", Path(path).stem).strip("_") or "lora"


def load_unet(plan: ConvertPlan, mode: str = "export"):
    """The UNet in fp32: compressed layers in `mode`, or the plain diffusers model."""
    if "unet" in plan.compressed:
        return load_compressed_component(read_compressed_model(plan.source), "unet", mode=mode)
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(plan.source / "unet", torch_dtype=torch.float32).eval()


def build_variant(plan: ConvertPlan, extra_lora: Path | None = None):
    """(UNet with this variant's LoRAs applied, LoRA records). For a chunked UNet its compressed layers stay packed:
    each chunk materialises only its own layers for export (`_part_layers`), so a chunked SDXL never holds every
    layer's fp32 residual at once; a whole UNet is loaded for export directly."""
    unet = load_unet(plan, mode="packed" if len(plan.unet_packages) > 1 else "export")
    specs = list(plan.loras) + ([(extra_lora, 1.0)] if extra_lora else [])
    records = apply_lora_files(unet, specs) if specs else []
    return unet, records


def _part_layers(part: str, steps, cut: int | None, layers: dict) -> dict:
    """The compressed layers a package computes with: all of them for a whole UNet, one side of the cut for a chunk."""
    if part not in names.UNET_CHUNKS:
        return layers
    if part == names.UNET_CHUNKS[0]:
        modules = [steps.time_embedding, steps.add_embedding, steps.conv_in] + [s.module for s in steps.steps[:cut]]
    else:
        modules = [s.module for s in steps.steps[cut:]] + [steps.conv_norm_out, steps.conv_out]
    used = {id(sub) for m in modules if m is not None for sub in m.modules()}
    return {n: layer for n, layer in layers.items() if id(layer) in used}


def _pooled_dim(plan: ConvertPlan) -> int | None:
    cfg = plan.unet_config
    if not takes_time_ids(cfg):
        return None
    pooling = next(t.component for t in plan.family.text_encoders if t.pooled)
    config = plan.source / pooling / "config.json"
    if config.is_file():
        import json

        dim = json.loads(config.read_text()).get("projection_dim")
        if dim:
            return dim
    return cfg.projection_class_embeddings_input_dim - plan.family.time_ids * cfg.addition_time_embed_dim


def _chunk_parts(steps, cut, ins, outs, residuals: bool = False):
    """The two chunks; with ControlNet residual inputs each chunk takes the residuals its own steps add."""
    from .unet_graph import UnetChunk1, UnetChunk2, chunk_output_names

    by_name = {s.name: s for s in ins}
    c1, c2 = UnetChunk1(steps, cut, residuals), UnetChunk2(steps, cut, residuals)
    ins1 = [s for s in ins if not names.is_residual(s.name)] + [by_name[n] for n in c1.residual_names]
    example = tuple(_example(s) for s in ins1)
    with torch.no_grad():
        mids = c1(*example)
    names1 = chunk_output_names(len(mids) - 2)
    ehs = by_name[names.ENCODER_HIDDEN_STATES]
    ins2 = [ehs] + [TensorSpec(n, tuple(t.shape)) for n, t in zip(names1, mids)] + [by_name[n] for n in c2.residual_names]
    example2 = (example[[s.name for s in ins1].index(names.ENCODER_HIDDEN_STATES)], *mids,
                *(_example(by_name[n]) for n in c2.residual_names))
    return [(names.UNET_CHUNKS[0], c1, ins1, names1, example),
            (names.UNET_CHUNKS[1], c2, ins2, [o.name for o in outs], example2)]


def _out_specs(mlmodel, wanted: list[str]) -> list[TensorSpec]:
    spec = mlmodel.get_spec()
    shapes = {o.name: tuple(o.type.multiArrayType.shape) for o in spec.description.output}
    return [TensorSpec(n, tuple(int(x) for x in shapes.get(n, ()))) for n in wanted]


class _Saved:
    """Adapter so an already-saved package can go through `save_package_atomically`."""

    def __init__(self, path: Path):
        self.path = path

    def save(self, target: str) -> None:
        shutil.copytree(self.path, target)


def _save_multifunction(sources: list[Path], functions: list[str], package: Path) -> None:
    import coremltools as ct

    desc = ct.utils.MultiFunctionDescriptor()
    for fname, src in zip(functions, sources):
        desc.add_function(str(src), src_function_name="main", target_function_name=fname)
    desc.default_function_name = "main"
    with B.atomic_dir(package) as tmp:
        inner = tmp / "staged.mlpackage"
        ct.utils.save_multifunction(desc, str(inner))
        for child in inner.iterdir():
            child.rename(tmp / child.name)
        inner.rmdir()


def convert_unet(plan: ConvertPlan, manifest: dict, fingerprint: dict, log) -> None:
    from .mil_weights import CompressedWeights, verify_package
    from .unet_graph import ControlledUnet, UnetSteps

    opts = plan.opts
    package_names = plan.unet_packages
    residuals = bool(plan.controlnets)  # the bundle's ControlNets feed the UNet's residual inputs
    ins, outs = unet_specs(plan.unet_config, plan.latent_hw, 1 if opts.unet_batch_one else 2, 77, _pooled_dim(plan),
                           residuals=residuals)
    variants = [("main", None)] + [(function_name(p), Path(p)) for p in opts.lora_functions]
    staged: dict[str, list[Path]] = {n: [] for n in package_names}
    specs: dict[str, tuple] = {}
    part_seconds: dict[str, float] = {}
    lora_records = {}
    tmp = Path(tempfile.mkdtemp(prefix=".unet-functions-", dir=plan.out))
    try:
        t0 = time.time()
        with B.PeakRSS() as rss:
            for fname, extra in variants:
                unet, lora_records[fname] = build_variant(plan, extra)
                layers = compressed_layers(unet)
                steps = UnetSteps(unet, opts.attention)
                whole = ControlledUnet(steps) if residuals else steps
                cut = steps.balanced_cut() if len(package_names) > 1 else None
                parts = ([(names.UNET, whole, ins, [o.name for o in outs], None)] if cut is None
                         else _chunk_parts(steps, cut, ins, outs, residuals))
                placed = set()
                for pname, module, pins, pouts, example in parts:
                    t_part = time.time()
                    log(f"{pname}{'' if fname == 'main' else f' [{fname}]'}: converting (float16, {opts.attention})")
                    active = _part_layers(pname, steps, cut, layers)
                    # a chunked UNet is loaded packed (build_variant): only this chunk's layers are materialised
                    materialised = [layer for layer in active.values() if layer.mode != "export"]
                    for layer in materialised:
                        layer.set_mode("export")
                    weights = CompressedWeights(active) if active else None
                    mlmodel = convert_module(module, pins, pouts, opts.target, compressed=weights, example=example)
                    for layer in materialised:  # drop the fp32 residuals before the next chunk
                        layer.set_mode("packed")
                    if weights is not None:
                        placed |= {n for n, c in weights.placed.items() if c}
                    target = tmp / f"{pname}-{fname}.mlpackage"
                    mlmodel.save(str(target))
                    staged[pname].append(target)
                    part_seconds[pname] = part_seconds.get(pname, 0.0) + time.time() - t_part
                    specs[pname] = (pins, _out_specs(mlmodel, pouts))
                    del mlmodel
                missing = sorted(set(layers) - placed)
                if missing:  # a pass changed a weight we meant to place: never ship it silently dequantized
                    raise RuntimeError(f"{len(missing)} compressed layers were not placed as constexpr ops, e.g. {missing[0]}")
                del unet, layers, steps, parts
        seconds = time.time() - t0
        reference = compressed_layers(load_unet(plan, mode="packed")) if "unet" in plan.compressed else {}
        for pname in package_names:
            package = plan.resources / f"{pname}.mlpackage"
            if len(variants) == 1:
                B.save_package_atomically(_Saved(staged[pname][0]), package)
            else:
                _save_multifunction(staged[pname], [f for f, _ in variants], package)
            pins, pouts = specs[pname]
            extra = {"functions": [f for f, _ in variants], "lora_records": lora_records,
                     "single_function_bytes": B.folder_bytes(staged[pname][0]),
                     "single_function_blob_bytes": sum(f.stat().st_size for f in staged[pname][0].rglob("weight.bin"))}
            if reference:
                extra["verify"] = verify_package(package, reference)
            # Time: this package's own conversions (all functions) plus an equal share of model building.
            share = (seconds - sum(part_seconds.values())) / len(package_names)
            B.record_package(plan.out, manifest, pname, package, inputs=pins, outputs=pouts, precision="float16",
                             seconds=part_seconds[pname] + share, peak_mb=rss.peak_mb, fingerprint=fingerprint,
                             extra=extra)
            log(f"{pname}: done ({B.folder_bytes(package) / 2**20:.1f} MB, {len(variants)} function(s))")
        if reference:  # bytes on disk vs the compression accounting (same tensors, Core ML's blob format)
            blob = sum(manifest["components"][n]["single_function_blob_bytes"] for n in package_names)
            acc = manifest.get("compressed_source", {}).get("accounting") or {}
            if acc.get("total_bytes"):
                manifest["compressed_source"]["bundle_unet_blob_bytes"] = blob
                manifest["compressed_source"]["blob_vs_accounting"] = round(blob / acc["total_bytes"], 4)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
