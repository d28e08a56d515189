"""Loading a model's components, one at a time, from any kind of source `resolve_model` names.

Folders (diffusers, compressed, cached hub snapshots) load one component at a time, so `--low-memory` can free
each after its stage; a compressed component is built from its own state dict (`load_compressed_component`,
the one builder every stage uses). A single-file checkpoint loads whole through diffusers and then serves its
parts (there is no per-component load from one file).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..artifacts import COMPRESSED
from ..artifacts.compressed import CompressedModel, read_compressed_model
from ..artifacts.model_folder import detect_family, read_config, read_model_index
from ..errors import BadInput
from .family import SUPPORTED_TEXT, ModelFamily, family_named, family_of_single_file
from .resolve import PICKLE_SUFFIXES, ModelSource, hub_snapshot, model_folder, precheck, resolve_model

UNET_MODES = ("dense", "packed")


def component_class(folder: Path, name: str):
    """The (library, class) the model index names for component `name`, imported."""
    entry = read_model_index(folder).get(name)
    if not entry or not isinstance(entry, list) or entry[0] is None:
        raise BadInput(f"{folder} has no {name} component")
    library, class_name = entry
    try:
        return getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError):
        raise BadInput(f"{folder}: component {name} is a {library}.{class_name}, which this install cannot load") from None


def skeleton(cls, config: dict):
    """The component's module built from its config with parameters on the meta device (buffers real): no
    random initialisation and no dense copy, ready to be filled from a state dict."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        if cls.__module__.startswith("transformers"):
            return cls(cls.config_class(**config))
        return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})  # diffusers' ConfigMixin


def load_compressed_component(compressed: CompressedModel, name: str, mode: str = "dense", dtype=None,
                              int4_kernel: bool = False, verify: bool = True):
    """A compressed component as its diffusers/transformers module, its compressed layers `CompressedLayer`s."""
    import torch

    from ..palettize.layer import load_compressed

    record = compressed.components[name]
    cls = component_class(compressed.folder, name)
    model = skeleton(cls, compressed.config(name))
    try:
        return load_compressed(model, record.layers, compressed.state_dict(name, verify=verify), mode,
                               dtype or torch.float32, int4_kernel)
    except ValueError as exc:
        raise BadInput(f"{compressed.folder}: the compressed {name} does not fit its config ({exc}); "
                       "re-run `pocketsd compress`") from None


# ---- single-file checkpoints ---------------------------------------------------------------------------
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


def single_file_family(path: Path, allow_pickle: bool) -> tuple[str, str]:
    """(family, diffusers config repo) of a single-file checkpoint, from its keys."""
    precheck(ModelSource(str(path), "single_file", path), allow_pickle)
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS, infer_diffusers_model_type

    if path.suffix == ".safetensors":
        try:
            keys = _LazySafetensors(path)
        except Exception as exc:
            raise BadInput(f"{path} is not a readable .safetensors file ({type(exc).__name__}: {exc})") from None
    else:  # a pickle, allowed by precheck
        import torch

        try:
            keys = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise BadInput(f"{path} could not be read as a torch checkpoint ({type(exc).__name__}: {first})") from None
        keys = keys.get("state_dict", keys) if isinstance(keys, dict) else {}
    try:
        model_type = infer_diffusers_model_type(keys)
    except Exception:
        model_type = None
    if model_type == "v1" and not any(k.startswith("model.diffusion_model.") for k in keys):
        model_type = None  # diffusers falls back to "v1" for any unknown file; require an LDM UNet at least
    family = family_of_single_file(model_type)
    if family is None:
        raise BadInput(f"{path}: checkpoint type {model_type or 'unknown'} is not supported ({SUPPORTED_TEXT})")
    return family.name, DIFFUSERS_DEFAULT_PIPELINE_PATHS[model_type]["pretrained_model_name_or_path"]


def _single_file_config(repo: str, path: Path) -> Path:
    """Single-file checkpoints carry weights only; the configs and tokenizers come from the family's diffusers repo,
    which must be in the HF cache (diffusers itself would go online for them, so we look first)."""
    try:
        return hub_snapshot(repo, hint=" --include '*.json' '*.txt'")
    except BadInput:
        raise BadInput(f"{path.name} needs the configs of {repo} from the Hugging Face cache; download them once with "
                       f"`huggingface-cli download {repo} --include '*.json' '*.txt'`") from None


def pipeline_class(family: ModelFamily):
    """The diffusers pipeline class that assembles `family`'s components."""
    import diffusers

    return getattr(diffusers, family.pipeline_class)


# ---- components ----------------------------------------------------------------------------------------
class ModelComponents:
    """One model's components, each loaded on demand and freeable — what `--low-memory` needs."""

    def __init__(self, source: ModelSource, *, allow_pickle: bool = False, dtype=None, unet_mode: str = "dense",
                 single_file_config: Path | None = None, verify: bool = True, device: str = "cpu"):
        import torch

        if unet_mode not in UNET_MODES:
            raise BadInput(f"unknown --unet-mode {unet_mode!r}; choose one of {', '.join(UNET_MODES)}")
        self.source, self.dtype, self.unet_mode = source, dtype or torch.float32, unet_mode
        self.allow_pickle, self.verify, self.device = allow_pickle, verify, device
        self._loaded: dict[str, object] = {}
        self._pipe = None
        self.compressed: CompressedModel | None = None
        if source.kind == "coreml":
            raise BadInput(f"{source.spec} is a Core ML bundle: run it with --backend coreml (macOS)")
        if source.kind == "single_file":
            self.family, repo = single_file_family(source.path, allow_pickle)
            self.folder = Path(single_file_config) if single_file_config else _single_file_config(repo, source.path)
        else:
            self.folder = model_folder(source)
            self.family = detect_family(self.folder)
            if source.kind == COMPRESSED:
                self.compressed = read_compressed_model(self.folder)
        self.index = read_model_index(self.folder)
        self.model_family = family_named(self.family)  # `family` stays the name (reports record it)

    def config(self, name: str) -> dict:
        """A component's config, without loading weights."""
        return read_config(self.folder, name)

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        return bool(self.index.get("force_zeros_for_empty_prompt", False))

    def pipeline_kwargs(self) -> dict:
        """What the family's diffusers pipeline takes beyond its components (no watermarker, no safety checker)."""
        extra = dict(self.model_family.pipeline_kwargs)
        if self.model_family.force_zeros_for_empty_prompt:  # only the pipelines that zero an empty prompt take it
            extra["force_zeros_for_empty_prompt"] = self.force_zeros_for_empty_prompt
        return extra

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def get(self, name: str):
        """The loaded component `name` (e.g. "unet", "text_encoder_2", "tokenizer", "scheduler")."""
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def put(self, name: str, module) -> None:
        """Replace a loaded component (after a transform such as a LoRA or a device move)."""
        self._loaded[name] = module

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
        if self.compressed is not None and name in self.compressed.components:
            mode = self.unet_mode if name == "unet" else "dense"
            return load_compressed_component(self.compressed, name, mode, self.dtype, verify=self.verify).eval()
        cls = component_class(self.folder, name)
        sub = self.folder / name
        if self.compressed is not None and self.verify:
            # the components a compressed folder carries unchanged (VAE, tokenizers…) are recorded in its manifest too
            self.compressed.verify([rel for rel in self.compressed.files if rel.startswith(f"{name}/")])
        try:
            if name.startswith("tokenizer") or name == "scheduler":
                return cls.from_pretrained(sub)
            if cls.__module__.startswith("transformers"):
                return cls.from_pretrained(sub, dtype=self.dtype).eval()
            return cls.from_pretrained(sub, torch_dtype=self.dtype).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInput(f"could not load {name} from {sub}: {first[:200]}") from None

    def _from_single_file(self, name: str):
        if self._pipe is None or getattr(self._pipe, name, None) is None:
            cls = pipeline_class(self.model_family)
            try:
                self._pipe = cls.from_single_file(str(self.source.path), config=str(self.folder), torch_dtype=self.dtype,
                                                  local_files_only=True)
            except (OSError, ValueError, RuntimeError) as exc:
                raise BadInput(f"could not load {self.source.path}: {str(exc).splitlines()[0]}") from None
        return getattr(self._pipe, name)


def load_pipeline(spec: str | None = None, *, allow_pickle: bool = False, dtype=None, unet_mode: str = "dense"):
    """A diffusers pipeline (StableDiffusionXLPipeline or StableDiffusionPipeline) for any model kind torch runs."""
    comps = ModelComponents(resolve_model(spec), allow_pickle=allow_pickle, dtype=dtype, unet_mode=unet_mode)
    parts = {name: comps.get(name) for name in comps.model_family.components}
    return pipeline_class(comps.model_family)(**parts, **comps.pipeline_kwargs())


__all__ = ["ModelComponents", "load_pipeline", "load_compressed_component", "component_class", "skeleton",
           "single_file_family", "pipeline_class", "UNET_MODES", "PICKLE_SUFFIXES"]
