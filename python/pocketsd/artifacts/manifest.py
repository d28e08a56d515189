"""`pocketsd.json`: the manifest every PocketSD artifact carries — its name, kinds and versions, checked on read.

A manifest is a JSON object with at least `kind` ("compressed" | "coreml") and `format_version`. Readers
accept every version up to today's: older ones are migrated in memory (the migrations live with their kind,
in `compressed.py` and `bundle.py`); a newer or foreign one is refused in one line that says what it is and
what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import BadInput

MANIFEST = "pocketsd.json"
COMPRESSED, COREML = "compressed", "coreml"
# Version history — compressed: 1 the UNet alone (layers at the top level); 2 per-component records and
# sha256 of every file. coreml: 1 components with inputs/outputs; 2 stages, weight bytes, the memory plan
# and everything the pipeline needs (scheduler, tokenizers, VAE factors) recorded instead of looked up.
FORMAT_VERSIONS = {COMPRESSED: 2, COREML: 2}
MAKERS = {COMPRESSED: "pocketsd compress", COREML: "pocketsd convert"}
_NAMES = {COMPRESSED: "a compressed model folder", COREML: "a Core ML bundle"}


def manifest_kind(folder: Path) -> str | None:
    """The `kind` of a folder's manifest, None when it has none (a plain model folder, say)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return _load(path).get("kind")


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    # RecursionError: a few kB of "[[[[…" nest deeper than the parser's stack; ValueError covers JSONDecodeError and
    # numbers too long to convert
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadInput(f"{path} is not a readable PocketSD manifest ({type(exc).__name__}); "
                       "re-create the folder with `pocketsd compress` or `pocketsd convert`") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} is not a PocketSD manifest (not a JSON object)")
    return data


def read_manifest(folder: Path, kind: str, migrations: dict[int, Callable[[dict, Path], dict]] | None = None) -> dict:
    """The manifest of `folder`, checked to be of `kind` and migrated to today's `format_version`.

    `migrations[v]` turns a version-v manifest into version v+1.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BadInput(f"{folder} is not {_NAMES[kind]} (no {MANIFEST}); make one with `{MAKERS[kind]}`")
    manifest = _load(path)
    found = manifest.get("kind")
    if not isinstance(found, str):  # a list or an object would not even name itself in the message
        found = None
    if found != kind:
        what = _NAMES.get(found, f"a {found!r} folder" if found else "an unknown folder")
        raise BadInput(f"{folder} is {what}, not {_NAMES[kind]}; give {_NAMES[kind]} made by `{MAKERS[kind]}`")
    try:
        version = int(manifest.get("format_version", 0))
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(Infinity)
        version = 0
    today = FORMAT_VERSIONS[kind]
    if version > today:
        raise BadInput(f"{folder} is {_NAMES[kind]} in format {version}, newer than this pocketsd reads "
                       f"(format {today}); upgrade pocketsd")
    if version < 1 or (version < today and not all(v in (migrations or {}) for v in range(version, today))):
        raise BadInput(f"{folder} is {_NAMES[kind]} in an old format ({version}) this pocketsd cannot read; "
                       f"re-create it with `{MAKERS[kind]}`")
    for v in range(version, today):
        try:
            manifest = migrations[v](manifest, folder)
        except (AttributeError, TypeError, ValueError, KeyError, RecursionError) as exc:
            raise BadInput(f"{path} (format {v}) is malformed and cannot be read ({type(exc).__name__}); "
                           f"re-create it with `{MAKERS[kind]}`") from None
        manifest["format_version"] = v + 1
        manifest.setdefault("migrated_from", version)
    check_structure(folder, manifest, kind)
    return manifest


# ---- structure: every field a reader or its callers use has the type they expect ---------------------------
# A manifest is written by PocketSD, but a reader still meets hand-edited, damaged or hostile ones; a wrong type
# would surface far away as a traceback (`dict(7)`, `None.items()`), and a path out of the folder would make the
# integrity check read (and hash) files that are not the artifact's. Only what is present is checked (formats
# gained fields over time), and nothing is changed.
_INT_MAX = 2**53  # any size, count or dimension a real artifact records; JSON numbers past it lose precision


class _Check:
    def __init__(self, folder: Path, kind: str):
        self.path, self.kind = Path(folder) / MANIFEST, kind

    def fail(self, where: str, what: str):
        raise BadInput(f"{self.path}: {where} {what}; re-create it with `{MAKERS[self.kind]}`")

    def dict(self, value, where: str, required: bool = True) -> dict:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.fail(where, "must be a JSON object")
        return value

    def list(self, value, where: str) -> list:
        if not isinstance(value, list):
            self.fail(where, "must be a list")
        return value

    def str(self, value, where: str) -> str:
        if not isinstance(value, str):
            self.fail(where, "must be a string")
        return value

    def int(self, value, where: str, low: int = 0, high: int = _INT_MAX) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(where, f"must be a whole number in {low}..{high}")
        return value

    def number(self, value, where: str) -> None:
        import math

        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(where, "must be a finite number")

    def relpath(self, value, where: str) -> str:
        """A path inside the artifact's folder: relative, no `..`, no NUL (the integrity check opens it)."""
        self.str(value, where)
        parts = Path(value).parts
        if not value or "\x00" in value or Path(value).is_absolute() or ".." in parts or value.startswith("~"):
            self.fail(where, f"{value[:60]!r} is not a path inside the folder")
        return value

    def digests(self, value, where: str) -> None:
        for rel, digest in self.dict(value, where).items():
            self.relpath(rel, f"{where} key")
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                self.fail(f"{where}[{rel[:60]!r}]", "must be a sha256 (64 hex digits)")


def check_structure(folder: Path, manifest: dict, kind: str) -> None:
    """BadInput naming the first field whose type or value no reader of `kind` could use (see above)."""
    c = _Check(folder, kind)
    for key in ("source_model", "recipe", "versions", "accounting", "memory_plan", "options", "timings_s"):
        c.dict(manifest.get(key), key, required=False)
    if "files" in manifest:
        c.digests(manifest["files"], "files")
    if "loras" in manifest:
        for i, rec in enumerate(c.list(manifest["loras"], "loras")):
            c.dict(rec, f"loras[{i}]")
    if kind == COREML:
        if "model_type" in manifest:
            c.str(manifest["model_type"], "model_type")
        for key in ("image_size", "latent_size"):
            if manifest.get(key) is not None:
                for d in c.list(manifest[key], key):
                    c.int(d, key, 1, 2**31 - 1)
        for key in ("vae_scaling_factor", "vae_shift_factor"):
            if manifest.get(key) is not None:
                c.number(manifest[key], key)
        for i, tok in enumerate(c.list(manifest.get("tokenizers", []), "tokenizers")):
            c.dict(tok, f"tokenizers[{i}]")
        c.dict(manifest.get("scheduler_config"), "scheduler_config", required=False)
    components = c.dict(manifest.get("components"), "components") if "components" in manifest else {}
    for name, comp in components.items():
        where = f"components[{name[:60]!r}]"
        comp = c.dict(comp, where)
        (_compressed_component if kind == COMPRESSED else _coreml_component)(c, name, comp, where)


def _compressed_component(c: _Check, name: str, comp: dict, where: str) -> None:
    for key in ("weights", "config"):
        if key not in comp:
            c.fail(where, f"has no {key!r}")
        c.relpath(comp[key], f"{where}.{key}")
    for key in ("library", "class_name"):
        if key in comp:
            c.str(comp[key], f"{where}.{key}")
    for key in ("accounting", "recipe", "calibration"):
        c.dict(comp.get(key), f"{where}.{key}", required=False)
    for i, layer_name in enumerate(c.list(comp.get("fp16_layers", []), f"{where}.fp16_layers")):
        c.str(layer_name, f"{where}.fp16_layers[{i}]")
    for i, layer in enumerate(c.list(comp.get("layers", []), f"{where}.layers")):
        at = f"{where}.layers[{i}]"
        layer = c.dict(layer, at)
        for key in ("name", "kind", "quantizer"):
            c.str(layer.get(key), f"{at}.{key}")
        shape = c.list(layer.get("shape"), f"{at}.shape")
        if not 1 <= len(shape) <= 4:
            c.fail(f"{at}.shape", "must have 1 to 4 dimensions")
        for d in shape:
            c.int(d, f"{at}.shape", 1, 2**31 - 1)
        c.int(layer.get("bits"), f"{at}.bits", 1, 16)
        for key in ("group_size", "block_size"):
            if layer.get(key) is not None:
                c.int(layer[key], f"{at}.{key}", 1, 2**31 - 1)
        if "rank" in layer:
            c.int(layer["rank"], f"{at}.rank", 0, 2**31 - 1)
        for key in ("alpha", "snr_db"):
            if layer.get(key) is not None:
                c.number(layer[key], f"{at}.{key}")
        for key in ("smoothed", "has_bias"):
            if key in layer and not isinstance(layer[key], bool):
                c.fail(f"{at}.{key}", "must be true or false")
        if layer.get("bytes") is not None:
            c.int(layer["bytes"], f"{at}.bytes")


def _coreml_component(c: _Check, name: str, comp: dict, where: str) -> None:
    from .bundle import stage_of

    try:
        stage_of(name)  # a package Apple's pipeline loads, or controlnet/<Name>
    except ValueError:
        c.fail(where, "is not a Core ML package PocketSD writes")
    if "file" in comp:
        c.relpath(comp["file"], f"{where}.file")
    if "stage" in comp:
        c.str(comp["stage"], f"{where}.stage")
    for key in ("weight_bytes", "bytes"):
        if comp.get(key) is not None:
            c.int(comp[key], f"{where}.{key}")
    if "sha256" in comp:
        c.digests(comp["sha256"], f"{where}.sha256")
    if comp.get("functions") is not None:
        for i, fn in enumerate(c.list(comp["functions"], f"{where}.functions")):
            c.str(fn, f"{where}.functions[{i}]")
    for key in ("inputs", "outputs"):
        for i, spec in enumerate(c.list(comp.get(key, []), f"{where}.{key}")):
            at = f"{where}.{key}[{i}]"
            spec = c.dict(spec, at)
            c.str(spec.get("name"), f"{at}.name")
            for d in c.list(spec.get("shape") or [], f"{at}.shape"):
                c.int(d, f"{at}.shape", 0, 2**31 - 1)
            if "dtype" in spec:
                c.str(spec["dtype"], f"{at}.dtype")
