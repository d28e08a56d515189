"""The compressed model folder: layout, manifest (format 2), size accounting, typed reader and atomic writer.

Layout
------
    <folder>/pocketsd.json                         manifest, kind "compressed"
    <folder>/model_index.json, scheduler/, tokenizer*/, and every component that was not compressed
                                                   copied from the source diffusers folder
    <folder>/<component>/config.json               the component's own config (diffusers/transformers)
    <folder>/<component>/pocketsd_<component>.safetensors
                                                   its compressed state dict (never named like a diffusers
                                                   checkpoint, so diffusers cannot mistake it for dense weights)

A compressed component's safetensors file *is* the state dict of the model whose compressed Linear/Conv2d
layers are `pocketsd.palettize.layer` modules: for each such layer N (its module path, e.g.
"down_blocks.1.attentions.0.proj_in"), with weight shape (out, in) or (out, in, kh, kw) and k = kh·kw:

    N.codes         uint8 [packed]   the residual's b-bit codes over the weight shape, row-major, packed LSB-first
                                     (`palettize.packing`); palette codes are unsigned indices, int codes signed
                                     two's complement
    N.lut           fp16 (out/G, 2^b)             palette: one table per group of G consecutive output channels
    N.scales        fp16 (out, in/B[, kh, kw])    int: one scale per block of B consecutive input channels
    N.lowrank_up    fp16 (out, r)                 L1 (absent when r = 0)
    N.lowrank_down  fp16 (r, in·k)                L2, columns in the order of weight.reshape(out, -1)
    N.smooth        fp16 (in,)                    s (absent when α = 0, s ≡ 1)
    N.bias          fp16 (out,)                   the layer's bias (absent if none)

A text encoder's token embedding (vocab, dim) may be such a layer too (kind "embedding": codes and scales or lut
with each token's row as an output channel; no factors, smoothing or bias).
Every other parameter and buffer is stored under its own key in fp16 ("fp16 leftovers"). The maths those
tensors mean (exactly, bit for bit with Core ML's constexpr ops) is the layer's: `palettize/layer.py`.

Manifest (format 2)
-------------------
    kind, format_version, pocketsd_version, versions, created_utc, source_model {spec, path},
    components { <name>: {weights, config, library, class_name, recipe, calibration,
                          layers [LayerRecord…], fp16_layers [names], accounting {…}} },
    files {relative path: sha256} for every file in the folder, loras [...], timings_s {...}
Format 1 (pocketsd 0.1.0) held the UNet alone at the top level; it is migrated on read.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BadInput
from . import integrity
from .atomic import atomic_dir, kill_point, write_json
from .manifest import COMPRESSED, FORMAT_VERSIONS, MANIFEST, read_manifest
from .model_folder import copy_model, read_model_index

LAYER_TENSORS = ("codes", "lut", "scales", "lowrank_up", "lowrank_down", "smooth", "bias")
PALETTE, INT = "palette", "int4"
QUANTIZERS = (PALETTE, INT)


def weights_path(component: str) -> str:
    return f"{component}/pocketsd_{component}.safetensors"


def config_path(component: str) -> str:
    return f"{component}/config.json"


@dataclass
class LayerRecord:
    """One compressed layer's row in the manifest: everything needed to rebuild it besides its tensors."""

    name: str
    kind: str  # "linear" | "conv" | "embedding" (a token table: shape (vocab, dim), rows are "output channels")
    shape: tuple[int, ...]  # weight shape
    quantizer: str  # "palette" | "int4"
    bits: int
    group_size: int | None = None  # palette: output channels per table
    block_size: int | None = None  # int: input channels per scale
    rank: int = 0
    alpha: float = 0.0
    smoothed: bool = False
    has_bias: bool = False
    snr_db: float | None = None  # measured output SNR on calibration inputs
    bytes: int | None = None  # stored tensor bytes (filled in when written)

    def __post_init__(self):
        self.shape = tuple(int(d) for d in self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if d["snr_db"] is not None:
            d["snr_db"] = round(float(d["snr_db"]), 3)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerRecord":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ComponentRecord:
    """A compressed component as the manifest describes it."""

    name: str
    weights: str
    config: str
    library: str = "diffusers"
    class_name: str = "UNet2DConditionModel"
    layers: list[LayerRecord] = field(default_factory=list)
    fp16_layers: list[str] = field(default_factory=list)
    accounting: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [layer.to_dict() for layer in self.layers]
        return d

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "ComponentRecord":
        return cls(name=name, weights=d["weights"], config=d["config"], library=d.get("library", "diffusers"),
                   class_name=d.get("class_name", "UNet2DConditionModel"),
                   layers=[LayerRecord.from_dict(x) for x in d.get("layers", [])],
                   fp16_layers=list(d.get("fp16_layers", [])), accounting=dict(d.get("accounting", {})),
                   recipe=dict(d.get("recipe", {})), calibration=dict(d.get("calibration", {})))


# ---- size accounting -----------------------------------------------------------------------------
def file_metadata(component: str) -> dict[str, str]:
    """The `__metadata__` of a compressed component's safetensors file."""
    return {"format": f"pocketsd-compressed-{component}", "format_version": str(FORMAT_VERSIONS[COMPRESSED])}


def offset_digits(max_file_bytes: int) -> int:
    """Digits of the largest data offset a file of at most `max_file_bytes` can hold."""
    return len(str(max(int(max_file_bytes), 1)))


def header_entry_bytes(key: str, shape, dtype: str = "F16", digits: int = 11) -> int:
    """Bytes one tensor adds to a safetensors header: its compact JSON entry and a comma. safetensors writes
    `"key":{"dtype":..,"shape":[..],"data_offsets":[begin,end]}` with every offset in full, so names ~70 characters
    long (a UNet's) cost ~115 bytes each, not 90: the rough estimate undercounted a 4.5-bit budget by 0.025 bits."""
    entry = {key: {"dtype": dtype, "shape": [int(d) for d in shape], "data_offsets": [10 ** (digits - 1)] * 2}}
    return len(json.dumps(entry, separators=(",", ":"))) - 1


def header_bytes(entries, metadata: dict | None = None, digits: int = 11) -> int:
    """The whole header of a file holding `entries` ((key, shape, dtype) triples): its 8-byte length, the JSON
    object with `__metadata__`, and up to 7 bytes of padding (safetensors aligns the data to 8 bytes)."""
    meta = len(json.dumps({"__metadata__": metadata}, separators=(",", ":"))) - 1 if metadata else 0
    return 8 + 2 + meta + sum(header_entry_bytes(k, s, d, digits) for k, s, d in entries) + 7


def compressed_layer_entries(name: str, shape, bits: int, quantizer: str, group_size: int, block_size: int,
                             rank: int, smoothed: bool, has_bias: bool) -> list[tuple[str, tuple, str]]:
    """(key, shape, dtype) of every tensor one compressed layer stores (palettize/layer.py's buffers)."""
    out, cin, numel = shape[0], shape[1], math.prod(shape)
    entries = [(f"{name}.codes", (math.ceil(numel * bits / 8),), "U8")]
    if quantizer == PALETTE:
        entries.append((f"{name}.lut", (out // group_size, 1 << bits), "F16"))
    else:
        entries.append((f"{name}.scales", (out, cin // block_size, *shape[2:]), "F16"))
    if rank:
        entries += [(f"{name}.lowrank_up", (out, rank), "F16"), (f"{name}.lowrank_down", (rank, numel // out), "F16")]
    if smoothed:
        entries.append((f"{name}.smooth", (cin,), "F16"))
    if has_bias:
        entries.append((f"{name}.bias", (out,), "F16"))
    return entries


def layer_of_key(key: str, layer_names: set[str]) -> tuple[str, str] | None:
    """(layer name, tensor kind) when `key` is one of a compressed layer's tensors."""
    head, _, tail = key.rpartition(".")
    if tail in LAYER_TENSORS and head in layer_names:
        return head, tail
    return None


def accounting(state_dict: dict, layers: list[LayerRecord], container_bytes: int | None = None) -> dict:
    """Bytes by category and effective bits per parameter of one compressed component.

    Every stored tensor counts: codes, tables, scales, low-rank factors, smoothing, biases and fp16 leftovers;
    `container_bytes` is the safetensors header (measured after writing, estimated before). Bits per parameter
    divide 8·total by all parameters of the source component (compressed weights and biases + leftovers).
    """
    names = {layer.name for layer in layers}
    cat = {"codes": 0, "lut": 0, "scales": 0, "lowrank": 0, "smooth": 0, "bias": 0, "fp16_leftover": 0}
    params = sum(layer.numel + (layer.shape[0] if layer.has_bias else 0) for layer in layers)
    for key, tensor in state_dict.items():
        nbytes = stored_bytes(tensor)
        owner = layer_of_key(key, names)
        if owner is None:
            cat["fp16_leftover"] += nbytes
            params += tensor.numel()
        else:
            cat["lowrank" if owner[1].startswith("lowrank") else owner[1]] += nbytes
    payload = sum(cat.values())
    if container_bytes is None:
        # before writing: the header priced from the real keys, shapes and dtypes, as the budget planner prices it
        entries = [(k, tuple(t.shape), "F16" if t.is_floating_point() else "U8") for k, t in state_dict.items()]
        container_bytes = header_bytes(entries, digits=offset_digits(payload))
    total = payload + container_bytes
    params = max(params, 1)
    return {"params": params, "bytes_by_category": cat, "payload_bytes": payload, "container_bytes": container_bytes,
            "total_bytes": total, "fp16_bytes": 2 * params, "bits_per_param": 8 * total / params,
            "payload_bits_per_param": 8 * payload / params, "compression_vs_fp16": 2 * params / total}


def stored_bytes(tensor) -> int:
    """Bytes a tensor takes in the file: every float tensor is stored in fp16, codes as they are."""
    return tensor.numel() * (2 if tensor.is_floating_point() else tensor.element_size())


def layer_bytes(state_dict: dict, name: str) -> int:
    return sum(stored_bytes(t) for k, t in state_dict.items() if k.rpartition(".")[0] == name
               and k.rpartition(".")[2] in LAYER_TENSORS)


# ---- reading ---------------------------------------------------------------------------------------
def _migrate_v1(manifest: dict, folder: Path) -> dict:
    """Format 1 held the UNet alone: its layers, fp16 layers and accounting at the top level, no file hashes."""
    unet = manifest.pop("unet", {}) or {}
    acc = dict(manifest.pop("accounting", {}))
    if "unet_params" in acc:
        acc["params"] = acc.pop("unet_params")
    component = {"weights": unet.get("weights", weights_path("unet")), "config": unet.get("config", config_path("unet")),
                 "library": "diffusers", "class_name": "UNet2DConditionModel", "layers": manifest.pop("layers", []),
                 "fp16_layers": manifest.pop("fp16_layers", []), "accounting": acc,
                 "recipe": manifest.get("recipe", {}), "calibration": manifest.get("calibration", {})}
    manifest["components"] = {"unet": component}
    manifest.setdefault("files", {})  # format 1 recorded no hashes: nothing to verify
    return manifest


@dataclass
class CompressedModel:
    """A compressed folder, read through its manifest. Tensors are loaded on request (`state_dict`)."""

    folder: Path
    manifest: dict
    components: dict[str, ComponentRecord]

    @property
    def source(self) -> dict:
        return dict(self.manifest.get("source_model") or {})

    @property
    def loras(self) -> list[dict]:
        return list(self.manifest.get("loras", []))

    @property
    def recipe(self) -> dict:
        return dict(self.manifest.get("recipe") or {})

    @property
    def files(self) -> dict[str, str]:
        return dict(self.manifest.get("files") or {})

    def verify(self, only: list[str] | None = None) -> None:
        """Check recorded sha256 digests (all files, or the relative paths in `only`)."""
        integrity.verify(self.folder, self.files, only, what="compressed model")

    def state_dict(self, component: str, *, verify: bool = True, device: str = "cpu") -> dict:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        record = self.components.get(component)
        if record is None:
            raise BadInput(f"{self.folder} has no compressed {component}; it has: {', '.join(self.components)}")
        path = self.folder / record.weights
        if not path.is_file():
            raise BadInput(f"{self.folder} lacks {record.weights}; the compressed folder is incomplete, re-run `pocketsd compress`")
        if verify:  # the weights and the component's config, streamed through sha256 before anything parses them
            self.verify([record.weights] + [rel for rel in self.files if rel.startswith(f"{component}/")])
        try:
            return load_file(str(path), device=device)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise BadInput(f"{path} is not a readable safetensors file ({type(exc).__name__}); re-run `pocketsd compress`") from None

    def config(self, component: str) -> dict:
        path = self.folder / self.components[component].config
        if not path.is_file():  # missing, a folder, or a FIFO (which would block the read below)
            raise BadInput(f"{path} is missing or not a regular file; re-run `pocketsd compress`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BadInput(f"{path} is missing or not valid JSON ({type(exc).__name__}); re-run `pocketsd compress`") from None
        if not isinstance(data, dict):
            raise BadInput(f"{path} is not a config (not a JSON object); re-run `pocketsd compress`")
        return data


def is_compressed(folder: Path) -> bool:
    from .manifest import manifest_kind

    return manifest_kind(folder) == COMPRESSED


def read_compressed_model(folder: Path) -> CompressedModel:
    folder = Path(folder)
    manifest = read_manifest(folder, COMPRESSED, {1: _migrate_v1})
    raw = manifest.get("components")
    if not isinstance(raw, dict) or not raw:
        raise BadInput(f"{folder}/{MANIFEST} lists no compressed components; re-run `pocketsd compress`")
    try:
        comps = {name: ComponentRecord.from_dict(name, d) for name, d in raw.items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"{folder}/{MANIFEST} has a malformed component record ({type(exc).__name__}: {exc}); "
                       "re-run `pocketsd compress`") from None
    return CompressedModel(folder, manifest, comps)


# ---- writing ---------------------------------------------------------------------------------------
@dataclass
class ComponentPayload:
    """One compressed component to write: its state dict (the layer modules' tensors + fp16 leftovers)."""

    state_dict: dict
    config: dict
    layers: list[LayerRecord]
    fp16_layers: list[str] = field(default_factory=list)
    library: str = "diffusers"
    class_name: str = "UNet2DConditionModel"
    recipe: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)


def versions() -> dict:
    import diffusers
    import safetensors
    import torch

    from .. import __version__

    return {"pocketsd": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def _write_component(tmp: Path, name: str, payload: ComponentPayload) -> dict:
    import torch
    from safetensors.torch import save_file

    (tmp / name).mkdir(parents=True, exist_ok=True)
    write_json(tmp / config_path(name), payload.config)
    layer_names = {layer.name for layer in payload.layers}
    tensors = {}
    for key, t in payload.state_dict.items():
        # codes stay uint8; every float tensor is stored in fp16 (the format's precision for tables,
        # factors, smoothing, biases and leftovers)
        t = t.detach().cpu()
        tensors[key] = (t.to(torch.float16) if t.is_floating_point() else t).contiguous()
    missing = [layer.name for layer in payload.layers if f"{layer.name}.codes" not in tensors]
    if missing:
        raise ValueError(f"{name}: compressed layers without codes in the state dict, e.g. {missing[0]}")
    path = tmp / weights_path(name)
    save_file(tensors, str(path), metadata=file_metadata(name))
    path.chmod(0o644)
    estimate = accounting(tensors, payload.layers)
    acc = accounting(tensors, payload.layers, container_bytes=path.stat().st_size - estimate["payload_bytes"])
    acc["file_bytes"] = path.stat().st_size
    records = []
    for layer in payload.layers:
        rec = LayerRecord.from_dict(layer.to_dict())
        rec.bytes = layer_bytes(tensors, layer.name)
        records.append(rec)
    assert all(r.name in layer_names for r in records)
    return ComponentRecord(name, weights_path(name), config_path(name), payload.library, payload.class_name, records,
                           list(payload.fp16_layers), acc, dict(payload.recipe), dict(payload.calibration)).to_dict()


def write_compressed_model(out: Path, copy_from: Path, components: dict[str, ComponentPayload], *,
                           source: dict, extra: dict | None = None, keep: dict[str, dict] | None = None) -> dict:
    """Write a complete compressed folder at `out` atomically. Returns the manifest.

    copy_from: the folder whose other components are copied unchanged (the source diffusers folder, or the
    compressed folder being rewritten by `lora merge`). keep: component records of `copy_from` that stay
    compressed as they are (their weight files are among the copied ones).
    """
    keep = dict(keep or {})
    with atomic_dir(Path(out)) as tmp:
        copy_model(Path(copy_from), tmp, skip=set(components))
        kill_point("compressed:copied")
        records = dict(keep)
        for name, payload in components.items():
            records[name] = _write_component(tmp, name, payload)
            kill_point(f"compressed:{name}")
        order = [n for n in read_model_index(tmp) if n in records] + [n for n in records if n not in read_model_index(tmp)]
        total = sum(records[n]["accounting"]["total_bytes"] for n in order)
        params = sum(records[n]["accounting"]["params"] for n in order)
        first = records[order[0]]
        manifest = {
            "kind": COMPRESSED, "format_version": FORMAT_VERSIONS[COMPRESSED], "pocketsd_version": versions()["pocketsd"],
            "versions": versions(), "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_model": source, "recipe": first.get("recipe", {}),
            "components": {n: records[n] for n in order},
            "accounting": {"components": order, "total_bytes": total, "params": params,
                           "bits_per_param": 8 * total / max(params, 1)},
        }
        manifest.update(extra or {})
        files = [str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST]
        manifest["files"] = integrity.record_files(tmp, files)
        write_json(tmp / MANIFEST, manifest)
    return manifest
