"""What the Core ML backend needs from a bundle: the one reader of its manifest (`artifacts.bundle.BundleManifest`:
which packages serve which stage, their fixed input/output specs, the pipeline settings the converter recorded —
family, scheduler config, VAE factors, tokenizer padding) and the tokenizers built from its vocabulary files.

Reads only; no Core ML prediction here, so all of it runs (and is tested) on Linux.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import bundle as names
from ..artifacts.bundle import BundleManifest, TensorSpec, read_bundle_manifest
from ..errors import BadInput
from ..models.family import CLIP_PAD_TOKEN


class BundleInfo(BundleManifest):
    """A bundle as the Core ML backend opens it: the artifacts reader (`BundleManifest`: packages, specs, the
    recorded pipeline settings) plus the tokenizers built from its vocabulary files."""

    def tokenizers(self) -> list:
        from transformers import CLIPTokenizer

        vocab, merges = self.resources / names.VOCAB, self.resources / names.MERGES
        if not vocab.is_file() or not merges.is_file():
            raise BadInput(f"the Core ML bundle {self.root} lacks {names.VOCAB}/{names.MERGES} in {names.RESOURCES}/; "
                           "re-run `pocketsd convert`")
        settings = self.tokenizer_settings()
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
    read = read_bundle_manifest(root)
    info = BundleInfo(read.root, read.manifest)
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
