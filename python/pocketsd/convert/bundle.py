"""The Core ML bundle: layout, manifest, resume, compile on macOS.

    <out>/pocketsd.json                      manifest (kind "coreml")
    <out>/Resources/TextEncoder.mlpackage    … TextEncoder2, Unet | UnetChunk1 + UnetChunk2, VAEDecoder, VAEEncoder
    <out>/Resources/vocab.json, merges.txt   CLIP BPE files for Swift's BPETokenizer
    <out>/Resources/*.mlmodelc               compiled, on macOS only

Every package is written into a temp folder and renamed into place when complete, and the manifest is
rewritten after each component, so a killed run leaves only finished packages; a re-run skips a
component whose files still hash to the manifest's sha256 under the same options (unless --force).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import atomic_dir, atomic_file, folder_bytes, read_json, write_json
from ..errors import BadInput

MANIFEST = "pocketsd.json"
RESOURCES = "Resources"
FORMAT_VERSION = 1


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


def package_sha256(path: Path) -> str:
    """One digest over a package folder (relative paths and contents, in a fixed order) or a file."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


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
        shutil.copy2(vocab, resources / "vocab.json")
        shutil.copy2(merges, resources / "merges.txt")
        return {"source": "vocab.json/merges.txt"}
    fast = tokenizer_dir / "tokenizer.json"
    if not fast.is_file():
        raise BadInput(f"{tokenizer_dir} has neither vocab.json/merges.txt nor tokenizer.json; the bundle needs the CLIP BPE files")
    model = json.loads(fast.read_text())["model"]
    if model.get("type") != "BPE":
        raise BadInput(f"{fast} is a {model.get('type')} tokenizer; Apple's Swift pipeline needs CLIP's BPE")
    lines = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    with atomic_file(resources / "vocab.json", "w") as fh:
        json.dump(model["vocab"], fh, ensure_ascii=False)
    with atomic_file(resources / "merges.txt", "w") as fh:
        fh.write("#version: 0.2\n" + "\n".join(lines) + "\n")
    return {"source": "tokenizer.json", "vocab_size": len(model["vocab"]), "merges": len(lines)}


def read_manifest(out: Path) -> dict:
    path = Path(out) / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = read_json(path)
    except (OSError, json.JSONDecodeError):
        return {}
    return manifest if manifest.get("kind") == "coreml" else {}


def component_done(out: Path, manifest: dict, name: str, fingerprint: dict) -> bool:
    entry = manifest.get("components", {}).get(name)
    if not entry or entry.get("fingerprint") != fingerprint:
        return False
    for rel, digest in entry.get("sha256", {}).items():
        path = Path(out) / rel
        if not path.exists() or package_sha256(path) != digest:
            return False
    return bool(entry.get("sha256"))


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
    return (f"Core ML packages need compiling on a Mac for Apple's Swift pipeline: "
            f"cd {res} && for p in *.mlpackage; do xcrun coremlcompiler compile \"$p\" .; done")


def base_manifest(source: dict, opts: ConvertOptions) -> dict:
    import coremltools
    import diffusers
    import torch

    from .. import __version__

    return {
        "kind": "coreml", "format_version": FORMAT_VERSION, "pocketsd_version": __version__,
        "versions": {"pocketsd": __version__, "coremltools": coremltools.__version__, "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "python": platform.python_version()},
        "source_model": source, "resources": RESOURCES,
        "options": {"size": list(opts.size) if opts.size else None, "target": opts.target, "attention": opts.attention,
                    "chunk_unet": opts.chunk_unet, "unet_batch": 1 if opts.unet_batch_one else 2,
                    "loras": [[str(p), s] for p, s in opts.loras], "lora_functions": [str(p) for p in opts.lora_functions]},
        "components": {},
    }


def update_manifest(out: Path, manifest: dict) -> None:
    manifest["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest["total_bytes"] = sum(folder_bytes(Path(out) / rel) for c in manifest["components"].values()
                                  for rel in c.get("sha256", {}) if (Path(out) / rel).exists())
    write_json(Path(out) / MANIFEST, manifest)


def describe(path: Path) -> str:
    """`pocketsd info` on a bundle (the census lives in convert/inspect.py)."""
    from .inspect import describe as _describe

    return _describe(path)
