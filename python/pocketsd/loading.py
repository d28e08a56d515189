"""Resolving a `--model` argument to what it is, and loading diffusers pipelines from it.

Kinds: the embedded reference model (default), a diffusers folder, a compressed folder
(`pocketsd.json` kind "compressed"), a Core ML bundle (`pocketsd.json` kind "coreml"),
a single-file checkpoint, or a hub id resolved through the Hugging Face cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput
from .refmodel import reference_model_path

REFERENCE = "reference"
PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl"}


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: str  # "diffusers" | "compressed" | "coreml" | "single_file" | "hub"
    path: Path | None


def _manifest_kind(folder: Path) -> str | None:
    manifest = folder / "pocketsd.json"
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get("kind")
    except (OSError, json.JSONDecodeError):
        raise BadInput(f"{manifest} is not valid JSON; re-create the folder with `pocketsd compress` or `pocketsd convert`")


def resolve_model(spec: str | None) -> ModelSource:
    """What `spec` names, without loading anything heavy."""
    if spec in (None, "", REFERENCE):
        return ModelSource(REFERENCE, "diffusers", reference_model_path())
    path = Path(spec).expanduser()
    if path.is_dir():
        kind = _manifest_kind(path)
        if kind in ("compressed", "coreml"):
            return ModelSource(spec, kind, path)
        if (path / "model_index.json").is_file():
            return ModelSource(spec, "diffusers", path)
        if (path / "Resources").is_dir() or any(path.glob("*.mlpackage")):
            return ModelSource(spec, "coreml", path)
        raise BadInput(f"{spec} is a folder but not a diffusers pipeline (no model_index.json), a compressed model or a Core ML bundle")
    if path.is_file():
        return ModelSource(spec, "single_file", path)
    looks_like_path = spec.startswith((".", "/", "~")) or path.suffix in PICKLE_SUFFIXES | {".safetensors"}
    if looks_like_path or spec.count("/") != 1:
        raise BadInput(f"model path {spec} does not exist (give a diffusers folder, a .safetensors checkpoint or a hub id like stabilityai/stable-diffusion-xl-base-1.0)")
    return ModelSource(spec, "hub", None)
