"""The format-1 Core ML bundle fixture (`fixtures/bundle_v1`), made whole on demand.

Its package's weight blob (Core ML's own `weight.bin`, byte for byte what pocketsd 0.1.0 wrote) is kept in the
repository as a uint8 tensor in safetensors, so that only safetensors weights are tracked; `bundle_v1(dest)` copies
the fixture and writes the blob back where the package expects it."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHT_BIN = "Resources/Unet.mlpackage/Data/com.apple.CoreML/weights/weight.bin"


def bundle_v1(dest: Path) -> Path:
    """A complete copy of the format-1 bundle at `dest` (which must not exist)."""
    from safetensors.numpy import load_file

    shutil.copytree(FIXTURES / "bundle_v1", dest)
    blob = load_file(str(FIXTURES / "bundle_v1_weight_bin.safetensors"))["weight_bin"]
    target = dest / WEIGHT_BIN
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(blob.tobytes())
    return dest
