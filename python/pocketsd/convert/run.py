"""`pocketsd convert`: every component of a model or compressed model → the Core ML bundle.

Orchestration only: what to convert, in which order, skipping what is done; the torch side lives in
export/unet_graph/ane/lowrank, the MIL side in mil_weights, the disk side in bundle.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import BadInput
from . import bundle as B
from .export import TARGETS, TextEncoderModule, VAEDecoderModule, VAEEncoderModule, convert_module
from .export import text_encoder_specs, unet_specs, vae_specs
from .inspect import census

Log = Callable[[str], None]


# ---- the source ---------------------------------------------------------------------------------
def resolve_source(spec: str | None) -> tuple[str, Path]:
    from ..loading import resolve_model

    src = resolve_model(spec)
    if src.kind == "coreml":
        raise BadInput(f"{spec} is already a Core ML bundle; give a diffusers or compressed model folder")
    if src.kind == "single_file":
        raise BadInput(f"{spec} is a single-file checkpoint; convert it to a diffusers folder first "
                       "(diffusers' StableDiffusionXLPipeline.from_single_file(...).save_pretrained(DIR))")
    path = src.path
    if src.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(spec, local_files_only=True))
        except Exception:  # noqa: BLE001 (any cache miss is the same message)
            raise BadInput(f"{spec} is not in the Hugging Face cache; download it first (huggingface-cli download {spec})") from None
    kind = "compressed" if src.kind == "compressed" else "diffusers"
    if kind == "diffusers" and not (path / "unet" / "config.json").is_file():
        raise BadInput(f"{spec} has no UNet (no unet/config.json); give a full SD/SDXL pipeline folder")
    if kind == "compressed" and not (path / "unet" / "pocketsd_unet.safetensors").is_file():
        raise BadInput(f"{spec} has no compressed UNet (unet/pocketsd_unet.safetensors); re-run `pocketsd compress`")
    return kind, path


def _load_unet(kind: str, path: Path):
    """(unet fp32, compressed export layers or {})."""
    if kind == "compressed":
        from .lowrank import build_compressed_unet

        return build_compressed_unet(path)
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=torch.float32).eval(), {}


def _vae_fp16_safe(vae) -> tuple[bool, str]:
    # diffusers marks VAEs that overflow in fp16 (SDXL's) with force_upcast; fp16-fixed VAEs set it False.
    if getattr(vae.config, "force_upcast", True):
        return False, "force_upcast is set in the VAE config (SDXL's VAE overflows in fp16): kept in fp32"
    return True, "VAE config has force_upcast=False (fp16-safe VAE): fp16"


def _sizes(opts: B.ConvertOptions, unet_cfg, vae_cfg) -> tuple[tuple[int, int], tuple[int, int]]:
    vae_factor = 2 ** (len(vae_cfg.block_out_channels) - 1)
    if opts.size is None:
        side = unet_cfg.sample_size * vae_factor
        width, height = side, side
    else:
        width, height = opts.size
    unet_factor = 2 ** (len(unet_cfg.down_block_types) - 1)
    need = vae_factor * unet_factor
    if width <= 0 or height <= 0 or width % need or height % need:
        raise BadInput(f"size {width}x{height} does not fit this model: width and height must be positive multiples "
                       f"of {need} (VAE ×{vae_factor}, UNet ×{unet_factor})")
    return (height, width), (height // vae_factor, width // vae_factor)


# ---- the run ----------------------------------------------------------------------------------
def convert_bundle(opts: B.ConvertOptions, log: Log = print, progress=None) -> dict:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if opts.target not in TARGETS:
        raise BadInput(f"unknown --target {opts.target!r}; choose one of {', '.join(TARGETS)}")
    if opts.attention not in ("split-einsum", "original"):
        raise BadInput(f"unknown --attention {opts.attention!r}; choose split-einsum or original")
    kind, path = resolve_source(opts.model)
    import json

    unet_cfg_dict = json.loads((path / "unet" / "config.json").read_text())
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    unet_cfg = SimpleNamespace(**{**UNet2DConditionModel.load_config(path / "unet"), **unet_cfg_dict})
    vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=torch.float32).eval()
    image_hw, latent_hw = _sizes(opts, unet_cfg, vae.config)
    from .unet_graph import check_supported, validate_latent_size

    check_supported(unet_cfg)
    validate_latent_size(unet_cfg, latent_hw)
    lora_specs = [(Path(p), float(s)) for p, s in opts.loras]
    for p in [p for p, _ in lora_specs] + list(opts.lora_functions):
        if not Path(p).is_file():
            raise BadInput(f"LoRA file {p} does not exist")

    out = Path(opts.out)
    resources = out / B.RESOURCES
    resources.mkdir(parents=True, exist_ok=True)
    # Left by a run killed too hard to clean up after itself (SIGKILL, power loss).
    for stale in [*resources.glob(".*.tmp-*"), *out.glob(".unet-functions-*")]:
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    previous = B.read_manifest(out)
    manifest = B.base_manifest({"spec": opts.model or "reference", "path": str(path), "kind": kind}, opts)
    manifest["components"] = dict(previous.get("components", {}))
    manifest["image_size"] = [image_hw[1], image_hw[0]]
    manifest["latent_size"] = [latent_hw[1], latent_hw[0]]
    manifest["vae_scaling_factor"] = float(getattr(vae.config, "scaling_factor", 1.0))
    is_xl = unet_cfg.addition_embed_type == "text_time"
    manifest["model_type"] = "sdxl" if is_xl else "sd"
    manifest["tokenizer"] = B.write_tokenizer_files(path / "tokenizer", resources)
    if kind == "compressed":
        cm = _compressed_manifest(path)
        manifest["compressed_source"] = {"recipe": cm.get("recipe"), "accounting": cm.get("accounting")}
        for key in ("bundle_unet_blob_bytes", "blob_vs_accounting"):  # kept when the UNet is skipped on resume
            if key in previous.get("compressed_source", {}):
                manifest["compressed_source"][key] = previous["compressed_source"][key]

    te_kind = dict(TextEncoder=("text_encoder", CLIPTextModel), TextEncoder2=("text_encoder_2", CLIPTextModelWithProjection))
    jobs = []
    for name, (folder, cls) in te_kind.items():
        if (path / folder).is_dir():
            jobs.append((name, lambda folder=folder, cls=cls: _text_encoder_job(path / folder, cls, is_xl), "float16"))
    fp16_vae, vae_reason = _vae_fp16_safe(vae)
    (dec_in, dec_out), (enc_in, enc_out) = vae_specs(vae, image_hw)
    vae_precision = "float16" if fp16_vae else "float32"
    jobs.append(("VAEDecoder", lambda: (VAEDecoderModule(vae), dec_in, dec_out, {}), vae_precision))
    jobs.append(("VAEEncoder", lambda: (VAEEncoderModule(vae), enc_in, enc_out, {}), vae_precision))
    manifest["vae_precision"] = {"precision": vae_precision, "reason": vae_reason}

    unet_names = ["UnetChunk1", "UnetChunk2"] if opts.chunk_unet else ["Unet"]
    fingerprint = {"target": opts.target, "size": manifest["image_size"]}
    unet_fingerprint = dict(fingerprint, attention=opts.attention, batch=1 if opts.unet_batch_one else 2,
                            loras=[[str(p), s] for p, s in lora_specs], functions=[str(p) for p in opts.lora_functions],
                            source_sha=_unet_source_digest(kind, path))
    known = [n for n, _, _ in jobs] + ["Unet", "UnetChunk1", "UnetChunk2"]
    unknown = [n for n in (opts.only or []) if n not in known]
    if unknown:
        raise BadInput(f"unknown component {unknown[0]!r} for --only; choose from {', '.join(known)}")
    wanted = lambda n: opts.only is None or n in opts.only  # noqa: E731
    folders = {"TextEncoder": "text_encoder", "TextEncoder2": "text_encoder_2", "VAEDecoder": "vae", "VAEEncoder": "vae"}
    for name, build, precision in jobs:
        if not wanted(name):
            continue
        fp = dict(fingerprint, precision=precision, source_sha=_folder_digest(path / folders[name]))
        if not opts.force and B.component_done(out, previous, name, fp):
            log(f"{name}: already converted (sha256 matches), skipping; --force to redo")
        else:
            _convert_one(name, build, precision, opts.target, out, fp, manifest, log)
            B.update_manifest(out, manifest)
        if progress:
            progress(name)
    fp = dict(unet_fingerprint, precision="float16")
    if not any(wanted(n) for n in unet_names):
        pass
    elif not opts.force and all(B.component_done(out, previous, n, fp) for n in unet_names):
        log(f"{' + '.join(unet_names)}: already converted (sha256 matches), skipping; --force to redo")
    else:
        _convert_unet(opts, kind, path, unet_cfg, latent_hw, unet_names, fp, manifest, out, log, lora_specs)
        # A bundle holds either Unet or the chunks (Swift prefers chunks): drop the other kind once the new one is in.
        for stale in ({"Unet"} if opts.chunk_unet else {"UnetChunk1", "UnetChunk2"}):
            manifest["components"].pop(stale, None)
            for suffix in (".mlpackage", ".mlmodelc"):
                shutil.rmtree(resources / f"{stale}{suffix}", ignore_errors=True)
        B.update_manifest(out, manifest)
    if progress:
        progress("Unet")

    if B.can_compile():
        for name, entry in manifest["components"].items():
            package = out / entry["file"]
            compiled = package.with_suffix(".mlmodelc")
            if package.exists() and (not compiled.exists() or compiled.stat().st_mtime < package.stat().st_mtime):
                log(f"{name}: compiling with xcrun coremlcompiler")
                B.compile_on_macos(package)
        manifest["compiled"] = True
    else:
        manifest["compiled"] = False
        manifest["compile_hint"] = B.compile_hint(out)
    B.update_manifest(out, manifest)
    return manifest


def _compressed_manifest(path: Path) -> dict:
    from ..artifacts import read_json

    return read_json(path / "pocketsd.json")


def _folder_digest(f: Path) -> str:
    """Cheap identity of a component's source files (names, sizes, mtimes): a changed model re-converts."""
    files = [f] if f.is_file() else sorted(p for p in f.rglob("*") if p.is_file())
    return ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


def _unet_source_digest(kind: str, path: Path) -> str:
    return _folder_digest(path / ("unet/pocketsd_unet.safetensors" if kind == "compressed" else "unet"))


def _text_encoder_job(folder: Path, cls, is_xl: bool):
    encoder = cls.from_pretrained(folder, torch_dtype=torch.float32).eval()
    ins, outs = text_encoder_specs(encoder, xl=is_xl)
    return TextEncoderModule(encoder, penultimate=is_xl), ins, outs, {}


def _convert_one(name, build, precision, target, out, fp, manifest, log) -> None:
    log(f"{name}: converting ({precision})")
    t0 = time.time()
    with B.PeakRSS() as rss:
        module, ins, outs, _ = build()
        mlmodel = convert_module(module, ins, [o.name for o in outs], target, precision=precision)
        package = out / B.RESOURCES / f"{name}.mlpackage"
        B.save_package_atomically(mlmodel, package)
    _record(manifest, name, package, out, ins, outs, precision, time.time() - t0, rss.peak_mb, fp)
    log(f"{name}: done in {time.time() - t0:.1f} s, peak RSS {rss.peak_mb:.0f} MB")


def _record(manifest, name, package, out, ins, outs, precision, seconds, peak_mb, fp, extra=None) -> None:
    manifest["components"][name] = {
        "file": str(package.relative_to(out)), "inputs": [s.record() for s in ins], "outputs": [s.record() for s in outs],
        "compute_precision": precision, "bytes": B.folder_bytes(package), "convert_seconds": round(seconds, 2),
        "peak_rss_mb": peak_mb, "sha256": {str(package.relative_to(out)): B.package_sha256(package)},
        "fingerprint": fp, "census": census(package), **(extra or {}),
    }


def _build_unet_variant(kind, path, lora_specs, extra_lora=None):
    unet, layers = _load_unet(kind, path)
    specs = list(lora_specs) + ([(extra_lora, 1.0)] if extra_lora else [])
    records = []
    if specs:
        from .lowrank import apply_loras

        records = apply_loras(unet, specs)
    return unet, layers, records


def _convert_unet(opts, kind, path, unet_cfg, latent_hw, names, fp, manifest, out, log, lora_specs) -> None:
    from .mil_weights import CompressedWeights, verify_package
    from .unet_graph import UnetChunk1, UnetChunk2, UnetSteps, chunk_output_names

    batch = 1 if opts.unet_batch_one else 2
    te2 = path / "text_encoder_2" / "config.json"
    pooled = None
    if unet_cfg.addition_embed_type == "text_time":
        import json

        cfg = json.loads(te2.read_text()) if te2.is_file() else {}
        pooled = cfg.get("projection_dim") or (unet_cfg.projection_class_embeddings_input_dim - 6 * unet_cfg.addition_time_embed_dim)
    ins, outs = unet_specs(unet_cfg, latent_hw, batch, 77, pooled)
    variants = [("main", None)] + [(_function_name(p), Path(p)) for p in opts.lora_functions]
    staged: dict[str, list[Path]] = {n: [] for n in names}
    specs: dict[str, tuple] = {}
    part_seconds: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix=".unet-functions-", dir=out))
    try:
        t0 = time.time()
        with B.PeakRSS() as rss:
            lora_records = {}
            for fname, extra in variants:
                unet, layers, records = _build_unet_variant(kind, path, lora_specs, extra)
                lora_records[fname] = records
                steps = UnetSteps(unet, opts.attention)
                cut = steps.balanced_cut() if len(names) == 2 else None
                parts = ([("Unet", steps, ins, [o.name for o in outs], None)] if cut is None else
                         _chunk_parts(steps, cut, ins, outs, UnetChunk1, UnetChunk2, chunk_output_names))
                placed = set()
                for pname, module, pins, pouts, example in parts:
                    t_part = time.time()
                    log(f"{pname}{'' if fname == 'main' else f' [{fname}]'}: converting (float16, {opts.attention})")
                    cw = CompressedWeights(layers) if layers else None
                    mlmodel = convert_module(module, pins, pouts, opts.target, compressed=cw, example=example)
                    if cw is not None:
                        placed |= {n for n, c in cw.placed.items() if c}
                    target = tmp / f"{pname}-{fname}.mlpackage"
                    mlmodel.save(str(target))
                    staged[pname].append(target)
                    part_seconds[pname] = part_seconds.get(pname, 0.0) + time.time() - t_part
                    specs[pname] = (pins, _out_specs(mlmodel, pouts))
                missing = sorted(set(layers) - placed)
                if missing:  # a pass changed a weight we meant to place: never ship it silently dequantized
                    raise RuntimeError(f"{len(missing)} compressed layers were not placed as constexpr ops, e.g. {missing[0]}")
                del unet, layers, steps
        seconds = time.time() - t0
        for pname in names:
            package = out / B.RESOURCES / f"{pname}.mlpackage"
            if len(variants) == 1:
                B.save_package_atomically(_Saved(staged[pname][0]), package)
            else:
                import coremltools as ct

                desc = ct.utils.MultiFunctionDescriptor()
                for (fname, _), src in zip(variants, staged[pname]):
                    desc.add_function(str(src), src_function_name="main", target_function_name=fname)
                desc.default_function_name = "main"
                with B.atomic_dir(package) as t:
                    inner = t / "staged.mlpackage"
                    ct.utils.save_multifunction(desc, str(inner))
                    for child in inner.iterdir():
                        child.rename(t / child.name)
                    inner.rmdir()
            pins, pouts = specs[pname]
            extra = {"functions": [f for f, _ in variants], "lora_records": lora_records,
                     "single_function_bytes": B.folder_bytes(staged[pname][0]),
                     "single_function_blob_bytes": sum(f.stat().st_size for f in staged[pname][0].rglob("weight.bin"))}
            if kind == "compressed":
                from ..palettize.format import read_compressed

                extra["verify"] = verify_package(package, read_compressed(path).layers)
            # Time: this package's own conversions (all functions) plus an equal share of model building.
            share = (seconds - sum(part_seconds.values())) / len(names)
            _record(manifest, pname, package, out, pins, pouts, "float16", part_seconds[pname] + share, rss.peak_mb, fp, extra)
            log(f"{pname}: done ({B.folder_bytes(package) / 2**20:.1f} MB, {len(variants)} function(s))")
        if kind == "compressed":  # bytes on disk vs the compression accounting (same tensors, Core ML's blob format)
            blob = sum(manifest["components"][n]["single_function_blob_bytes"] for n in names)
            acc = manifest.get("compressed_source", {}).get("accounting") or {}
            if acc.get("total_bytes"):
                manifest["compressed_source"]["bundle_unet_blob_bytes"] = blob
                manifest["compressed_source"]["blob_vs_accounting"] = round(blob / acc["total_bytes"], 4)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Saved:
    """Adapter so an already-saved package can go through `save_package_atomically`."""

    def __init__(self, path: Path):
        self.path = path

    def save(self, target: str) -> None:
        shutil.copytree(self.path, target)


def _function_name(p) -> str:
    import re

    return re.sub(r"\W+", "_", Path(p).stem).strip("_") or "lora"


def _out_specs(mlmodel, names):
    from .export import TensorSpec

    spec = mlmodel.get_spec()
    shapes = {o.name: tuple(o.type.multiArrayType.shape) for o in spec.description.output}
    return [TensorSpec(n, tuple(int(x) for x in shapes.get(n, ()))) for n in names]


def _chunk_parts(steps, cut, ins, outs, Chunk1, Chunk2, chunk_output_names):
    from .export import TensorSpec, _example

    c1 = Chunk1(steps, cut)
    example = tuple(_example(s) for s in ins)
    with torch.no_grad():
        mids = c1(*example)
    names1 = chunk_output_names(len(mids) - 2)
    ehs = next(s for s in ins if s.name == "encoder_hidden_states")
    ins2 = [ehs] + [TensorSpec(n, tuple(t.shape)) for n, t in zip(names1, mids)]
    example2 = (example[[s.name for s in ins].index("encoder_hidden_states")], *mids)
    return [("UnetChunk1", c1, ins, names1, example),
            ("UnetChunk2", Chunk2(steps, cut), ins2, [o.name for o in outs], example2)]
