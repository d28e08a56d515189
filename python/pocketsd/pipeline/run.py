"""`pocketsd generate` end to end: check the options, open a backend, apply domain/LoRA/image/sketch, run the shared
loop once per image (models stay loaded across `--count`), write PNG + JSON report, return the reports.

Everything that can be checked before loading weights is checked first, so a bad option costs nothing and leaves
no file behind; outputs are written atomically at the end of each image.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..artifacts import folder_bytes, read_json
from ..errors import BadInput
from ..loading import ModelSource, precheck, resolve_model

DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_STRENGTH = 20, 5.0, "euler", 0.8
BACKENDS = ("auto", "torch", "coreml")


@dataclass
class RunOptions:
    prompt: str
    model: str | None = None
    backend: str = "auto"
    compute_units: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    size: tuple[int, int] | None = None  # (width, height)
    negative: str | None = None
    scheduler: str | None = None
    domain: str | None = None
    loras: list[tuple[Path, float]] = field(default_factory=list)
    image: Path | None = None
    strength: float | None = None
    sketch: Path | None = None
    controlnet: Path | None = None
    count: int = 1
    out: Path | None = None
    report: Path | None = None
    low_memory: bool = False
    allow_pickle: bool = False
    unet_mode: str = "dense"


# ---- checks that need no weights -----------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise BadInput(f"--size {text!r} is not WIDTHxHEIGHT (e.g. 128x128)") from None
    if w <= 0 or h <= 0:
        raise BadInput(f"--size {text!r} must be positive")
    return w, h


def check_size(size: tuple[int, int], vae_scale_factor: int) -> None:
    # The UNet halves the latent twice or more (SD/SDXL: 3 down blocks); 8 × the VAE factor keeps every level whole.
    multiple = 8 * vae_scale_factor
    w, h = size
    if w % multiple or h % multiple:
        raise BadInput(f"--size {w}x{h} must be a multiple of {multiple} (8 × the VAE's {vae_scale_factor}× factor) "
                       f"in both sides, e.g. {max(multiple, round(w / multiple) * multiple)}x"
                       f"{max(multiple, round(h / multiple) * multiple)}")


def check_options(opts: RunOptions) -> None:
    if not opts.prompt or not opts.prompt.strip():
        raise BadInput("the prompt is empty; say what to draw, e.g. \"a red circle on a white background\"")
    if opts.steps is not None and opts.steps < 1:
        raise BadInput(f"--steps must be at least 1, got {opts.steps}")
    if opts.guidance is not None and (opts.guidance < 0 or opts.guidance != opts.guidance):
        raise BadInput(f"--guidance must be ≥ 0 (1 turns guidance off), got {opts.guidance}")
    if opts.count < 1:
        raise BadInput(f"--count must be at least 1, got {opts.count}")
    if opts.backend not in BACKENDS:
        raise BadInput(f"--backend must be one of {', '.join(BACKENDS)}")
    if opts.image and opts.sketch:
        raise BadInput("give either --image or --sketch, not both")
    if opts.controlnet and not opts.sketch and not opts.image:
        raise BadInput("--controlnet needs a control image: pass --sketch FILE (or --image FILE)")
    if opts.strength is not None and not (opts.image or opts.sketch):
        raise BadInput("--strength only applies with --image or --sketch")
    for flag, path in (("--image", opts.image), ("--sketch", opts.sketch)):
        if path is not None and not Path(path).is_file():
            raise BadInput(f"{flag} {path} does not exist")
    if opts.controlnet is not None and not (Path(opts.controlnet) / "config.json").is_file():
        raise BadInput(f"--controlnet {opts.controlnet} is not a diffusers ControlNetModel folder (no config.json)")
    for lora, _ in opts.loras:
        if not Path(lora).is_file():
            raise BadInput(f"--lora {lora} does not exist")
    for flag, path in (("--out", opts.out), ("--report", opts.report)):
        if path is None:
            continue
        parent = Path(path).expanduser().resolve().parent
        if not parent.is_dir():
            raise BadInput(f"{flag} {path}: folder {parent} does not exist (create it first)")
        if Path(path).is_dir():
            raise BadInput(f"{flag} {path} is a folder; give a file name")
    if opts.out is not None and Path(opts.out).suffix.lower() != ".png":
        raise BadInput(f"--out {opts.out} must end in .png")


def output_paths(opts: RunOptions, seed: int) -> tuple[Path, Path]:
    """PNG and report path for the image with `seed` (with --count > 1 each file gets its seed appended)."""
    multi = opts.count > 1
    if opts.out is None:
        png = Path(f"pocketsd-{seed}.png")
    else:
        png = Path(opts.out).expanduser()
        png = png.with_name(f"{png.stem}-{seed}{png.suffix}") if multi else png
    if opts.report is None:
        rep = png.with_suffix(".json")
    else:
        rep = Path(opts.report).expanduser()
        rep = rep.with_name(f"{rep.stem}-{seed}{rep.suffix}") if multi else rep
    return png, rep


# ---- model facts for the report --------------------------------------------------------------------
def _find_key(data: Any, keys: tuple[str, ...]):
    if isinstance(data, dict):
        for k in keys:
            if isinstance(data.get(k), (int, float)):
                return data[k]
        for v in data.values():
            found = _find_key(v, keys)
            if found is not None:
                return found
    return None


def model_facts(source: ModelSource, folder: Path | None) -> dict[str, Any]:
    """UNet bytes on disk and bits per weight: from pocketsd.json when the folder has one, else measured."""
    facts: dict[str, Any] = {"path": str(folder or source.path or source.spec), "kind": source.kind,
                             "unet_bytes": 0, "bits_per_weight": None}
    if folder is None:
        if source.path is not None and source.path.is_file():
            facts["unet_bytes"] = source.path.stat().st_size  # whole single-file checkpoint
        return facts
    manifest = folder / "pocketsd.json"
    if manifest.is_file():
        try:
            data = read_json(manifest)
        except (OSError, ValueError):
            data = {}
        acc = data.get("accounting") if isinstance(data, dict) else None
        # the palettize manifest's size accounting first; a bundle manifest may carry it elsewhere (recipe/source)
        facts["bits_per_weight"] = _find_key(acc, ("bits_per_param",)) or _find_key(data, ("bits_per_weight",
                                                                                            "bits_per_param"))
        total = _find_key(data.get("accounting", {}), ("total_bytes",)) if isinstance(data, dict) else None
        if total:
            facts["unet_bytes"] = int(total)
    if not facts["unet_bytes"]:
        unets = [p for p in [folder / "unet"] if p.is_dir()] or list(folder.glob("**/Unet*.mlpackage")) or list(
            folder.glob("**/Unet*.mlmodelc"))
        facts["unet_bytes"] = sum(folder_bytes(p) for p in unets)
    if facts["bits_per_weight"] is None and (folder / "unet").is_dir():
        from ..loading import safetensors_stats

        params, nbytes, _ = safetensors_stats(folder / "unet")
        facts["bits_per_weight"] = round(8 * nbytes / params, 3) if params else None
    return facts


# ---- backends ------------------------------------------------------------------------------------
def _lora_transform(loras: list[tuple[Path, float]], records: list[dict]) -> Callable:
    def apply(unet):
        try:
            from ..palettize.lora import apply_loras
        except ImportError as exc:
            if exc.name and exc.name.startswith("pocketsd.palettize"):
                raise BadInput("this build cannot apply LoRAs (pocketsd.palettize.lora is missing)") from None
            raise
        got = apply_loras(unet, [(str(p), s) for p, s in loras])
        records[:] = got or [{"path": str(p), "scale": s} for p, s in loras]
        return unet

    return apply


def open_for(opts: RunOptions, source: ModelSource, loras: list[tuple[Path, float]], domain: str | None,
             lora_records: list[dict]):
    backend = opts.backend
    if backend == "auto":
        backend = "coreml" if source.kind == "coreml" else "torch"
    if backend == "coreml":
        if source.kind != "coreml":
            raise BadInput(f"--backend coreml runs a Core ML bundle; make one with `pocketsd convert --model {source.spec} "
                           "--out BUNDLE` and pass --model BUNDLE")
        if opts.controlnet:
            raise BadInput("--controlnet needs the torch backend (Core ML bundles have no ControlNet)")
        from . import coreml_backend
        from .coreml_bundle import read_bundle

        info = read_bundle(source.path)
        function = None
        wanted = [domain] + [Path(p).stem for p, _ in loras] if (domain or loras) else []
        if wanted:
            function = next((w for w in wanted if w and w in info.unet_functions), None)
            if function is None:
                raise BadInput(f"the bundle's UNet has no function for {', '.join(w for w in wanted if w)}; it has: "
                               f"{', '.join(info.unet_functions) or 'none'} (convert with the LoRA merged)")
            lora_records[:] = [{"path": str(p), "scale": s, "unet_function": function} for p, s in loras]
        return coreml_backend.CoreMLBackend(source.path, compute_units=opts.compute_units or "all",
                                            function_name=function)
    if source.kind == "coreml":
        raise BadInput(f"{source.spec} is a Core ML bundle, which needs --backend coreml on macOS; "
                       "on this machine run the model folder it was converted from with --backend torch")
    if opts.compute_units:
        raise BadInput("--compute-units applies to --backend coreml only")
    from .torch_backend import open_backend

    transforms = [_lora_transform(loras, lora_records)] if loras else []
    return open_backend(source, low_memory=opts.low_memory, unet_mode=opts.unet_mode, allow_pickle=opts.allow_pickle,
                        unet_transforms=transforms)


# ---- the run ---------------------------------------------------------------------------------------
def _stderr_warn(msg: str) -> None:
    print(f"pocketsd: warning: {msg}", file=sys.stderr)


def run(opts: RunOptions, *, warn: Callable[[str], None] = _stderr_warn, progress: bool = True,
        console=None) -> list[dict]:
    """Generate `opts.count` images; returns their reports (also written beside each image)."""
    from .report import PeakMemory, RunTimer, save_png, step_progress, summary_table, write_report

    memory = PeakMemory()  # whole run: reset the high-water mark before anything is loaded
    timer = RunTimer()
    check_options(opts)
    source = resolve_model(opts.model)
    precheck(source, opts.allow_pickle)
    with timer.stage("startup"):  # importing torch/diffusers/transformers takes seconds; keep it out of "load"
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401  (lazy modules: import them here)
        from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

        from . import generate as _generate, inputs as _inputs, presets as _presets  # noqa: F401
    startup_rss_mb = _current_rss_mb()  # what the libraries alone hold, before any weights

    from .presets import apply_domain

    settings = apply_domain(opts.domain, opts.prompt, negative=opts.negative, steps=opts.steps, guidance=opts.guidance,
                            scheduler=opts.scheduler, loras=list(opts.loras))
    if opts.negative is None and not settings.negative_prompt:
        # a preset without a negative prompt is "no negative prompt" (zero embeddings on SDXL), not an explicit ""
        settings.negative_prompt = None
    steps = settings.steps if settings.steps is not None else DEFAULT_STEPS
    guidance = settings.guidance if settings.guidance is not None else DEFAULT_GUIDANCE
    scheduler = settings.scheduler or DEFAULT_SCHEDULER
    from .generate import SCHEDULERS

    if scheduler not in SCHEDULERS:
        raise BadInput(f"--scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")

    lora_records: list[dict] = []
    t0 = time.perf_counter()
    backend = open_for(opts, source, settings.loras, settings.domain, lora_records)
    timer.add("load", time.perf_counter() - t0)
    if opts.size is not None:
        check_size(opts.size, backend.vae_scale_factor)
        width, height = opts.size
    else:
        height, width = backend.default_size

    from .generate import GenerationRequest, generate
    from .inputs import check_strength, image_to_tensor, load_image, load_sketch

    init_image, strength, unet_extra, input_notes = None, None, None, []
    if opts.image:
        loaded = load_image(opts.image, width, height, warn=warn)
        input_notes += loaded.notes
        strength = check_strength(opts.strength if opts.strength is not None else DEFAULT_STRENGTH)
        if opts.controlnet:
            unet_extra = _controlnet(opts, backend, loaded.image)
        else:
            init_image = image_to_tensor(loaded.image)
    elif opts.sketch:
        sketch = load_sketch(opts.sketch, width, height, settings.expanded_prompt, opts.strength, warn=warn)
        input_notes += sketch.notes
        if opts.controlnet:
            unet_extra = _controlnet(opts, backend, sketch.control)
        else:
            init_image, strength = image_to_tensor(sketch.start), sketch.strength

    if source.kind == "single_file":
        folder = None  # its components folder only holds the family's configs; size the checkpoint file itself
    elif source.kind == "coreml":
        folder = source.path
    else:
        folder = backend.components.folder
    facts = model_facts(source, folder)
    reports = []
    for i in range(opts.count):
        seed = opts.seed + i
        png_path, report_path = output_paths(opts, seed)
        if i:
            memory.start()
            timer = RunTimer()
        request = GenerationRequest(prompt=settings.expanded_prompt, negative_prompt=settings.negative_prompt,
                                    steps=steps, guidance=guidance, seed=seed, height=height, width=width,
                                    scheduler=scheduler, init_image=init_image, strength=strength or DEFAULT_STRENGTH,
                                    unet_extra=unet_extra)
        if progress:
            bar, advance = step_progress(steps, console=console, description=f"denoising (seed {seed})")
            with bar:
                result = generate(backend, request, timer=timer, low_memory=opts.low_memory,
                                  on_step=advance, warn=warn if i == 0 else None)
        else:
            result = generate(backend, request, timer=timer, low_memory=opts.low_memory,
                              warn=warn if i == 0 else None)
        extras = backend.report_extras() if hasattr(backend, "report_extras") else {}
        report = {
            "pocketsd_version": __version__, "prompt": settings.prompt, "expanded_prompt": settings.expanded_prompt,
            "negative_prompt": settings.negative_prompt, "seed": seed, "steps": steps, "guidance": guidance,
            "scheduler": scheduler, "size": [width, height], "backend": backend.name,
            "compute_units": extras.get("compute_units"), "domain": settings.domain, "loras": lora_records,
            "model": facts, "timings_s": timer.as_dict(), "memory": {**memory.read(), "rss_after_startup_mb": startup_rss_mb},
            "output": str(png_path),
            "input": {"image": str(opts.image) if opts.image else None, "sketch": str(opts.sketch) if opts.sketch else None,
                      "strength": strength if init_image is not None else None,
                      "controlnet": str(opts.controlnet) if opts.controlnet else None},
            "low_memory": opts.low_memory, "unet_mode": opts.unet_mode if source.kind == "compressed" else None,
            "memory_method": memory.method, "torch_threads": _torch_threads(),
            "warnings": result.warnings + input_notes,
        }
        if extras:
            report["backend_details"] = extras
        save_png(result.images[0], png_path, {**report, "model": f"{facts['path']} ({facts['kind']})"})
        try:
            write_report(report_path, report)
        except BaseException:
            png_path.unlink(missing_ok=True)
            raise
        if console is not None:
            console.print(summary_table(report))
        reports.append(report)
    return reports


def _current_rss_mb() -> float | None:
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / 2**20, 1)
    except Exception:
        return None


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:
        return None


def _controlnet(opts: RunOptions, backend, control_image):
    from .controlnet import controlnet_hook  # checks the folder against the UNet and gates pickle weights

    return controlnet_hook(Path(opts.controlnet), control_image, backend, allow_pickle=opts.allow_pickle)
