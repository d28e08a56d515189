"""Orchestration: model folder → calibration → per-layer decomposition (fixed recipe or budget) → folder."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from ..errors import BadInput
from .allocate import Candidate, EndToEndProbe, ResponseCurve, allocate, layer_bytes, measure_candidates
from .calibrate import Calibration, calibrate, default_prompts, read_prompts
from .format import CompressedUNet, accounting, save_compressed
from .lowrank import ALPHA_GRID, compress_layer, lowrank_decompose
from .quantizers import QuantSpec
from .recipes import Recipe, compressible_layers


def _unet_config(unet) -> dict:
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(unet.config).items()}
    cfg.setdefault("_class_name", type(unet).__name__)
    return cfg


def budget_floor_bits(unet, recipe: Recipe) -> float:
    """The fewest effective bits per parameter this recipe's quantizer can reach on `unet` (all layers at
    4 bits, rank 0, no smoothing) — a budget below it cannot be met."""
    modules, _ = compressible_layers(unet)
    spec = QuantSpec(recipe.quantizer, 4, recipe.group_size, recipe.block_size)
    floor = sum(layer_bytes(tuple(m.weight.shape), spec, 0, False, m.bias is not None) for m in modules.values())
    floor += _leftover_bytes(unet, modules) + 8 + 90 * (len(modules) * 3 + _leftover_count(unet, modules))
    return 8 * floor / sum(p.numel() for p in unet.parameters())


def check_budget(unet, recipe: Recipe) -> None:
    if recipe.bits_budget is None:
        return
    floor = budget_floor_bits(unet, recipe)
    if recipe.bits_budget < floor:
        what = (f"int4 scales cost 16/{recipe.block_size} bits per weight" if recipe.quantizer != "palette"
                else "each table costs 2^bits fp16 entries per group of output channels")
        raise BadInput(f"--bits-budget {recipe.bits_budget:g} is below the {floor:.2f} bits this model needs at "
                       f"4 bits with the {recipe.quantizer} quantizer ({what}, plus fp16 leftovers); "
                       f"raise the budget or use a larger group/block size")


def compress_unet(unet, recipe: Recipe, calibration: Calibration | None = None, progress=None) -> CompressedUNet:
    """Compress every eligible Linear/Conv2d of `unet` (fp32 or fp16 weights) by `recipe`.

    calibration: statistics from `calibrate` (None: no smoothing, weight-space errors — e.g. random SDXL).
    progress: optional callable(advance: int, description: str).
    """
    tick = progress or (lambda n, d="": None)
    check_budget(unet, recipe)
    modules, kept = compressible_layers(unet)
    grid = ALPHA_GRID if (recipe.smoothing and calibration is not None) else (0.0,)
    rows = (lambda n: calibration.rows(n)) if calibration is not None else (lambda n: None)
    amax = (lambda n: calibration.act_max(n)) if calibration is not None else (lambda n: None)
    layers, probe = {}, None
    if recipe.bits is not None:
        spec = QuantSpec(recipe.quantizer, recipe.bits, recipe.group_size, recipe.block_size)
        for name, m in modules.items():
            d = compress_layer(m.weight, recipe.rank, spec, rows(name), amax(name), grid, recipe.refine_iters)
            layers[name] = d.to_layer(name, _kind(m), m.bias)
            tick(1, name)
    else:
        cands, alphas = {}, {}
        probe = EndToEndProbe(unet, calibration.unet_inputs) if calibration and calibration.unet_inputs else None
        for name, m in modules.items():
            cands[name], alphas[name], rank0 = measure_candidates(m.weight, m.bias is not None, recipe,
                                                                  rows(name), amax(name), grid)
            if probe is not None:  # read this layer's errors through how they reach the UNet's output
                points = [(err, probe.response(m, w)) for err, w in rank0.values()]
                curve = ResponseCurve(points)
                cands[name] = [Candidate(c.rank, c.bits, c.bytes, curve(c.rel_error)) for c in cands[name]]
            tick(1, f"measuring {name}")
        leftover_bytes = _leftover_bytes(unet, modules)
        n_tensors = len(modules) * 5 + _leftover_count(unet, modules)
        params = sum(p.numel() for p in unet.parameters())
        choice = allocate(recipe.bits_budget, cands, leftover_bytes + 8 + 90 * n_tensors, params)
        for name, m in modules.items():
            c = choice[name]
            spec = QuantSpec(recipe.quantizer, c.bits, recipe.group_size, recipe.block_size)
            d = lowrank_decompose(m.weight, c.rank, spec, rows(name), amax(name), alphas[name], recipe.refine_iters)
            layers[name] = d.to_layer(name, _kind(m), m.bias)
            tick(1, name)
    skip = {f"{n}.{p}" for n in modules for p in ("weight", "bias")}
    leftover = {k: v.detach().to(torch.float16).clone() for k, v in unet.state_dict().items() if k not in skip}
    recipe_info = recipe.to_dict()
    if recipe.bits is None:
        recipe_info["sensitivity"] = "end_to_end" if probe is not None else "layer_output"
    return CompressedUNet(layers=layers, leftover=leftover, unet_config=_unet_config(unet),
                          recipe=recipe_info, calibration=dict(calibration.info) if calibration else {},
                          fp16_layers=kept)


def _kind(m) -> str:
    return "conv" if isinstance(m, torch.nn.Conv2d) else "linear"


def _leftover_bytes(unet, modules) -> int:
    skip = {f"{n}.{p}" for n in modules for p in ("weight", "bias")}
    return sum(v.numel() * 2 for k, v in unet.state_dict().items() if k not in skip)


def _leftover_count(unet, modules) -> int:
    skip = {f"{n}.{p}" for n in modules for p in ("weight", "bias")}
    return sum(1 for k in unet.state_dict() if k not in skip)


def budget_layers_estimate(unet, recipe: Recipe) -> int:
    """Progress-bar length for `compress_unet` (layers are visited twice under a budget)."""
    n = len(compressible_layers(unet)[0])
    return n if recipe.bits is not None else 2 * n


# ---- the whole command -------------------------------------------------------------------------
def _source_folder(model: str | None) -> tuple[Path, str]:
    from ..loading import resolve_model

    src = resolve_model(model)
    if src.kind == "compressed":
        raise BadInput(f"{model} is already a compressed model; compress its source diffusers folder instead")
    if src.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(src.spec, local_files_only=True))
        except Exception:
            raise BadInput(f"{model} is not in the Hugging Face cache; download it first (huggingface-cli download {model})")
    elif src.kind != "diffusers":
        raise BadInput(f"{model} is a {src.kind} model; compress needs a diffusers folder or hub id")
    else:
        path = Path(src.path)
    if not (path / "unet" / "config.json").is_file():
        raise BadInput(f"{path} has no UNet (unet/config.json); compress needs a diffusers pipeline with a UNet")
    return path, src.spec


@contextlib.contextmanager
def _progress_ui(enabled: bool):
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[detail]}"), transient=False) as p:
        yield p


def compress_model(model: str | None, out: Path, recipe: Recipe, calib_prompts: Path | None = None,
                   calib_count: int = 64, calib_steps: int = 8, calib_timesteps: str = "all",
                   rows_per_layer: int = 512, show_progress: bool = True) -> dict:
    """`pocketsd compress`: returns the written manifest (with timings added under "timings_s")."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()

    folder, spec = _source_folder(model)
    prompts = read_prompts(calib_prompts) if calib_prompts else default_prompts(calib_count)
    if calib_steps < 1:
        raise BadInput("--calib-steps must be at least 1")
    t0 = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    unet = pipe.unet.eval()
    check_budget(unet, recipe)  # before calibrating: a budget the quantizer cannot reach fails fast
    modules, _ = compressible_layers(unet)
    t_load = time.perf_counter() - t0
    with _progress_ui(show_progress) as ui:
        batch = 8
        n_cal = math.ceil(len(prompts) / batch) * calib_steps
        task = ui.add_task("calibrating", total=n_cal, detail="") if ui else None
        adv = (lambda n: ui.advance(task, n)) if ui else None
        t1 = time.perf_counter()
        calib = calibrate(pipe, modules, prompts, calib_steps, calib_timesteps, rows_per_layer, batch, progress=adv)
        t_cal = time.perf_counter() - t1
        task2 = ui.add_task("compressing layers", total=budget_layers_estimate(unet, recipe), detail="") if ui else None
        tick = (lambda n, d="": ui.update(task2, advance=n, detail=d[-48:])) if ui else None
        t2 = time.perf_counter()
        cunet = compress_unet(unet, recipe, calib, tick)
        t_comp = time.perf_counter() - t2
    del pipe, unet
    timings = {"load": round(t_load, 2), "calibrate": round(t_cal, 2), "compress": round(t_comp, 2)}
    manifest = save_compressed(cunet, folder, Path(out), source={"spec": spec, "path": str(folder)},
                               extra={"timings_s": timings})
    return manifest


def summary_line(manifest: dict) -> str:
    acc = manifest["accounting"]
    snrs = [r["snr_db"] for r in manifest["layers"] if r.get("snr_db") is not None]
    mean_snr = sum(snrs) / len(snrs) if snrs else float("nan")
    return (f"{manifest['recipe']['name']}: {len(manifest['layers'])} layers compressed, "
            f"{acc['bits_per_param']:.3f} bits/param, UNet {acc['total_bytes']:,} bytes "
            f"({acc['compression_vs_fp16']:.2f}x smaller than fp16), mean layer output SNR {mean_snr:.1f} dB")


__all__ = ["compress_unet", "compress_model", "save_compressed", "accounting", "layer_bytes", "summary_line"]
