"""Reading a Core ML bundle made by `pocketsd convert`: which models it has, their inputs/outputs, tokenizer files
and the settings the pipeline needs (family, scheduler config, VAE scaling) from its `pocketsd.json` manifest.

Reads only; no Core ML prediction here, so all of it runs (and is tested) on Linux. Input/output names and shapes
come from the manifest; when a manifest omits them they are read from the `.mlpackage` itself with
`MLModel(path, skip_model_load=True)`, which also works off macOS.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput

TEXT_ENCODERS = ("TextEncoder", "TextEncoder2")
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "int32": "int32",
           "FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32", "DOUBLE": "float64", "float64": "float64"}
# Used only when a manifest does not carry the model's scheduler config: the SD/SDXL training schedule, which is
# also what Apple's Swift pipeline hard-codes.
_DEFAULT_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                      "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
                      "steps_offset": 1, "timestep_spacing": "leading"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


def _specs(raw: Any) -> dict[str, TensorSpec]:
    """Manifest inputs/outputs in any of: [{name, shape, dtype}], {name: {shape, dtype}}, {name: shape}."""
    out: dict[str, TensorSpec] = {}
    if isinstance(raw, dict):
        raw = [dict(v, name=k) if isinstance(v, dict) else {"name": k, "shape": v} for k, v in raw.items()]
    for item in raw or []:
        dtype = _DTYPES.get(str(item.get("dtype", "float32")), "float32")
        out[item["name"]] = TensorSpec(item["name"], tuple(int(d) for d in item.get("shape") or ()), dtype)
    return out


def specs_from_model_spec(spec, function_name: str | None = None) -> tuple[dict, dict]:
    """(inputs, outputs) from a Core ML protobuf spec (works with `skip_model_load=True`)."""
    desc = spec.description
    if function_name and len(getattr(desc, "functions", [])):
        desc = next((f for f in desc.functions if f.name == function_name), desc.functions[0])
    array_types = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}

    def convert(features) -> dict[str, TensorSpec]:
        specs = {}
        for f in features:
            arr = f.type.multiArrayType
            specs[f.name] = TensorSpec(f.name, tuple(int(d) for d in arr.shape), array_types.get(arr.dataType, "float32"))
        return specs

    return convert(desc.input), convert(desc.output)


@dataclass
class BundleInfo:
    root: Path
    resources: Path
    manifest: dict
    components: dict[str, dict] = field(default_factory=dict)

    # ---- what the pipeline needs ----------------------------------------------------------------
    @property
    def family(self) -> str:
        declared = self.manifest.get("model_type") or self.manifest.get("family")
        return declared or ("sdxl" if "TextEncoder2" in self.model_names() else "sd")

    def _source_file(self, *parts: str) -> dict | None:
        """A JSON file of the source model folder, when it is still on this machine (configs the manifest lacks)."""
        src = self.manifest.get("source_model") or self.manifest.get("source")
        folder = src.get("path") if isinstance(src, dict) else src
        if not folder:
            return None
        path = Path(folder).joinpath(*parts)
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None

    @property
    def source_model(self) -> str | None:
        src = self.manifest.get("source") or self.manifest.get("source_model")
        if isinstance(src, dict):
            src = src.get("path") or src.get("spec")
        return str(src) if src else None

    @property
    def scheduler_config(self) -> dict:
        return dict(self.manifest.get("scheduler_config") or self._source_file("scheduler", "scheduler_config.json")
                    or _DEFAULT_SCHEDULER)

    def _vae(self, key: str, default):
        vae = self.manifest.get("vae") or {}
        return vae.get(key, self.manifest.get(key, default))

    @property
    def scaling_factor(self) -> float:
        if "vae_scaling_factor" in self.manifest:
            return float(self.manifest["vae_scaling_factor"])
        return float(self._vae("scaling_factor", 0.13025 if self.family == "sdxl" else 0.18215))

    @property
    def shift_factor(self) -> float | None:
        value = self._vae("shift_factor", None)
        return float(value) if value else None

    @property
    def vae_scale_factor(self) -> int:
        return int(self._vae("vae_scale_factor", 8))

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        if "force_zeros_for_empty_prompt" in self.manifest:
            return bool(self.manifest["force_zeros_for_empty_prompt"])
        index = self._source_file("model_index.json") or {}
        return bool(index.get("force_zeros_for_empty_prompt", self.family == "sdxl"))

    @property
    def unet_functions(self) -> list[str]:
        names: list[str] = []
        for model in self.models_for("unet"):
            for fn in self.components.get(model, {}).get("functions") or []:
                fn = fn["name"] if isinstance(fn, dict) else fn
                if fn not in names:
                    names.append(fn)
        return names

    def tokenizers(self) -> list:
        from transformers import CLIPTokenizer

        vocab, merges = self.resources / "vocab.json", self.resources / "merges.txt"
        if not vocab.is_file() or not merges.is_file():
            raise BadInput(f"the Core ML bundle {self.root} lacks vocab.json/merges.txt in {self.resources.name}/; re-run `pocketsd convert`")
        settings = self.manifest.get("tokenizers")
        if not isinstance(settings, list):
            # SDXL's second tokenizer pads with "!" rather than <|endoftext|>: take each one's settings from the
            # source model when it is here (the bundle itself ships one vocab.json/merges.txt pair, as Apple's does).
            settings = [self._source_file(folder, "tokenizer_config.json") or {} for folder in ("tokenizer", "tokenizer_2")]
        toks = []
        for i, name in enumerate(self.models_for("text_encoder")):
            conf = settings[i] if i < len(settings) else {}
            ids = self.specs(name)[0] if self.specs(name) else {}
            length = next((s.shape[1] for s in ids.values() if len(s.shape) == 2), 77)
            pad = conf.get("pad_token", "<|endoftext|>")
            pad = pad.get("content", "<|endoftext|>") if isinstance(pad, dict) else pad
            toks.append(CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=min(int(conf.get("model_max_length", length)), length),
                                      pad_token=pad))
        return toks

    # ---- models ---------------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        names = set(self.components)
        for p in self.resources.glob("*.ml*"):
            if p.suffix in (".mlpackage", ".mlmodelc"):
                names.add(p.stem)
        return sorted(names)

    def models_for(self, component: str) -> list[str]:
        names = self.model_names()
        if component == "text_encoder":
            return [n for n in TEXT_ENCODERS if n in names]
        if component == "unet":
            chunks = sorted((n for n in names if re.fullmatch(r"UnetChunk\d+", n)), key=lambda n: int(n[9:]))
            return chunks or (["Unet"] if "Unet" in names else [])
        wanted = {"vae_decoder": "VAEDecoder", "vae_encoder": "VAEEncoder"}[component]
        return [wanted] if wanted in names else []

    def model_path(self, name: str) -> Path:
        compiled, package = self.resources / f"{name}.mlmodelc", self.resources / f"{name}.mlpackage"
        declared = self.components.get(name, {}).get("file") or self.components.get(name, {}).get("path")
        if sys.platform == "darwin" and compiled.exists():
            return compiled  # compiled models skip the compile step on load
        if package.exists():
            return package
        if compiled.exists():
            return compiled
        return self.root / declared if declared else package

    def specs(self, name: str, function: str | None = None) -> tuple[dict, dict] | None:
        entry = self.components.get(name, {})
        fn_entry = next((f for f in entry.get("functions") or [] if isinstance(f, dict) and f.get("name") == function), {})
        inputs, outputs = fn_entry.get("inputs") or entry.get("inputs"), fn_entry.get("outputs") or entry.get("outputs")
        if inputs and outputs:
            return _specs(inputs), _specs(outputs)
        package = self.resources / f"{name}.mlpackage"
        if package.exists():
            import coremltools as ct

            model = ct.models.MLModel(str(package), skip_model_load=True)
            return specs_from_model_spec(model.get_spec(), function)
        return None  # a compiled model: the predictor reads its own description once loaded

    def unet_input(self, name: str) -> TensorSpec:
        for model in self.models_for("unet"):
            specs = self.specs(model)
            if specs and name in specs[0]:
                return specs[0][name]
        raise BadInput(f"the Core ML bundle {self.root} has no UNet with a {name!r} input; re-run `pocketsd convert`")


def _normalise_components(raw: Any) -> dict[str, dict]:
    if isinstance(raw, list):
        return {c["name"]: c for c in raw if isinstance(c, dict) and "name" in c}
    return {k: v for k, v in (raw or {}).items() if isinstance(v, dict)}


def read_bundle(path: str | Path) -> BundleInfo:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BadInput(f"Core ML bundle {root} does not exist")
    resources = root / "Resources" if (root / "Resources").is_dir() else root
    manifest: dict = {}
    for candidate in (root / "pocketsd.json", resources / "pocketsd.json"):
        if candidate.is_file():
            try:
                manifest = json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise BadInput(f"{candidate} is not valid JSON ({exc}); re-run `pocketsd convert`") from None
            break
    info = BundleInfo(root, resources, manifest, _normalise_components(manifest.get("components")))
    if not info.models_for("unet"):
        raise BadInput(f"{root} is not a Core ML bundle: no Unet (or UnetChunk1..N) model in {resources}")
    return info
