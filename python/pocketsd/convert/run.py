"""`pocketsd convert`: every component of a model or compressed model → a Core ML bundle, as named steps.

    make_plan → prepare_bundle → convert each component (text encoders, VAE decoder/encoder) → convert_unet
    → compile (macOS)

Orchestration only: the torch side lives in export/unet_graph/ane, the MIL side in mil_weights, the bundle's
format in `pocketsd.artifacts.bundle`, the UNet job in unet_job.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from ..artifacts import bundle as names
from ..artifacts.bundle import load_partial_manifest, write_bundle_manifest
from ..artifacts.compressed import read_compressed_model
from ..artifacts.model_folder import read_config, read_model_index
from ..models.family import tokenizer_settings
from . import bundle as B
from .export import TextEncoderModule, VAEDecoderModule, VAEEncoderModule, convert_module, text_encoder_specs, vae_specs
from .plan import ConvertPlan, make_plan, source_digest

Log = Callable[[str], None]


def _tokenizer_settings(plan: ConvertPlan) -> list[dict]:
    """What Swift's tokenizers need per text encoder (`models.family.tokenizer_settings`)."""
    import json

    out = []
    for folder in plan.family.tokenizers[: len(plan.text_encoders)]:
        path = plan.source / folder / "tokenizer_config.json"
        out.append(tokenizer_settings(json.loads(path.read_text()) if path.is_file() else None))
    return out


def prepare_bundle(plan: ConvertPlan) -> tuple[dict, dict]:
    """(previous manifest for resuming, the new manifest with everything the pipeline needs recorded)."""
    plan.resources.mkdir(parents=True, exist_ok=True)
    # Left by a run killed too hard to clean up after itself (SIGKILL, power loss).
    for stale in [*plan.resources.glob(".*.tmp-*"), *plan.resources.glob(".*.old-*"), *plan.out.glob(".unet-functions-*")]:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    previous = load_partial_manifest(plan.out)
    manifest = B.base_manifest({"spec": plan.spec, "path": str(plan.source), "kind": plan.kind}, plan.opts)
    index = read_model_index(plan.source)
    scaling, shift = plan.family.vae_normalisation(plan.vae_config)
    manifest.update({
        "components": dict(previous.get("components", {})), "model_type": plan.family.name,
        "image_size": [plan.image_hw[1], plan.image_hw[0]], "latent_size": [plan.latent_hw[1], plan.latent_hw[0]],
        "vae_scaling_factor": scaling, "vae_shift_factor": shift,
        "scheduler_config": read_config(plan.source, "scheduler"),
        "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", False)),
        "tokenizers": _tokenizer_settings(plan),
        "tokenizer": B.write_tokenizer_files(plan.source / "tokenizer", plan.resources),
    })
    if "unet" in plan.compressed:
        compressed = read_compressed_model(plan.source)
        unet = compressed.components["unet"]
        manifest["compressed_source"] = {"recipe": unet.recipe, "accounting": unet.accounting,
                                         "components": {n: {"recipe": c.recipe.get("name"),
                                                            "bits_per_param": c.accounting.get("bits_per_param"),
                                                            "total_bytes": c.accounting.get("total_bytes")}
                                                        for n, c in compressed.components.items()}}
        for key in ("bundle_unet_blob_bytes", "blob_vs_accounting"):  # kept when the UNet is skipped on resume
            if key in previous.get("compressed_source", {}):
                manifest["compressed_source"][key] = previous["compressed_source"][key]
    return previous, manifest


def _vae_precision(plan: ConvertPlan) -> tuple[str, str]:
    # diffusers marks VAEs that overflow in fp16 (SDXL's) with force_upcast; fp16-fixed VAEs set it False.
    if plan.vae_config.get("force_upcast", True):
        return "float32", "force_upcast is set in the VAE config (SDXL's VAE overflows in fp16): kept in fp32"
    return "float16", "VAE config has force_upcast=False (fp16-safe VAE): fp16"


def _component_jobs(plan: ConvertPlan):
    """(package, precision, build) for every package but the UNet; `build` loads the module only when run and
    returns (module, inputs, outputs, compressed layers to place as constexpr ops — empty for a dense one)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ..models.components import load_compressed_component
    from ..palettize.layer import compressed_layers

    classes = {"TextEncoder": CLIPTextModel, "TextEncoder2": CLIPTextModelWithProjection}

    def load(component: str, cls):
        if component in plan.compressed:  # our codes, in the layer type's export mode
            return load_compressed_component(read_compressed_model(plan.source), component, mode="export")
        kwargs = {"dtype": torch.float32} if cls.__module__.startswith("transformers") else {"torch_dtype": torch.float32}
        return cls.from_pretrained(plan.source / component, **kwargs).eval()

    def text_encoder(package):
        encoder = load(plan.text_encoder_folders[package], classes[package])
        if plan.loras:  # a LoRA's text-encoder layers are baked in like its UNet layers
            from ..palettize.lora import apply_lora_files

            apply_lora_files(encoder, plan.loras, plan.text_encoder_folders[package])
        penultimate = plan.family.penultimate_hidden
        ins, outs = text_encoder_specs(encoder, xl=penultimate)
        return TextEncoderModule(encoder, penultimate=penultimate), ins, outs, compressed_layers(encoder)

    def vae(package):
        model = load("vae", AutoencoderKL)
        (dec_in, dec_out), (enc_in, enc_out) = vae_specs(model, plan.image_hw)
        module = VAEDecoderModule(model) if package == names.VAE_DECODER else VAEEncoderModule(model)
        ins, outs = (dec_in, dec_out) if package == names.VAE_DECODER else (enc_in, enc_out)
        # an fp32 VAE (force_upcast: SDXL's overflows in fp16 activations) keeps its codes too: mil_weights places
        # them as constexpr ops that decompress to fp32 (an fp32 table), so only the compute is fp32, not the storage
        return module, ins, outs, compressed_layers(module)

    vae_precision, _ = _vae_precision(plan)
    for package in plan.text_encoders:
        yield package, "float16", lambda p=package: text_encoder(p)
    for package in (names.VAE_DECODER, names.VAE_ENCODER):
        yield package, vae_precision, lambda p=package: vae(p)


def convert_component(plan: ConvertPlan, manifest: dict, package: str, *, precision: str, build, fingerprint: dict,
                      log: Log) -> None:
    from .mil_weights import CompressedWeights, verify_package

    log(f"{package}: converting ({precision})")
    t0 = time.time()
    extra = {}
    with B.PeakRSS() as rss:
        module, ins, outs, layers = build()
        weights = CompressedWeights(layers) if layers else None
        mlmodel = convert_module(module, ins, [o.name for o in outs], plan.opts.target, precision=precision,
                                 compressed=weights)
        if weights is not None and weights.missing():  # never ship a compressed layer silently dequantized
            raise RuntimeError(f"{package}: {len(weights.missing())} compressed layers were not placed as constexpr "
                               f"ops, e.g. {weights.missing()[0]}")
        target = plan.resources / f"{package}.mlpackage"
        B.save_package_atomically(mlmodel, target)
        if layers:
            extra["verify"] = verify_package(target, layers)
        del module, mlmodel
    B.record_package(plan.out, manifest, package, target, inputs=ins, outputs=outs, precision=precision,
                     seconds=time.time() - t0, peak_mb=rss.peak_mb, fingerprint=fingerprint, extra=extra)
    log(f"{package}: done in {time.time() - t0:.1f} s, peak RSS {rss.peak_mb:.0f} MB")


def compile_bundle(plan: ConvertPlan, manifest: dict, log: Log) -> None:
    if not B.can_compile():
        manifest["compiled"], manifest["compile_hint"] = False, B.compile_hint(plan.out)
        return
    for name, entry in manifest["components"].items():
        package = plan.out / entry["file"]
        compiled = package.with_suffix(".mlmodelc")
        if package.exists() and (not compiled.exists() or compiled.stat().st_mtime < package.stat().st_mtime):
            log(f"{name}: compiling with xcrun coremlcompiler")
            B.compile_on_macos(package)
    manifest["compiled"] = True


def _unlist(plan: ConvertPlan, manifest: dict, packages: list[str]) -> None:
    """A package about to be rewritten leaves the manifest first: a run killed half-way leaves a bundle that lacks
    it (the next run converts it) rather than one whose manifest lists a digest the new package does not match."""
    if any(p in manifest["components"] for p in packages):
        for p in packages:
            manifest["components"].pop(p, None)
        write_bundle_manifest(plan.out, manifest)


def convert_bundle(opts: B.ConvertOptions, log: Log = print, progress=None) -> dict:
    """Run the stage; returns the written manifest. `progress(name)` is called after each package."""
    from .unet_job import convert_unet, unet_fingerprint

    plan = make_plan(opts)
    previous, manifest = prepare_bundle(plan)
    precision, reason = _vae_precision(plan)
    manifest["vae_precision"] = {"precision": precision, "reason": reason}
    for package, precision, build in _component_jobs(plan):
        if not plan.wanted(package):
            continue
        fingerprint = dict(plan.base_fingerprint, precision=precision, source_sha=source_digest(plan, package))
        if not opts.force and B.component_done(plan.out, previous, package, fingerprint):
            log(f"{package}: already converted (sha256 matches), skipping; --force to redo")
        else:
            _unlist(plan, manifest, [package])
            convert_component(plan, manifest, package, precision=precision, build=build, fingerprint=fingerprint,
                              log=log)
            write_bundle_manifest(plan.out, manifest)
        if progress:
            progress(package)
    unet_packages = plan.unet_packages
    if any(plan.wanted(n) for n in unet_packages):
        fingerprint = unet_fingerprint(plan)
        if not opts.force and all(B.component_done(plan.out, previous, n, fingerprint) for n in unet_packages):
            log(f"{' + '.join(unet_packages)}: already converted (sha256 matches), skipping; --force to redo")
        else:
            _unlist(plan, manifest, unet_packages)
            convert_unet(plan, manifest, fingerprint, log)
            # A bundle holds either Unet or the chunks (Swift prefers chunks): drop the other kind once the new one is in.
            for stale in ({names.UNET} if opts.chunk_unet else set(names.UNET_CHUNKS)):
                manifest["components"].pop(stale, None)
                for suffix in (".mlpackage", ".mlmodelc"):
                    shutil.rmtree(plan.resources / f"{stale}{suffix}", ignore_errors=True)
            write_bundle_manifest(plan.out, manifest)
    if progress:
        progress("Unet")
    from .controlnet_job import convert_controlnets  # after the UNet: its residual inputs are what they feed

    convert_controlnets(plan, manifest, previous, log, progress)
    compile_bundle(plan, manifest, log)
    return write_bundle_manifest(plan.out, manifest)
