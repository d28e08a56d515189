"""What the Core ML backend needs from a bundle, read through its manifest (`pocketsd.artifacts.bundle`):
which packages serve which stage, their fixed input/output specs, the tokenizer files and the pipeline
settings the converter recorded (family, scheduler config, VAE factors, tokenizer padding).

Reads only; no Core ML prediction here, so all of it runs (and is tested) on Linux.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import bundle as names
from ..artifacts.bundle import BundleManifest, TensorSpec, read_bundle_manifest
from ..errors import BadInput
from ..models.family import CLIP_PAD_TOKEN, ModelFamily

_STAGES = {"text_encoder": names.TEXT_ENCODE, "unet": names.DENOISE, "vae_decoder": names.VAE_DECODE,
           "vae_encoder": names.VAE_ENCODE}


@dataclass
class BundleInfo:
    bundle: BundleManifest

    @property
    def root(self) -> Path:
        return self.bundle.root

    @property
    def resources(self) -> Path:
        return self.bundle.resources

    @property
    def manifest(self) -> dict:
        return self.bundle.manifest

    @property
    def family(self) -> ModelFamily:
        return self.bundle.model_family

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
        return int(image[0] // latent[0]) if image and latent else 8

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        return bool(self.manifest.get("force_zeros_for_empty_prompt", False))

    @property
    def unet_functions(self) -> list[str]:
        return self.bundle.unet_functions()

    def models_for(self, component: str) -> list[str]:
        """Packages serving a loop component ("text_encoder", "unet", "vae_decoder", "vae_encoder"), in order."""
        if component == "unet":
            return self.bundle.unet_packages()
        if component == "text_encoder":
            return [n for n in names.TEXT_ENCODERS if n in self.bundle.components]
        return self.bundle.packages_for(_STAGES[component])

    def model_path(self, name: str) -> Path:
        package = self.root / self.bundle.components[name]["file"]
        compiled = package.with_suffix(".mlmodelc")
        if sys.platform == "darwin" and compiled.exists():
            return compiled  # compiled models skip the compile step on load
        return package

    def specs(self, name: str) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
        return self.bundle.specs(name)

    def unet_input(self, name: str) -> TensorSpec:
        for model in self.models_for("unet"):
            inputs, _ = self.specs(model)
            if name in inputs:
                return inputs[name]
        raise BadInput(f"the Core ML bundle {self.root} has no UNet with a {name!r} input; re-run `pocketsd convert`")

    def tokenizers(self) -> list:
        from transformers import CLIPTokenizer

        vocab, merges = self.resources / names.VOCAB, self.resources / names.MERGES
        if not vocab.is_file() or not merges.is_file():
            raise BadInput(f"the Core ML bundle {self.root} lacks {names.VOCAB}/{names.MERGES} in {names.RESOURCES}/; "
                           "re-run `pocketsd convert`")
        settings = self.manifest.get("tokenizers") or []
        toks = []
        for i, name in enumerate(self.models_for("text_encoder")):
            conf = settings[i] if i < len(settings) else {}
            ids = self.specs(name)[0].get(names.INPUT_IDS)
            length = ids.shape[1] if ids is not None and len(ids.shape) == 2 else 77
            toks.append(CLIPTokenizer(vocab=str(vocab), merges=str(merges),
                                      model_max_length=min(int(conf.get("model_max_length", length)), length),
                                      pad_token=conf.get("pad_token", CLIP_PAD_TOKEN)))
        return toks


def read_bundle(path: str | Path) -> BundleInfo:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BadInput(f"Core ML bundle {root} does not exist")
    info = BundleInfo(read_bundle_manifest(root))
    if not info.models_for("unet"):
        raise BadInput(f"{root} is not a usable Core ML bundle: its manifest lists no Unet (or UnetChunk1/2)")
    return info


def specs_from_model_spec(spec, function_name: str | None = None) -> tuple[dict, dict]:
    """(inputs, outputs) from a loaded Core ML model's protobuf spec (used when a compiled model is loaded)."""
    desc = spec.description
    if function_name and len(getattr(desc, "functions", [])):
        desc = next((f for f in desc.functions if f.name == function_name), desc.functions[0])
    array_types = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}

    def convert(features) -> dict[str, TensorSpec]:
        return {f.name: TensorSpec(f.name, tuple(int(d) for d in f.type.multiArrayType.shape),
                                   array_types.get(f.type.multiArrayType.dataType, "float32")) for f in features}

    return convert(desc.input), convert(desc.output)


__all__ = ["BundleInfo", "TensorSpec", "read_bundle", "specs_from_model_spec"]
