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
from .data import REFERENCE_MODEL

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
        return ModelSource(REFERENCE, "diffusers", REFERENCE_MODEL)
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


# ---- loading ----------------------------------------------------------------------------------------
# Pipelines we can run, by model_index.json `_class_name`. Others (SD3, Flux, the SDXL refiner, inpainting UNets…)
# need a different loop and get a BadInput naming these.
FAMILIES = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
}
FAMILY_NAMES = {"sdxl": "Stable Diffusion XL", "sd": "Stable Diffusion 1.x/2.x"}
SUPPORTED_TEXT = "supported: Stable Diffusion XL (base) and Stable Diffusion 1.x/2.x pipelines"
# single-file checkpoints: diffusers' inferred model type → our family
SINGLE_FILE_TYPES = {"xl_base": "sdxl", "playground-v2-5": None, "v1": "sd", "v2": "sd"}
FAMILY_COMPONENTS = {
    "sdxl": ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae", "scheduler"),
    "sd": ("text_encoder", "tokenizer", "unet", "vae", "scheduler"),
}
UNET_MODES = ("dense", "packed")


def _pipeline_class(family: str):
    import diffusers

    return diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline


def model_index(folder: Path) -> dict:
    index = folder / "model_index.json"
    if not index.is_file():
        raise BadInput(f"{folder} is not a diffusers pipeline (no model_index.json)")
    try:
        return json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"{index} is not valid JSON ({exc.__class__.__name__}); re-download or re-save the model")


def detect_family(folder: Path) -> str:
    """'sdxl' or 'sd' from model_index.json; anything else is a BadInput listing what is supported."""
    index = model_index(folder)
    name = index.get("_class_name", "?")
    family = FAMILIES.get(name)
    if family == "sdxl" and not (index.get("text_encoder") or [None, None])[1]:
        family = None  # the SDXL refiner: one text encoder, aesthetic-score conditioning
    if family is None:
        raise BadInput(f"{folder}: model family {name} is not supported ({SUPPORTED_TEXT})")
    missing = [c for c in FAMILY_COMPONENTS[family] if not (folder / c).is_dir()]
    if missing:
        raise BadInput(f"{folder} is an incomplete {FAMILY_NAMES[family]} pipeline: missing {', '.join(missing)}/")
    return family


def hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot folder of a hub id; never downloads (this tool must work offline)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError, OSError…
        raise BadInput(f"{repo_id} is not in the Hugging Face cache; download it first with "
                       f"`huggingface-cli download {repo_id}` (or give a local folder) [{type(exc).__name__}]")
    if not (folder / "model_index.json").is_file():
        raise BadInput(f"the cached copy of {repo_id} has no model_index.json; run `huggingface-cli download {repo_id}`")
    return folder


def _load_compressed_unet(folder: Path, unet_mode: str, dtype):
    try:
        from .palettize.artifact import load_compressed_unet
    except ImportError as exc:
        if exc.name and exc.name.startswith("pocketsd.palettize"):
            raise BadInput(f"{folder} is a compressed model but this build cannot load compressed UNets "
                           "(pocketsd.palettize.artifact is missing)")
        raise
    return load_compressed_unet(folder, mode=unet_mode, dtype=dtype)


class _LazySafetensors(dict):
    """Keys of a .safetensors file; a tensor is read only when looked up (enough for diffusers' type inference)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt")
        super().__init__((k, None) for k in self._file.keys())

    def __getitem__(self, key):
        if key not in self:
            raise KeyError(key)
        return self._file.get_tensor(key)


def precheck(source: ModelSource, allow_pickle: bool = False) -> None:
    """The checks that need no torch/diffusers import (fast failure for bad input): family, pickle gate."""
    if source.kind in ("diffusers", "compressed"):
        detect_family(source.path)
    elif source.kind == "single_file":
        if source.path.suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise BadInput(f"{source.path} is a pickle checkpoint, which can run code when loaded; convert it to "
                           ".safetensors or pass --allow-pickle if you trust it")
        if source.path.suffix not in PICKLE_SUFFIXES | {".safetensors"}:
            raise BadInput(f"{source.path} is not a model: give a diffusers folder, a .safetensors checkpoint or a hub id")


def single_file_family(path: Path, allow_pickle: bool) -> tuple[str, str]:
    """(family, diffusers config repo) of a single-file checkpoint, from its keys."""
    precheck(ModelSource(str(path), "single_file", path), allow_pickle)
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS, infer_diffusers_model_type

    if path.suffix == ".safetensors":
        try:
            keys = _LazySafetensors(path)
        except Exception as exc:
            raise BadInput(f"{path} is not a readable .safetensors file ({type(exc).__name__}: {exc})")
    else:  # a pickle, allowed by precheck
        import torch

        try:
            keys = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise BadInput(f"{path} could not be read as a torch checkpoint ({type(exc).__name__}: {exc})")
        keys = keys.get("state_dict", keys) if isinstance(keys, dict) else {}
    try:
        model_type = infer_diffusers_model_type(keys)
    except Exception:
        model_type = None
    if model_type == "v1" and not any(k.startswith("model.diffusion_model.") for k in keys):
        model_type = None  # diffusers falls back to "v1" for any unknown file; require an LDM UNet at least
    family = SINGLE_FILE_TYPES.get(model_type)
    if family is None:
        raise BadInput(f"{path}: checkpoint type {model_type or 'unknown'} is not supported ({SUPPORTED_TEXT})")
    return family, DIFFUSERS_DEFAULT_PIPELINE_PATHS[model_type]["pretrained_model_name_or_path"]


def _single_file_config(repo: str, path: Path) -> Path:
    """Single-file checkpoints carry weights only; the configs and tokenizers come from the family's diffusers repo,
    which must be in the HF cache (diffusers itself would go online for them, so we look first)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo, local_files_only=True))
        if (folder / "model_index.json").is_file():
            return folder
    except Exception:
        pass
    raise BadInput(f"{path.name} needs the configs of {repo} from the Hugging Face cache; download them once with "
                   f"`huggingface-cli download {repo} --include '*.json' '*.txt'`")


class ModelComponents:
    """One model's components, each loaded on demand and freeable — what `--low-memory` needs.

    Folders (diffusers, compressed, cached hub snapshots) load one component at a time; a single-file checkpoint
    loads as a whole through diffusers and then serves its parts (there is no per-component load from one file).
    """

    def __init__(self, source: ModelSource, *, allow_pickle: bool = False, dtype=None, unet_mode: str = "dense",
                 single_file_config: Path | None = None):
        import torch

        if unet_mode not in UNET_MODES:
            raise BadInput(f"unknown --unet-mode {unet_mode!r}; choose one of {', '.join(UNET_MODES)}")
        self.source, self.dtype, self.unet_mode = source, dtype or torch.float32, unet_mode
        self.allow_pickle = allow_pickle
        self._loaded: dict[str, object] = {}
        self._pipe = None
        if source.kind == "coreml":
            raise BadInput(f"{source.spec} is a Core ML bundle: run it with --backend coreml (macOS)")
        if source.kind == "single_file":
            self.family, repo = single_file_family(source.path, allow_pickle)
            self.folder = Path(single_file_config) if single_file_config else _single_file_config(repo, source.path)
        else:
            self.folder = hub_snapshot(source.spec) if source.kind == "hub" else source.path
            self.family = detect_family(self.folder)
        self.index = model_index(self.folder)

    # configs, without loading weights
    def config(self, name: str) -> dict:
        sub = "scheduler_config.json" if name == "scheduler" else "config.json"
        path = self.folder / name / sub
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInput(f"{path} is missing or not valid JSON ({type(exc).__name__})")

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        return bool(self.index.get("force_zeros_for_empty_prompt", False))

    def get(self, name: str):
        """The loaded component `name` (e.g. "unet", "text_encoder_2", "tokenizer", "scheduler")."""
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def release(self, name: str, collect: bool = True) -> None:
        import gc

        if self._loaded.pop(name, None) is not None:
            if self._pipe is not None:
                setattr(self._pipe, name, None)
            if collect:  # modules hold reference cycles; without a collection their memory waits for the next one
                gc.collect()

    def _load(self, name: str):
        if self.source.kind == "single_file":
            return self._from_single_file(name)
        if name == "unet" and self.source.kind == "compressed":
            return _load_compressed_unet(self.folder, self.unet_mode, self.dtype).eval()
        entry = self.index.get(name)
        if not entry or entry[0] is None:
            raise BadInput(f"{self.folder} has no {name} component")
        import importlib

        library, class_name = entry
        cls = getattr(importlib.import_module(library), class_name)
        sub = self.folder / name
        try:
            if name.startswith("tokenizer"):
                return cls.from_pretrained(sub)
            if name == "scheduler":
                return cls.from_pretrained(sub)
            if library == "transformers":
                return cls.from_pretrained(sub, dtype=self.dtype).eval()
            return cls.from_pretrained(sub, torch_dtype=self.dtype).eval()
        except (OSError, ValueError) as exc:
            raise BadInput(f"could not load {name} from {sub}: {str(exc).splitlines()[0]}")

    def _from_single_file(self, name: str):
        if self._pipe is None or getattr(self._pipe, name, None) is None:
            cls = _pipeline_class(self.family)
            try:
                self._pipe = cls.from_single_file(str(self.source.path), config=str(self.folder), torch_dtype=self.dtype,
                                                  local_files_only=True)
            except (OSError, ValueError) as exc:
                raise BadInput(f"could not load {self.source.path}: {str(exc).splitlines()[0]}")
        return getattr(self._pipe, name)


def load_pipeline(spec: str | None = None, *, allow_pickle: bool = False, dtype=None, unet_mode: str = "dense"):
    """A diffusers pipeline (StableDiffusionXLPipeline or StableDiffusionPipeline) for any model kind we run on torch.

    Compressed folders get their UNet from `pocketsd.palettize.artifact.load_compressed_unet(folder, mode=unet_mode)`;
    single-file checkpoints go through diffusers' `from_single_file` with configs from the HF cache.
    """
    comps = ModelComponents(resolve_model(spec), allow_pickle=allow_pickle, dtype=dtype, unet_mode=unet_mode)
    cls = _pipeline_class(comps.family)
    parts = {name: comps.get(name) for name in FAMILY_COMPONENTS[comps.family]}
    if comps.family == "sdxl":
        return cls(**parts, force_zeros_for_empty_prompt=comps.force_zeros_for_empty_prompt, add_watermarker=False)
    return cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def parameter_summary(module) -> tuple[int, int, str]:
    """(parameters, bytes, dtype) of a torch module."""
    params = list(module.parameters())
    n = sum(p.numel() for p in params)
    nbytes = sum(p.numel() * p.element_size() for p in params)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    return n, nbytes, "/".join(dtypes)


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(Path(folder).glob("*.safetensors"))
    plain = [f for f in files if len(f.name.split(".")) == 2]  # not a variant like *.fp16.safetensors
    return plain or files


def safetensors_stats(folder: Path) -> tuple[int, int, str]:
    """(parameters, bytes, dtypes) of a component folder's safetensors files, from their headers only."""
    from safetensors import safe_open

    n = nbytes = 0
    dtypes: set[str] = set()
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}
    for f in _weight_files(folder):
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                sl = fh.get_slice(key)
                count = 1
                for d in sl.get_shape():
                    count *= d
                dtype = sl.get_dtype()
                n += count
                nbytes += count * sizes.get(dtype, 4)
                dtypes.add(dtype.lower())
    return n, nbytes, "/".join(sorted(dtypes)) or "-"


def describe(path: Path | str) -> str:
    """`pocketsd info` for a diffusers folder (or cached hub id): family, components, parameters, bytes, dtypes."""
    source = resolve_model(str(path))
    folder = hub_snapshot(source.spec) if source.kind == "hub" else source.path
    if source.kind not in ("diffusers", "hub", "compressed"):
        raise BadInput(f"{path} is not a diffusers folder (kind {source.kind})")
    index = model_index(folder)
    family = detect_family(folder)
    lines = [f"{folder}: diffusers pipeline {index.get('_class_name')} — {FAMILY_NAMES[family]}"
             f" (kind {source.kind}, diffusers {index.get('_diffusers_version', '?')})"]
    header = f"  {'component':<16} {'class':<30} {'parameters':>12} {'MB':>9}  dtype"
    lines.append(header)
    total_n = total_b = 0
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        sub = folder / name
        cls = entry[1]
        if not sub.is_dir():
            lines.append(f"  {name:<16} {cls:<30} {'missing':>12}")
            continue
        n, nbytes, dtype = safetensors_stats(sub)
        if n:
            total_n, total_b = total_n + n, total_b + nbytes
            lines.append(f"  {name:<16} {cls:<30} {n:>12,} {nbytes / 1e6:>9.2f}  {dtype}")
        else:
            lines.append(f"  {name:<16} {cls:<30} {'-':>12} {'-':>9}  (no weights: config/vocabulary)")
    lines.append(f"  {'total':<16} {'':<30} {total_n:>12,} {total_b / 1e6:>9.2f}")
    unet = json.loads((folder / "unet" / "config.json").read_text()) if (folder / "unet" / "config.json").is_file() else {}
    vae = json.loads((folder / "vae" / "config.json").read_text()) if (folder / "vae" / "config.json").is_file() else {}
    factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    sample = unet.get("sample_size")
    if sample:
        lines.append(f"  native size {sample * factor}x{sample * factor} px (latents {sample}x{sample}, VAE {factor}×), "
                     f"force_zeros_for_empty_prompt={index.get('force_zeros_for_empty_prompt', False)}")
    return "\n".join(lines)
