"""The models the page offers, the compressed reference model made once, and the cache of opened sessions.

The page compares one model in two forms: fp16 (the model as given) and 4-bit (its compressed folder, run dense
or packed), plus a Core ML bundle where Core ML runs (macOS). Each form is opened through the one generation
path, `GenerationSession.open`, and kept in `ModelCache` keyed by (model, mode, LoRA set): opening costs seconds,
generating on an open session costs only the steps.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from ..artifacts import MANIFEST
from ..compress.run import CompressOptions, compress_model
from ..errors import BadInput
from ..models import resolve_model
from ..palettize.calibrate import CalibrationSettings
from ..palettize.recipes import Recipe
from ..pipeline.options import GenerateOptions
from ..pipeline.session import GenerationSession, domain_loras
from .config import AppConfig

FP16, DENSE, PACKED, COREML = "fp16", "4-bit dense", "4-bit packed", "Core ML bundle"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model picker: what `--model`, `--unet-mode` and `--backend` it stands for."""

    label: str
    model: str | None
    unet_mode: str = "dense"
    backend: str = "auto"

    @property
    def quantized(self) -> bool:
        return self.label != FP16


def coreml_runs_here() -> bool:
    return sys.platform == "darwin"  # Core ML prediction exists on Apple platforms only


def model_choices(config: AppConfig) -> dict[str, ModelChoice]:
    """The picker's entries, in order; the Core ML one only where Core ML can run and a bundle was given."""
    if config.compressed is None:
        raise ValueError("AppConfig.compressed must be set (server.prepare_models makes it)")
    compressed = str(config.compressed)
    choices = [ModelChoice(FP16, config.model), ModelChoice(DENSE, compressed, "dense"),
               ModelChoice(PACKED, compressed, "packed")]
    if config.coreml is not None and coreml_runs_here():
        choices.append(ModelChoice(COREML, str(config.coreml), backend="coreml"))
    return {c.label: c for c in choices}


def compare_pair(choices: dict[str, ModelChoice], picked: str) -> list[ModelChoice]:
    """Compare mode: fp16 on the left, the picked 4-bit form (dense when fp16 itself was picked) on the right."""
    right = choices.get(picked) if picked in choices and picked != FP16 else choices[DENSE]
    return [choices[FP16], right]


# ---- the compressed reference model, made on first start ------------------------------------------------
APP_COMPONENTS = ("unet",)  # what the page compresses unless told otherwise (see prepare_compressed)


def _fingerprint(folder: Path, opts: CompressOptions) -> str:
    """Digest of what the compressed folder depends on: the source UNet's files and every compress option."""
    digest = hashlib.sha256(repr(replace(opts, out=Path("-"))).encode())
    for path in sorted((folder / "unet").iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]


def prepare_compressed(model: str | None, build_dir: Path, recipe: Recipe | None = None,
                       calibration: CalibrationSettings | None = None,
                       on_progress: Callable[[str, int, int, str], None] | None = None, **options) -> Path:
    """The compressed form of `model` under `build_dir/app/`, made once (atomically) and reused after.

    The folder's name carries a digest of the source UNet, recipe and calibration, so a retrained model or another
    recipe gets its own folder instead of a stale one. A file lock keeps two starting servers from both compressing.
    `options`: further `CompressOptions` fields, part of the digest too. `components` defaults to the UNet alone
    (APP_COMPONENTS): the page compares the UNet in fp16 and in 4-bit, and a first start compresses only what it
    shows (`pocketsd compress` itself compresses the text encoders too, at the UNet's bits per compressed weight).
    """
    options.setdefault("components", APP_COMPONENTS)
    recipe = recipe or Recipe()
    calibration = calibration or CalibrationSettings()
    source = resolve_model(model)
    if source.kind not in ("diffusers", "hub") or source.path is None:
        raise BadInput(f"{source.spec} is a {source.kind} model: pass its compressed form with --compressed DIR, or "
                       "give a diffusers folder as --model")
    folder = Path(source.path)
    root = Path(build_dir) / "app"
    root.mkdir(parents=True, exist_ok=True)
    name = "reference" if model in (None, "", "reference") else folder.name
    opts = CompressOptions(out=root / "pending", model=model, recipe=recipe, calibration=calibration, **options)
    target = root / f"{name}-{recipe.name}-{_fingerprint(folder, opts)}"
    if (target / MANIFEST).is_file():
        return target
    with open(root / ".compress.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another server may be compressing the same model: wait for it
        if not (target / MANIFEST).is_file():
            compress_model(replace(opts, out=target), on_progress)  # written atomically by the stage
    return target


# ---- the session cache ---------------------------------------------------------------------------------
def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def default_rss_budget_mb() -> float:
    import psutil

    return 0.6 * psutil.virtual_memory().total / 2**20


@dataclass
class CacheEntry:
    key: tuple
    session: GenerationSession
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation per model at a time
    users: int = 0
    generated: int = 0  # images made; 0 means its components have not loaded yet
    last_used: float = field(default_factory=time.monotonic)


class ModelCache:
    """Opened sessions keyed by (model, mode, backend, device, LoRA set), least recently used evicted first.

    Eviction is by memory: after every use, idle entries are dropped while the process holds more than
    `max_rss_mb` (or more than `max_models` are open). An entry in use is never dropped.
    """

    def __init__(self, max_models: int = 4, max_rss_mb: float | None = None, *,
                 rss_mb: Callable[[], float] = current_rss_mb,
                 opener: Callable[[GenerateOptions], GenerationSession] = GenerationSession.open):
        self.max_models, self.rss_mb, self.opener = max(1, max_models), rss_mb, opener
        self.max_rss_mb = max_rss_mb if max_rss_mb is not None else default_rss_budget_mb()
        self._entries: OrderedDict[tuple, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted: list[tuple] = []  # keys dropped so far (the page and the tests read it)

    @staticmethod
    def key(opts: GenerateOptions) -> tuple:
        loras = tuple((str(Path(p).resolve()), float(s)) for p, s in domain_loras(opts))
        return (str(resolve_model(opts.model).path or opts.model), opts.unet_mode, opts.backend, opts.device, loras)

    def __contains__(self, opts: GenerateOptions) -> bool:
        return self.key(opts) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def is_loaded(self, opts: GenerateOptions) -> bool:
        entry = self._entries.get(self.key(opts))
        return entry is not None and entry.generated > 0

    @contextlib.contextmanager
    def use(self, opts: GenerateOptions) -> Iterator[CacheEntry]:
        """The open session for `opts` (opened now if needed), held for one generation."""
        key = self.key(opts)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = CacheEntry(key, self.opener(opts))
                self._entries[key] = entry
            self._entries.move_to_end(key)
            entry.users += 1
        try:
            with entry.lock:
                yield entry
                entry.generated += 1
        finally:
            with self._lock:
                entry.users -= 1
                entry.last_used = time.monotonic()
            self.trim()

    def trim(self) -> None:
        """Drop idle entries, oldest first, while over the model count or the memory budget."""
        with self._lock:
            while True:
                idle = [k for k, e in self._entries.items() if e.users == 0]
                over_count = len(self._entries) > self.max_models
                if not idle or not (over_count or (len(self._entries) > 1 and self.rss_mb() > self.max_rss_mb)):
                    return
                key = idle[0]
                del self._entries[key]
                self.evicted.append(key)
                _release_memory()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        _release_memory()


def _release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
