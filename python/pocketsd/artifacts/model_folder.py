"""The model folder: diffusers' layout, as PocketSD reads it and copies it.

    <folder>/model_index.json      {"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"], …}
    <folder>/<component>/          config.json (or scheduler_config.json, tokenizer files) and weights

A compressed folder keeps this layout (so diffusers can still read its unchanged parts); only the
compressed components' weights are ours (see compressed.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import BadInput
from ..models.family import FAMILIES, ModelFamily, family_of_index  # ground-floor data (see tests/test_layering.py)

MODEL_INDEX = "model_index.json"
# Component folders holding networks with weights (what `compress --components` can name).
NETWORKS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".msgpack", ".onnx", ".ckpt", ".pt", ".pth", ".xml")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}


def read_model_index(folder: Path) -> dict:
    index = Path(folder) / MODEL_INDEX
    if not index.is_file():
        raise BadInput(f"{folder} is not a diffusers pipeline (no {MODEL_INDEX})")
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{index} is not valid JSON ({type(exc).__name__}); re-download or re-save the model") from None
    if not isinstance(data, dict):
        raise BadInput(f"{index} is not a diffusers model index (not a JSON object)")
    return data


def family_of_folder(folder: Path) -> ModelFamily:
    """The family (`pocketsd.models.family`) of a diffusers model folder, from model_index.json; one the loop
    cannot run, or a pipeline missing a component folder, is a BadInput."""
    index = read_model_index(folder)
    # families sharing a pipeline class (FLUX.1 schnell, dev) differ in their denoiser's config: read it if present
    denoisers = {f.denoiser for f in FAMILIES.values() if index.get("_class_name") in f.pipelines}
    config_file = next((Path(folder) / d / "config.json" for d in sorted(denoisers)
                        if (Path(folder) / d / "config.json").is_file()), None)
    denoiser_config = read_config(folder, config_file.parent.name) if config_file is not None else None
    family = family_of_index(index, folder, denoiser_config)
    missing = [c for c in family.components if not (Path(folder) / c).is_dir()]
    if missing:
        raise BadInput(f"{folder} is an incomplete {family.title} pipeline: missing {', '.join(missing)}/")
    return family


def detect_family(folder: Path) -> str:
    """The name of the folder's model family (what manifests and reports record)."""
    return family_of_folder(folder).name


def components(folder: Path) -> dict[str, tuple[str, str]]:
    """{component: (library, class)} of the model index entries that name a class."""
    out = {}
    for name, entry in read_model_index(folder).items():
        if not name.startswith("_") and isinstance(entry, list) and len(entry) == 2 and entry[0] and entry[1]:
            out[name] = (entry[0], entry[1])
    return out


def read_config(folder: Path, component: str) -> dict:
    sub = "scheduler_config.json" if component == "scheduler" else "config.json"
    path = Path(folder) / component / sub
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path} is missing or not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} is not a config (not a JSON object)")
    return data


def weight_files(component_dir: Path) -> list[Path]:
    """The safetensors files diffusers/transformers would load from a component folder (plain before variants)."""
    files = sorted(Path(component_dir).glob("*.safetensors"))
    plain = [f for f in files if len(f.name.split(".")) == 2]  # not a variant like *.fp16.safetensors
    return plain or files


def safetensors_stats(component_dir: Path) -> tuple[int, int, str]:
    """(parameters, bytes, dtypes) of a component folder's safetensors weights, from their headers only."""
    from safetensors import safe_open

    n = nbytes = 0
    dtypes: set[str] = set()
    for f in weight_files(component_dir):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    sl = fh.get_slice(key)
                    count = 1
                    for d in sl.get_shape():
                        count *= d
                    dtype = sl.get_dtype()
                    n += count
                    nbytes += count * _DTYPE_BYTES.get(dtype, 4)
                    dtypes.add(dtype.lower())
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise BadInput(f"{f} is not a readable safetensors file ({type(exc).__name__}); re-download the model") from None
    return n, nbytes, "/".join(sorted(dtypes)) or "-"


def check_weight_files(folder: Path, components: tuple[str, ...] | list[str] | None = None) -> None:
    """Every safetensors file of the named components (default: all networks) has a whole header and is as
    long as its header says — a truncated download fails here in one line naming the file, not mid-load."""
    for name in components if components is not None else NETWORKS:
        sub = Path(folder) / name
        if sub.is_dir():
            safetensors_stats(sub)


def _copy_component(src: Path, dst: Path) -> None:
    """A component folder's configs, tokenizer files and the one set of weights diffusers loads — not every
    variant a hub snapshot carries (fp16 copies, .bin, flax, onnx, openvino), which would double the size."""
    keep = set(weight_files(src))
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or ".tmp-" in path.name:
            continue
        is_weight = path.suffix in _WEIGHT_SUFFIXES or path.name.endswith(".safetensors.index.json")
        if is_weight and path not in keep:
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


# ControlNets a model folder may ship beside its pipeline's components (not listed in model_index.json), by the
# conditioning each follows: the reference model's sketch one, and the depth one `generate --depth` uses when no
# --controlnet is given.
SHIPPED_CONTROLNETS = {"sketch": "controlnet", "depth": "controlnet_depth"}


def copy_model(source: Path, dest: Path, skip: set[str] = frozenset()) -> list[str]:
    """Copy model_index.json and every component folder but `skip` from `source` into `dest`.

    Returns the relative paths of the copied files."""
    source, dest = Path(source), Path(dest)
    shutil.copy2(source / MODEL_INDEX, dest / MODEL_INDEX)
    for name in read_model_index(source):
        src = source / name
        if name.startswith("_") or name in skip or not src.is_dir():
            continue
        _copy_component(src, dest / name)
    for name in SHIPPED_CONTROLNETS.values():  # ControlNets shipped beside the pipeline's components
        extra = source / name
        if name not in skip and extra.is_dir() and name not in read_model_index(source):
            _copy_component(extra, dest / name)
    return [str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()]
