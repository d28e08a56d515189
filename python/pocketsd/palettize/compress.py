"""Compress one network: every eligible Linear/Conv2d becomes a `CompressedLayer`, by a fixed recipe or a budget.

Tensors in, tensors out: the caller (the `compress` stage) loads the model, calibrates it and writes the
result; here only the decomposition and the allocation happen. Layers are replaced in place, one at a time,
so a model never holds a float and a compressed copy of more than one layer at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..artifacts.compressed import header_bytes_estimate
from ..errors import BadInput
from .allocate import Candidate, EndToEndProbe, ResponseCurve, allocate, candidate_bytes, measure_candidates
from .calibrate import Calibration
from .layer import set_submodule
from .lowrank import ALPHA_GRID, compress_layer, lowrank_decompose
from .quantizers import BITS, QuantSpec
from .recipes import Recipe, compressible_layers


@dataclass
class CompressionReport:
    """What `compress_network` did, for the manifest: layers kept in fp16 and how sensitivities were read."""

    fp16_layers: list[str]
    recipe: dict
    allocation: dict = field(default_factory=dict)


def _leftover_tensors(model: nn.Module, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    owned = {f"{n}.{p}" for n in modules for p in ("weight", "bias")}
    return {k: v for k, v in model.state_dict().items() if k not in owned}


def fixed_bytes(model: nn.Module, modules: dict[str, nn.Module]) -> int:
    """Bytes that do not depend on the allocation: fp16 leftovers and their share of the safetensors header."""
    leftover = _leftover_tensors(model, modules)
    return sum(2 * t.numel() if t.is_floating_point() else t.numel() * t.element_size() for t in leftover.values()) \
        + header_bytes_estimate(len(leftover))


def budget_floor_bits(model: nn.Module, recipe: Recipe) -> float:
    """The fewest effective bits per parameter this recipe's quantizer can reach on `model` (every layer at its
    smallest bit width, rank 0, no smoothing) — a budget below it cannot be met."""
    modules, _ = compressible_layers(model)
    spec = QuantSpec(recipe.quantizer, min(BITS[recipe.quantizer]), recipe.group_size, recipe.block_size)
    floor = sum(candidate_bytes(tuple(m.weight.shape), spec, 0, False, m.bias is not None) for m in modules.values())
    floor += fixed_bytes(model, modules)
    return 8 * floor / sum(p.numel() for p in model.parameters())


def check_budget(model: nn.Module, recipe: Recipe, what: str = "the UNet") -> None:
    if recipe.bits_budget is None:
        return
    floor = budget_floor_bits(model, recipe)
    if recipe.bits_budget < floor:
        cost = (f"int4 scales cost 16/{recipe.block_size} bits per weight" if recipe.quantizer != "palette"
                else "each table costs 2^bits fp16 entries per group of output channels")
        raise BadInput(f"--bits-budget {recipe.bits_budget:g} is below the {floor:.2f} bits {what} needs at the "
                       f"smallest codes of the {recipe.quantizer} quantizer ({cost}, plus fp16 leftovers); raise the "
                       f"budget or use a larger group/block size")


def compress_network(model: nn.Module, recipe: Recipe, calibration: Calibration | None = None,
                     progress=None) -> CompressionReport:
    """Replace every eligible Linear/Conv2d of `model` (fp32 or fp16 weights) by a `CompressedLayer` (packed).

    calibration: statistics from `calibrate` (None: no smoothing, weight-space errors — e.g. random SDXL weights).
    progress: optional callable(advance: int, description: str).
    """
    tick = progress or (lambda n, d="": None)
    check_budget(model, recipe)
    modules, kept = compressible_layers(model)
    grid = ALPHA_GRID if (recipe.smoothing and calibration is not None) else (0.0,)
    rows = (lambda n: calibration.rows(n)) if calibration is not None else (lambda n: None)
    amax = (lambda n: calibration.act_max(n)) if calibration is not None else (lambda n: None)
    info = recipe.to_dict()
    if recipe.bits is not None:
        spec = QuantSpec(recipe.quantizer, recipe.bits, recipe.group_size, recipe.block_size)
        for name, m in modules.items():
            d = compress_layer(m.weight, recipe.rank, spec, rows(name), amax(name), grid, recipe.refine_iters)
            set_submodule(model, name, d.to_layer(name, m).to(m.weight.device))
            tick(1, name)
        return CompressionReport(kept, info)

    cands, alphas = {}, {}
    probe = EndToEndProbe(model, calibration.unet_inputs) if calibration and calibration.unet_inputs else None
    for name, m in modules.items():
        cands[name], alphas[name], rank0 = measure_candidates(m.weight, m.bias is not None, recipe,
                                                              rows(name), amax(name), grid)
        if probe is not None:  # read this layer's errors through how they reach the network's output
            curve = ResponseCurve([(err, probe.response(m, w)) for err, w in rank0.values()])
            cands[name] = [Candidate(c.rank, c.bits, c.bytes, curve(c.rel_error)) for c in cands[name]]
        tick(1, f"measuring {name}")
    params = sum(p.numel() for p in model.parameters())
    choice = allocate(recipe.bits_budget, cands, fixed_bytes(model, modules), params)
    for name, m in modules.items():
        c = choice[name]
        spec = QuantSpec(recipe.quantizer, c.bits, recipe.group_size, recipe.block_size)
        d = lowrank_decompose(m.weight, c.rank, spec, rows(name), amax(name), alphas[name], recipe.refine_iters)
        set_submodule(model, name, d.to_layer(name, m).to(m.weight.device))
        tick(1, name)
    info["sensitivity"] = "end_to_end" if probe is not None else "layer_output"
    return CompressionReport(kept, info, {"probe_calls": probe.calls if probe is not None else 0})


def progress_total(model: nn.Module, recipe: Recipe) -> int:
    """Progress-bar length for `compress_network` (layers are visited twice under a budget)."""
    n = len(compressible_layers(model)[0])
    return n if recipe.bits is not None else 2 * n


def unet_evaluations(n_layers: int, n_probe_points: int, calibration_calls: int) -> int:
    """UNet evaluations a budget compression makes: the calibration sampling calls, one baseline, and one
    replay of the recorded batch per layer and probed bit width."""
    return calibration_calls + 1 + n_layers * n_probe_points

