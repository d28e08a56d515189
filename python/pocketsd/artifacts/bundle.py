"""The Core ML bundle: layout, names, manifest (format 2) and memory plan.

    <out>/pocketsd.json                          manifest, kind "coreml"
    <out>/Resources/TextEncoder.mlpackage        … TextEncoder2, Unet | UnetChunk1 + UnetChunk2, VAEDecoder, VAEEncoder
    <out>/Resources/controlnet/<Name>.mlpackage  optional ControlNets
    <out>/Resources/vocab.json, merges.txt       CLIP BPE files for Swift's BPETokenizer
    <out>/Resources/*.mlmodelc                   compiled, on macOS only

Package and tensor names are the ones Apple's Swift `StableDiffusion` package loads (TextEncoderXL.swift,
Unet.swift, Decoder.swift, Encoder.swift); the constants below are the only place they are spelled.

Manifest (format 2): kind, format_version, pocketsd_version, versions, source_model {spec, path, kind},
model_type ("sdxl" | "sd"), image_size [W, H], latent_size [w, h], vae_scaling_factor, vae_shift_factor,
scheduler_config, force_zeros_for_empty_prompt, tokenizers [{pad_token, model_max_length}…], options {…},
components {<name>: {file, stage, inputs [TensorSpec…], outputs […], compute_precision, weight_bytes, bytes,
sha256 {file: digest}, …}}, memory_plan {stages, weight_bytes, resident_bytes, largest_stage_bytes}.
A ControlNet is the component "controlnet/<Name>" (stage denoise) with inputs sample, timestep,
encoder_hidden_states, controlnet_cond [+ SDXL text_embeds, time_ids] and outputs additional_residual_{i} and
mid_block_res_sample — named exactly as the extra inputs the bundle's UNet then has (it gets zeros when no
ControlNet runs) — plus "controlnet": {source, conditioning_channels, compressed recipe or null, verify}.
Format 1 (pocketsd 0.1.0) lacked stages, weight bytes, the memory plan and the pipeline settings; it is
migrated on read, taking the settings from the source folder when it is still there, else SDXL defaults.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from ..models.family import ModelFamily, family_named, family_of_package_names, tokenizer_settings
from . import integrity
from .atomic import folder_bytes, kill_point, write_json
from .manifest import COREML, FORMAT_VERSIONS, MANIFEST, manifest_kind, read_manifest

RESOURCES = "Resources"
CONTROLNET_DIR = "controlnet"
TEXT_ENCODERS = ("TextEncoder", "TextEncoder2")
UNET, UNET_CHUNKS = "Unet", ("UnetChunk1", "UnetChunk2")
VAE_DECODER, VAE_ENCODER = "VAEDecoder", "VAEEncoder"
VOCAB, MERGES = "vocab.json", "merges.txt"

# Tensor names (Apple's). Text encoders: input_ids → hidden state (SDXL: the penultimate layer, "hidden_embeds";
# SD 1.x/2.x: the final one, "last_hidden_state") and the pooled/projected output.
INPUT_IDS = "input_ids"
HIDDEN_XL, HIDDEN_SD, POOLED = "hidden_embeds", "last_hidden_state", "pooled_outputs"


def text_hidden_name(penultimate: bool) -> str:
    """A text encoder package's hidden-state output: Apple names the penultimate layer (XL) differently."""
    return HIDDEN_XL if penultimate else HIDDEN_SD


SAMPLE, TIMESTEP, ENCODER_HIDDEN_STATES = "sample", "timestep", "encoder_hidden_states"
TEXT_EMBEDS, TIME_IDS, NOISE_PRED = "text_embeds", "time_ids", "noise_pred"
DECODER_IN, DECODER_OUT = "z", "image"
ENCODER_IN, ENCODER_OUT = "x", "latent"
CONTROLNET_COND = "controlnet_cond"
# ControlNet residuals: outputs of a ControlNet package, extra inputs of a ControlNet-enabled UNet (Apple's names).
def down_residual(i: int) -> str:
    return f"additional_residual_{i}"


MID_RESIDUAL = "mid_block_res_sample"


def is_residual(name: str) -> bool:
    """A ControlNet residual tensor name (an output of a ControlNet package, an input of a ControlNet-enabled UNet)."""
    return name == MID_RESIDUAL or (name.startswith("additional_residual_") and name[20:].isdigit())


def controlnet_name_for(folder: Path) -> str:
    """The name a ControlNet folder gets in a bundle (Resources/controlnet/<Name>.mlpackage) unless given one: the
    folder's name as an identifier (a hub snapshot is named after its repo; a folder just called "controlnet" is
    "ControlNet")."""
    import re

    folder = Path(folder)
    base = folder.name
    if folder.parent.name == "snapshots":  # ~/.cache/huggingface/hub/models--org--name/snapshots/<hash>
        base = folder.parent.parent.name.rsplit("--", 1)[-1]
    name = re.sub(r"\W+", "_", base).strip("_")
    return "ControlNet" if name.lower() in ("", "controlnet") else name


def controlnet_package(name: str) -> str:
    """The manifest key of ControlNet `name`: "controlnet/<Name>" (its file: Resources/controlnet/<Name>.mlpackage)."""
    return f"{CONTROLNET_DIR}/{name}"

# Which pipeline stage loads which package (the memory plan's unit).
TEXT_ENCODE, VAE_ENCODE, DENOISE, VAE_DECODE = "text_encode", "vae_encode", "denoise", "vae_decode"
STAGE_ORDER = (TEXT_ENCODE, VAE_ENCODE, DENOISE, VAE_DECODE)


def stage_of(package: str) -> str:
    if package in TEXT_ENCODERS:
        return TEXT_ENCODE
    if package == VAE_ENCODER:
        return VAE_ENCODE
    if package == VAE_DECODER:
        return VAE_DECODE
    if package == UNET or package in UNET_CHUNKS or package.startswith(CONTROLNET_DIR + "/"):
        return DENOISE
    raise ValueError(f"unknown bundle package {package!r}")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, fixed shape, dtype (as the manifest and Core ML spec record it)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def record(self) -> dict:
        return {"name": self.name, "shape": [int(d) for d in self.shape], "dtype": self.dtype}

    @classmethod
    def from_record(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(int(x) for x in d.get("shape") or ()), str(d.get("dtype", "float32")))


# ---- the memory plan -------------------------------------------------------------------------------
def memory_plan(components: dict[str, dict]) -> dict:
    """Which stage loads which package, and the model bytes resident during each stage.

    default: a package is loaded when its stage first runs and stays loaded (text encoders, then UNet, …).
    low_memory: only the current stage's packages are resident; within text encoding the two encoders run
    one after the other, so that stage's peak is the larger encoder, not their sum.
    """
    weight = {name: int(c.get("weight_bytes") or c.get("bytes") or 0) for name, c in components.items()}
    stages = []
    for stage in STAGE_ORDER:
        packages = [n for n in components if components[n].get("stage", stage_of(n)) == stage]
        if packages:
            entry = {"stage": stage, "packages": packages}
            if stage == VAE_ENCODE:
                entry["when"] = "image_input"
            stages.append(entry)
    default, low, loaded = {}, {}, set()
    for entry in stages:
        loaded |= set(entry["packages"])
        default[entry["stage"]] = sum(weight[n] for n in loaded)
        sizes = [weight[n] for n in entry["packages"]]
        low[entry["stage"]] = max(sizes) if entry["stage"] == TEXT_ENCODE else sum(sizes)
    return {"stages": stages, "weight_bytes": weight, "resident_bytes": {"default": default, "low_memory": low},
            "largest_stage_bytes": {"default": max(default.values(), default=0), "low_memory": max(low.values(), default=0)}}


# ---- reading ---------------------------------------------------------------------------------------
def _source_json(manifest: dict, *parts: str) -> dict | None:
    folder = (manifest.get("source_model") or {}).get("path")
    path = Path(folder).joinpath(*parts) if folder else None
    try:
        return json.loads(path.read_text()) if path and path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _migrate_v1(manifest: dict, folder: Path) -> dict:
    """Format 1 bundles: add stages and weight bytes, and record the pipeline settings format 2 carries."""
    assumed = []
    for name, comp in manifest.get("components", {}).items():
        comp.setdefault("stage", stage_of(name))
        blob = (comp.get("census") or {}).get("weight_blob_bytes")
        comp.setdefault("weight_bytes", int(blob or comp.get("bytes") or 0))
    family = family_named(manifest.get("model_type"))  # format 1 predates families: SDXL only
    if "scheduler_config" not in manifest:
        sched = _source_json(manifest, "scheduler", "scheduler_config.json")
        manifest["scheduler_config"] = sched or dict(family.scheduler_config)
        if sched is None:
            assumed.append(f"scheduler_config ({family.title}'s)")
    if "force_zeros_for_empty_prompt" not in manifest:
        index = _source_json(manifest, "model_index.json")
        manifest["force_zeros_for_empty_prompt"] = bool((index or {}).get("force_zeros_for_empty_prompt",
                                                                          family.force_zeros_for_empty_prompt))
        if index is None:
            assumed.append("force_zeros_for_empty_prompt")
    if "tokenizers" not in manifest:
        toks = []
        for sub in family.tokenizers:
            conf = _source_json(manifest, sub, "tokenizer_config.json")
            if conf is None:
                assumed.append(f"{sub} settings")
            toks.append(tokenizer_settings(conf))
        manifest["tokenizers"] = toks
    if "vae_scaling_factor" not in manifest:
        manifest["vae_scaling_factor"] = family.vae_scaling
        assumed.append("vae_scaling_factor")
    manifest.setdefault("vae_shift_factor", None)
    manifest["memory_plan"] = memory_plan(manifest.get("components", {}))
    if assumed:
        manifest["assumed"] = assumed
    return manifest


# The pipeline's loop components (pipeline.backend.COMPONENTS) → the bundle stage whose packages serve them.
LOOP_STAGES = {"text_encoder": TEXT_ENCODE, "unet": DENOISE, "vae_decoder": VAE_DECODE, "vae_encoder": VAE_ENCODE}


@dataclass
class BundleManifest:
    """A bundle's manifest, read and checked, and the one reader of it: typed accessors for what the Core ML
    backend and `info` need — which packages serve which stage, their specs, and the pipeline settings the
    converter recorded (format 2; format 1 and foreign bundles are migrated on read)."""

    root: Path
    manifest: dict

    @property
    def resources(self) -> Path:
        return self.root / RESOURCES

    @property
    def components(self) -> dict[str, dict]:
        return self.manifest.get("components", {})

    @property
    def family(self) -> str:
        return self.model_family.name

    @property
    def model_family(self) -> ModelFamily:
        return family_named(self.manifest.get("model_type"))

    # ---- the pipeline settings -----------------------------------------------------------------------
    @property
    def source_model(self) -> str | None:
        src = self.manifest.get("source_model") or {}
        return src.get("path") or src.get("spec")

    @property
    def scheduler_config(self) -> dict:
        return dict(self.manifest["scheduler_config"])

    @property
    def scaling_factor(self) -> float:
        return float(self.manifest["vae_scaling_factor"])

    @property
    def shift_factor(self) -> float | None:
        value = self.manifest.get("vae_shift_factor")
        return float(value) if value else None

    @property
    def vae_scale_factor(self) -> int:
        image, latent = self.manifest.get("image_size"), self.manifest.get("latent_size")
        return int(image[0] // latent[0]) if image and latent else self.model_family.latent_factor

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        return bool(self.manifest.get("force_zeros_for_empty_prompt", False))

    def tokenizer_settings(self) -> list[dict]:
        """{pad_token, model_max_length} per text encoder, in package order (`models.family.tokenizer_settings`)."""
        return list(self.manifest.get("tokenizers") or [])

    # ---- packages --------------------------------------------------------------------------------------
    def models_for(self, component: str) -> list[str]:
        """Packages serving a loop component ("text_encoder", "unet", "vae_decoder", "vae_encoder"), in order."""
        if component == "unet":
            return self.unet_packages()
        if component == "text_encoder":
            return [n for n in TEXT_ENCODERS if n in self.components]
        return self.packages_for(LOOP_STAGES[component])

    def model_path(self, name: str) -> Path:
        package = self.root / self.components[name]["file"]
        compiled = package.with_suffix(".mlmodelc")
        if sys.platform == "darwin" and compiled.exists():
            return compiled  # compiled models skip the compile step on load
        return package

    def unet_input(self, name: str) -> TensorSpec:
        for model in self.models_for("unet"):
            inputs, _ = self.specs(model)
            if name in inputs:
                return inputs[name]
        raise BadInput(f"the Core ML bundle {self.root} has no UNet with a {name!r} input; re-run `pocketsd convert`")

    def packages_for(self, stage: str) -> list[str]:
        return [n for n, c in self.components.items() if c.get("stage", stage_of(n)) == stage
                and not n.startswith(CONTROLNET_DIR + "/")]

    def unet_packages(self) -> list[str]:
        chunks = [n for n in UNET_CHUNKS if n in self.components]
        return chunks or ([UNET] if UNET in self.components else [])

    def specs(self, package: str) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        comp = self.components[package]
        ins = {d["name"]: TensorSpec.from_record(d) for d in comp.get("inputs", [])}
        outs = {d["name"]: TensorSpec.from_record(d) for d in comp.get("outputs", [])}
        return ins, outs

    def controlnets(self) -> list[str]:
        """Names of the bundle's ControlNets (components "controlnet/<Name>"), in manifest order."""
        prefix = CONTROLNET_DIR + "/"
        return [n[len(prefix):] for n in self.components if n.startswith(prefix)]

    def unet_functions(self) -> list[str]:
        names: list[str] = []
        for package in self.unet_packages():
            for fn in self.components[package].get("functions") or []:
                if fn not in names:
                    names.append(fn)
        return names

    def verify(self, packages: list[str] | None = None) -> None:
        digests = {}
        for name, comp in self.components.items():
            if packages is None or name in packages:
                digests.update(comp.get("sha256") or {})
        integrity.verify(self.root, digests, what="Core ML bundle")


def is_bundle(folder: Path) -> bool:
    return manifest_kind(folder) == COREML


def _spec_of_package(package: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs from an .mlpackage's own spec (readable off macOS, no model load)."""
    import coremltools as ct

    array_types = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}
    try:
        desc = ct.models.MLModel(str(package), skip_model_load=True).get_spec().description
    except Exception as exc:  # coremltools raises RuntimeError/IOError/protobuf errors for a damaged package
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise BadInput(f"{package} is not a readable Core ML package ({type(exc).__name__}: {first}); re-convert "
                       "it with `pocketsd convert`") from None

    def records(features):
        return [TensorSpec(f.name, tuple(int(d) for d in f.type.multiArrayType.shape),
                           array_types.get(f.type.multiArrayType.dataType, "float32")).record() for f in features]

    return records(desc.input), records(desc.output)


def manifest_from_packages(folder: Path) -> dict:
    """A bundle made by another converter (Apple's torch2coreml writes no pocketsd.json): what its packages
    declare, with SDXL's pipeline settings assumed and listed as assumed."""
    resources = folder / RESOURCES if (folder / RESOURCES).is_dir() else folder
    components = {}
    for package in sorted(resources.glob("*.mlpackage")):
        try:
            stage = stage_of(package.stem)
        except ValueError:
            continue  # a package Apple's Swift pipeline does not load either (e.g. SafetyChecker)
        ins, outs = _spec_of_package(package)
        components[package.stem] = {"file": str(package.relative_to(folder)), "stage": stage, "inputs": ins,
                                    "outputs": outs, "weight_bytes": folder_bytes(package), "bytes": folder_bytes(package)}
    if not components:
        raise BadInput(f"{folder} is not a Core ML bundle: no {MANIFEST} and no Core ML packages; make one with "
                       "`pocketsd convert`")
    manifest = {"kind": COREML, "format_version": FORMAT_VERSIONS[COREML], "source_model": {}, "components": components,
                "model_type": family_of_package_names(components).name, "foreign": True}
    manifest = _migrate_v1(manifest, folder)
    manifest["assumed"] = ["made without pocketsd: every pipeline setting"] + manifest.get("assumed", [])
    return manifest


def read_bundle_manifest(folder: Path) -> BundleManifest:
    folder = Path(folder)
    if not (folder / MANIFEST).is_file() and ((folder / RESOURCES).is_dir() or any(folder.glob("*.mlpackage"))):
        return BundleManifest(folder, manifest_from_packages(folder))
    manifest = read_manifest(folder, COREML, {1: _migrate_v1})
    if not isinstance(manifest.get("components"), dict):
        raise BadInput(f"{folder}/{MANIFEST} lists no components; re-run `pocketsd convert`")
    return BundleManifest(folder, manifest)


def load_partial_manifest(folder: Path) -> dict:
    """The manifest a resumed conversion starts from: today's format only (anything else is redone)."""
    try:
        return read_bundle_manifest(folder).manifest
    except BadInput:
        return {}


def write_bundle_manifest(out: Path, manifest: dict) -> dict:
    """Recompute totals and the memory plan, then write the manifest atomically (after every component)."""
    out = Path(out)
    manifest["kind"], manifest["format_version"] = COREML, FORMAT_VERSIONS[COREML]
    manifest["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest["total_bytes"] = sum(folder_bytes(out / rel) for c in manifest.get("components", {}).values()
                                  for rel in c.get("sha256", {}) if (out / rel).exists())
    manifest["memory_plan"] = memory_plan(manifest.get("components", {}))
    write_json(out / MANIFEST, manifest)
    kill_point("bundle:manifest")
    return manifest
