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
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
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
    if found != kind:
        what = _NAMES.get(found, f"a {found!r} folder" if found else "an unknown folder")
        raise BadInput(f"{folder} is {what}, not {_NAMES[kind]}; give {_NAMES[kind]} made by `{MAKERS[kind]}`")
    try:
        version = int(manifest.get("format_version", 0))
    except (TypeError, ValueError):
        version = 0
    today = FORMAT_VERSIONS[kind]
    if version > today:
        raise BadInput(f"{folder} is {_NAMES[kind]} in format {version}, newer than this pocketsd reads "
                       f"(format {today}); upgrade pocketsd")
    if version < 1 or (version < today and not all(v in (migrations or {}) for v in range(version, today))):
        raise BadInput(f"{folder} is {_NAMES[kind]} in an old format ({version}) this pocketsd cannot read; "
                       f"re-create it with `{MAKERS[kind]}`")
    for v in range(version, today):
        manifest = migrations[v](manifest, folder)
        manifest["format_version"] = v + 1
        manifest.setdefault("migrated_from", version)
    return manifest
