"""Writing a Core ML bundle during conversion: packages saved atomically, tokenizer files, resume, compile.

The bundle's layout, names and manifest are `pocketsd.artifacts.bundle`'s. Every package is written into a
temp folder and renamed into place when complete, and the manifest is rewritten after each component, so a
killed run leaves only finished packages; a re-run skips a component whose files still hash to the manifest's
sha256 under the same options (unless --force).
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import atomic_dir, atomic_file, folder_bytes
from ..artifacts.bundle import CONTROLNET_DIR, MERGES, RESOURCES, VOCAB, stage_of
from ..artifacts.integrity import tree_sha256
from ..errors import BadInput


@dataclass
class ConvertOptions:
    model: str | None = None
    out: Path = Path("build/coreml")
    size: tuple[int, int] | None = None  # (width, height) of the image
    target: str = "iOS18"
    attention: str = "split-einsum"
    chunk_unet: bool = False
    unet_batch_one: bool = False
    loras: list[tuple[Path, float]] = field(default_factory=list)
    lora_functions: list[Path] = field(default_factory=list)
    force: bool = False
    compile: bool = True  # on macOS: xcrun coremlcompiler compile
    only: list[str] | None = None  # convert just these components (names as in Resources/)
    # ControlNets to add as Resources/controlnet/<Name>.mlpackage: (name or None → from the folder, folder); the Unet
    # then takes their residuals as extra inputs.
    controlnets: list[tuple[str | None, Path]] = field(default_factory=list)
    controlnet_recipe: str | None = None  # compress them: a fixed recipe (w4r32, …) or a bits budget ("4.5")


def package_sha256(path: Path) -> str:
    """One digest over a package folder (relative paths and contents, in a fixed order) or a file."""
    return tree_sha256(path)


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 50 ms with psutil)."""

    def __enter__(self):
        import psutil

        self._proc, self._stop, self.peak = psutil.Process(), threading.Event(), 0
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return False

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def save_package_atomically(mlmodel, target: Path) -> None:
    """ct's save wants a path ending in .mlpackage, so save inside the atomic temp folder and lift it up."""
    with atomic_dir(target) as tmp:
        inner = tmp / "staged.mlpackage"
        mlmodel.save(str(inner))
        for child in inner.iterdir():
            child.rename(tmp / child.name)
        inner.rmdir()


def write_tokenizer_files(tokenizer_dir: Path, resources: Path) -> dict:
    """vocab.json + merges.txt for Swift's BPETokenizer, from the slow files or from tokenizer.json."""
    tokenizer_dir = Path(tokenizer_dir)
    vocab, merges = tokenizer_dir / "vocab.json", tokenizer_dir / "merges.txt"
    if vocab.is_file() and merges.is_file():
        shutil.copy2(vocab, resources / VOCAB)
        shutil.copy2(merges, resources / MERGES)
        return {"source": "vocab.json/merges.txt"}
    fast = tokenizer_dir / "tokenizer.json"
    if not fast.is_file():
        raise BadInput(f"{tokenizer_dir} has neither vocab.json/merges.txt nor tokenizer.json; the bundle needs the CLIP BPE files")
    model = json.loads(fast.read_text())["model"]
    if model.get("type") != "BPE":
        raise BadInput(f"{fast} is a {model.get('type')} tokenizer; Apple's Swift pipeline needs CLIP's BPE")
    lines = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    with atomic_file(resources / VOCAB, "w") as fh:
        json.dump(model["vocab"], fh, ensure_ascii=False)
    with atomic_file(resources / MERGES, "w") as fh:
        fh.write("#version: 0.2\n" + "\n".join(lines) + "\n")
    return {"source": "tokenizer.json", "vocab_size": len(model["vocab"]), "merges": len(lines)}


def component_done(out: Path, manifest: dict, name: str, fingerprint: dict) -> bool:
    entry = manifest.get("components", {}).get(name)
    if not entry or entry.get("fingerprint") != fingerprint:
        return False
    for rel, digest in entry.get("sha256", {}).items():
        path = Path(out) / rel
        if not path.exists() or package_sha256(path) != digest:
            return False
    return bool(entry.get("sha256"))


def record_package(out: Path, manifest: dict, name: str, package: Path, *, inputs: list, outputs: list,
                   precision: str, seconds: float, peak_mb: float, fingerprint: dict, extra: dict | None = None) -> None:
    """The manifest entry of a written package: its I/O, stage, sizes, digest, census and how it was made."""
    from .census import census

    info = census(package)
    rel = str(package.relative_to(out))
    manifest["components"][name] = {
        "file": rel, "stage": stage_of(name), "inputs": [s.record() for s in inputs],
        "outputs": [s.record() for s in outputs], "compute_precision": precision,
        "weight_bytes": info["weight_blob_bytes"], "bytes": folder_bytes(package), "convert_seconds": round(seconds, 2),
        "peak_rss_mb": peak_mb, "sha256": {rel: package_sha256(package)}, "fingerprint": fingerprint,
        "census": info, **(extra or {}),
    }


def can_compile() -> bool:
    return platform.system() == "Darwin" and shutil.which("xcrun") is not None


def compile_on_macos(package: Path) -> Path | None:
    """xcrun coremlcompiler compile → <name>.mlmodelc beside the package (macOS only; None elsewhere)."""
    if not can_compile():
        return None
    target = package.with_suffix(".mlmodelc")
    with atomic_dir(target) as tmp:
        subprocess.run(["xcrun", "coremlcompiler", "compile", str(package), str(tmp)], check=True,
                       stdout=subprocess.DEVNULL)
        built = tmp / target.name
        for child in built.iterdir():
            child.rename(tmp / child.name)
        built.rmdir()
    return target


def compile_hint(out: Path) -> str:
    res = Path(out) / RESOURCES
    extra = ""
    if any((res / CONTROLNET_DIR).glob("*.mlpackage")):  # ControlNets compile beside their packages
        extra = f"; for p in {CONTROLNET_DIR}/*.mlpackage; do xcrun coremlcompiler compile \"$p\" {CONTROLNET_DIR}; done"
    return (f"Core ML packages need compiling on a Mac for Apple's Swift pipeline: "
            f"cd {res} && for p in *.mlpackage; do xcrun coremlcompiler compile \"$p\" .; done{extra}")


def base_manifest(source: dict, opts: ConvertOptions) -> dict:
    import coremltools
    import diffusers
    import torch

    from .. import __version__

    return {
        "pocketsd_version": __version__,
        "versions": {"pocketsd": __version__, "coremltools": coremltools.__version__, "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "python": platform.python_version()},
        "source_model": source, "resources": RESOURCES,
        "options": {"size": list(opts.size) if opts.size else None, "target": opts.target, "attention": opts.attention,
                    "chunk_unet": opts.chunk_unet, "unet_batch": 1 if opts.unet_batch_one else 2,
                    "loras": [[str(p), s] for p, s in opts.loras], "lora_functions": [str(p) for p in opts.lora_functions],
                    "controlnets": [[n, str(p)] for n, p in opts.controlnets], "controlnet_recipe": opts.controlnet_recipe},
        "components": {},
    }
