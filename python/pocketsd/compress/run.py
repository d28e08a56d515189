"""`pocketsd compress`: a model folder → a compressed model folder, as named steps.

    check_inputs → load → check_budget → calibrate → compress (per component) → write

Everything that can be checked without loading weights is checked first; the folder is written atomically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..artifacts import COMPRESSED
from ..artifacts.compressed import ComponentPayload, write_compressed_model
from ..artifacts.model_folder import read_config
from ..errors import BadInput
from ..models import model_folder, resolve_model
from ..palettize.calibrate import CalibrationSettings, calibrate
from ..palettize.compress import check_budget, compress_network, progress_total
from ..palettize.layer import compressed_layers, compressed_state_dict
from ..palettize.recipes import Recipe, compressible_layers
from .prompts import calibration_prompts

# on_progress(task, advance, total, detail): one call per unit of work; `total` sizes the task on first use.
Progress = Callable[[str, int, int, str], None]


@dataclass
class CompressOptions:
    out: Path
    model: str | None = None
    recipe: Recipe = field(default_factory=Recipe)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    calib_prompts: Path | None = None


def check_inputs(opts: CompressOptions) -> tuple[Path, str]:
    """The source diffusers folder and its spec; every failure is one line, before anything loads."""
    source = resolve_model(opts.model)
    if source.kind == COMPRESSED:
        raise BadInput(f"{opts.model} is already a compressed model; compress its source diffusers folder instead")
    if source.kind not in ("diffusers", "hub"):
        raise BadInput(f"{opts.model} is a {source.kind.replace('_', '-')} model; compress needs a diffusers folder or hub id")
    folder = model_folder(source)
    if not (folder / "unet" / "config.json").is_file():
        raise BadInput(f"{folder} has no UNet (unet/config.json); compress needs a diffusers pipeline with a UNet")
    opts.calibration.check()
    return folder, source.spec


def _pipeline(folder: Path):
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    try:
        return DiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"could not load the model in {folder}: {first[:200]}") from None


def compress_model(opts: CompressOptions, on_progress: Progress | None = None) -> dict:
    """Run the stage; returns the written manifest (with per-step seconds under "timings_s")."""
    tick = on_progress or (lambda task, n, total, detail="": None)
    folder, spec = check_inputs(opts)
    prompts = calibration_prompts(folder, opts.calibration, opts.calib_prompts)
    timings = {}

    t0 = time.perf_counter()
    pipe = _pipeline(folder)
    unet = pipe.unet.eval()
    check_budget(unet, opts.recipe)  # before calibrating: a budget the quantizer cannot reach fails fast
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    settings = opts.calibration
    modules, _ = compressible_layers(unet)
    calls = math.ceil(len(prompts) / settings.batch_size) * settings.steps
    calib = calibrate(pipe, modules, prompts, settings.steps, settings.timesteps, settings.rows_per_layer,
                      settings.batch_size, settings.guidance, settings.seed,
                      progress=lambda n: tick("calibrating", n, calls, ""))
    timings["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    total = progress_total(unet, opts.recipe)
    report = compress_network(unet, opts.recipe, calib, lambda n, detail="": tick("compressing layers", n, total, detail))
    timings["compress"] = time.perf_counter() - t0
    payload = ComponentPayload(
        state_dict=compressed_state_dict(unet), config=read_config(folder, "unet"),
        layers=[layer.record() for layer in compressed_layers(unet).values()], fp16_layers=report.fp16_layers,
        library="diffusers", class_name=type(unet).__name__, recipe=report.recipe,
        calibration={**calib.info, **report.allocation})
    del pipe, unet, calib

    t0 = time.perf_counter()
    manifest = write_compressed_model(opts.out, folder, {"unet": payload}, source={"spec": spec, "path": str(folder)},
                                      extra={"timings_s": {k: round(v, 2) for k, v in timings.items()}})
    manifest["timings_s"]["write"] = round(time.perf_counter() - t0, 2)
    return manifest


def summary_line(manifest: dict) -> str:
    lines = []
    for name, comp in manifest["components"].items():
        acc = comp["accounting"]
        snrs = [r["snr_db"] for r in comp["layers"] if r.get("snr_db") is not None]
        mean_snr = sum(snrs) / len(snrs) if snrs else float("nan")
        lines.append(f"{name} {comp['recipe'].get('name')}: {len(comp['layers'])} layers compressed, "
                     f"{acc['bits_per_param']:.3f} bits/param, {acc['total_bytes']:,} bytes "
                     f"({acc['compression_vs_fp16']:.2f}x smaller than fp16), mean layer output SNR {mean_snr:.1f} dB")
    return "\n".join(lines)
