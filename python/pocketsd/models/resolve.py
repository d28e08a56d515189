"""What a `--model` argument names, without loading anything heavy.

Kinds: the embedded reference model (default), a diffusers folder, a compressed folder (`pocketsd.json` kind
"compressed"), a Core ML bundle (kind "coreml"), a single-file checkpoint, or a hub id resolved through the
Hugging Face cache (never downloaded: this tool works offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifacts import COMPRESSED, COREML, manifest_kind
from ..artifacts.model_folder import MODEL_INDEX, detect_family
from ..data import REFERENCE_MODEL
from ..errors import BadInput
from .family import SUPPORTED_TEXT

REFERENCE = "reference"
PICKLE_SUFFIXES = {".ckpt", ".bin", ".pt", ".pth", ".pkl"}
KINDS = ("diffusers", COMPRESSED, COREML, "single_file", "hub")


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: str  # one of KINDS
    path: Path | None  # None only for a hub id not yet looked up


def resolve_model(spec: str | None) -> ModelSource:
    """What `spec` names. Folders are told apart by their manifest; files by their suffix."""
    if spec in (None, "", REFERENCE):
        return ModelSource(REFERENCE, "diffusers", REFERENCE_MODEL)
    path = Path(spec).expanduser()
    if path.is_dir():
        kind = manifest_kind(path)
        if kind in (COMPRESSED, COREML):
            return ModelSource(spec, kind, path)
        if kind is not None:
            raise BadInput(f"{spec} has a pocketsd.json of unknown kind {kind!r}; give a model folder, a compressed "
                           "folder or a Core ML bundle")
        if (path / MODEL_INDEX).is_file():
            return ModelSource(spec, "diffusers", path)
        if (path / "Resources").is_dir() or any(path.glob("*.mlpackage")):
            return ModelSource(spec, COREML, path)
        raise BadInput(f"{spec} is a folder but not a diffusers pipeline (no {MODEL_INDEX}), a compressed model "
                       "or a Core ML bundle")
    if path.is_file():
        if path.suffix not in PICKLE_SUFFIXES | {".safetensors"}:
            raise BadInput(f"{spec} is not a model checkpoint (.safetensors, or pickle with --allow-pickle); give a "
                           "diffusers folder, a compressed folder, a Core ML bundle or a hub id")
        return ModelSource(spec, "single_file", path)
    looks_like_path = spec.startswith((".", "/", "~")) or path.suffix in PICKLE_SUFFIXES | {".safetensors"}
    if looks_like_path or spec.count("/") != 1:
        raise BadInput(f"model path {spec} does not exist (give a diffusers folder, a .safetensors checkpoint or a "
                       "hub id like stabilityai/stable-diffusion-xl-base-1.0)")
    return ModelSource(spec, "hub", None)


def hub_snapshot(repo_id: str, *, need: str = MODEL_INDEX, hint: str = "") -> Path:
    """The cached snapshot folder of a hub id (the one place the Hugging Face cache is looked up)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError, OSError…
        raise BadInput(f"{repo_id} is not in the Hugging Face cache; download it first with "
                       f"`huggingface-cli download {repo_id}{hint}` (or give a local folder) [{type(exc).__name__}]") from None
    if need and not (folder / need).is_file():
        raise BadInput(f"the cached copy of {repo_id} has no {need}; run `huggingface-cli download {repo_id}{hint}`")
    return folder


def model_folder(source: ModelSource) -> Path:
    """The local diffusers-layout folder of a folder-like source (a hub id is looked up in the cache)."""
    if source.kind == "hub":
        return hub_snapshot(source.spec)
    if source.kind in ("diffusers", COMPRESSED):
        return Path(source.path)
    raise BadInput(f"{source.spec} is a {source.kind.replace('_', '-')} model, not a model folder")


def precheck(source: ModelSource, allow_pickle: bool = False) -> None:
    """The checks that need no torch/diffusers import (fast failure for bad input): family, pickle gate."""
    if source.kind in ("diffusers", COMPRESSED):
        detect_family(source.path)
    elif source.kind == "single_file" and source.path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise BadInput(f"{source.path} is a pickle checkpoint, which can run code when loaded; convert it to "
                       ".safetensors or pass --allow-pickle if you trust it")


__all__ = ["ModelSource", "resolve_model", "hub_snapshot", "model_folder", "precheck", "REFERENCE",
           "PICKLE_SUFFIXES", "SUPPORTED_TEXT"]
