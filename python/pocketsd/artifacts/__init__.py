"""The on-disk contract, in one place (ground floor): the three artifact kinds PocketSD reads and writes.

- a **model folder**: the diffusers layout (`model_index.json` + one folder per component) — `model_folder`;
- a **compressed model folder**: a model folder whose compressed components hold our codes, tables, scales
  and low-rank factors, with a `pocketsd.json` manifest of kind "compressed" — `compressed`;
- a **Core ML bundle**: `Resources/*.mlpackage` in the layout Apple's Swift `StableDiffusion` package loads,
  with a `pocketsd.json` manifest of kind "coreml" — `bundle`.

Every manifest carries `kind` and `format_version`; `manifest.read_manifest` checks both and migrates older
versions, so every stage reads and writes only through the typed readers and writers here. Writes are
atomic (`atomic`) and every written file's sha256 is recorded (`integrity`).
"""

from .atomic import atomic_dir, atomic_file, atomic_write_path, folder_bytes, read_json, write_json  # noqa: F401
from .manifest import COMPRESSED, COREML, FORMAT_VERSIONS, MANIFEST, manifest_kind, read_manifest  # noqa: F401
from .model_folder import detect_family, read_model_index  # noqa: F401
