"""Compress one network: every eligible Linear/Conv2d becomes a `CompressedLayer`, by a fixed recipe or a budget.

The network may sit on an accelerator (its probes then run there); every decomposition runs on the CPU, where the
scalar k-means lives, and the new layer is moved to the network's device.

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


PROBE_SCALES = (1.0, 0.5, 0.25, 0.125)  # latent side of the budget's end-to-end probes, against the native side


@dataclass(frozen=True)
class ProbePlan:
    """How the budget allocator's end-to-end probes replay the UNet, and what the whole compression costs in
    UNet evaluations at the model's native size (one sample, one forward pass = 1; half the latent side = ¼)."""

    samples: int  # recorded batch rows replayed per probe
    scale: float  # 1: native latent size; 0.5: half the side
    bits: tuple[int, ...]  # bit widths probed per layer (the response curve's points)
    layers: int
    calibration_evaluations: int
    limit: int

    @property
    def probe_evaluations(self) -> float:
        return (1 + self.layers * len(self.bits)) * self.samples * self.scale ** 2

    @property
    def total(self) -> float:
        return self.calibration_evaluations + self.probe_evaluations

    def describe(self) -> str:
        res = "native size" if self.scale == 1 else f"1/{round(1 / self.scale)} of the latent side"
        return (f"{self.total:,.0f} UNet evaluations at native size (limit {self.limit:,}): calibration "
                f"{self.calibration_evaluations:,} + probes {self.probe_evaluations:,.0f} ({self.layers} layers × "
                f"{len(self.bits)} bit widths × {self.samples} samples at {res})")


def plan_probes(layers: int, calibration_evaluations: int, bits: tuple[int, ...], available_samples: int,
                latent_hw: tuple[int, int], down_factor: int, limit: int = 2000) -> ProbePlan:
    """The most faithful probe that keeps the whole compression within `limit` UNet evaluations.

    Fidelity is given up in this order: fewer replayed samples (down to 4), half the latent side (any sample
    count), a quarter then an eighth of the side with at least 4 samples (while the UNet's levels stay whole: the
    UNet takes any such size, and a layer's error is read through the same weights at 1/16 and 1/64 of the cost —
    what makes the budget affordable at SDXL's 128² latents), fewer samples (down to 1), then only the 1-, 2-, 4- and 8-bit points of the response curve. When even that is
    over the limit the cheapest plan is returned (the caller says so).
    """
    ladder = []
    scales = [1.0]
    while len(scales) < len(PROBE_SCALES) and all(s % (round(2 / scales[-1]) * down_factor) == 0 for s in latent_hw):
        scales.append(scales[-1] / 2)
    few_bits = tuple(b for b in bits if b in (1, 2, 4, 8)) or bits
    counts = [n for n in (32, 16, 8, 4, 2, 1) if n <= available_samples] or [available_samples]
    for n in [c for c in counts if c >= 4] or counts[:1]:
        ladder.append((n, 1.0, bits))
    # half the side with any sample count first (what the reference model's default has always chosen), then the
    # smaller sides with at least 4 samples, then fewer samples
    ladder += [(n, scale, bits) for scale in scales[1:2] for n in counts]
    ladder += [(n, scale, bits) for scale in scales[2:] for n in counts if n >= 4]
    ladder += [(n, scale, bits) for scale in scales[2:] for n in counts if n < 4]
    ladder += [(n, 1.0, bits) for n in counts if n < 4]
    ladder += [(n, scales[-1], few_bits) for n in counts]
    plans = [ProbePlan(n, sc, b, layers, calibration_evaluations, limit) for n, sc, b in ladder]
    return next((plan for plan in plans if plan.total <= limit), min(plans, key=lambda plan: plan.total))


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


def budget_over_layers(model: nn.Module, bits_per_layer_weight: float) -> float:
    """The bits per parameter of `model` when its compressible layers average `bits_per_layer_weight` and its fp16
    leftovers stay as they are. A text encoder's token embeddings (SDXL's CLIP-L: 38 M of 123 M parameters) are
    fp16 leftovers, so a UNet's 4.5-bit budget is below what the whole encoder can reach; read over its layers it
    is the same 4.5 bits per compressed weight."""
    modules, _ = compressible_layers(model)
    layer_params = sum(m.weight.numel() + (0 if m.bias is None else m.bias.numel()) for m in modules.values())
    return (8 * fixed_bytes(model, modules) + bits_per_layer_weight * layer_params) / sum(p.numel() for p in model.parameters())


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
                     progress=None, probe: ProbePlan | None = None) -> CompressionReport:
    """Replace every eligible Linear/Conv2d of `model` (fp32 or fp16 weights) by a `CompressedLayer` (packed).

    calibration: statistics from `calibrate` (None: no smoothing, weight-space errors — e.g. random SDXL weights).
    progress: optional callable(advance: int, description: str).
    probe: how the budget's end-to-end probes replay the network (default: every recorded sample, native size,
    every bit width).
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
            d = compress_layer(m.weight.detach().cpu(), recipe.rank, spec, rows(name), amax(name), grid,
                               recipe.refine_iters)
            set_submodule(model, name, d.to_layer(name, m).to(m.weight.device))
            tick(1, name)
        return CompressionReport(kept, info)

    cands, alphas = {}, {}
    plan = probe
    probe = None
    if calibration and calibration.unet_inputs:
        probe = EndToEndProbe(model, calibration.unet_inputs, plan.samples if plan else None,
                              plan.scale if plan else 1.0)
    for name, m in modules.items():
        cands[name], alphas[name], rank0 = measure_candidates(m.weight.detach().cpu(), m.bias is not None, recipe,
                                                              rows(name), amax(name), grid)
        if probe is not None:  # read this layer's errors through how they reach the network's output
            points = [(err, w) for bits, (err, w) in rank0.items() if plan is None or bits in plan.bits]
            curve = ResponseCurve([(err, probe.response(m, w)) for err, w in points])
            cands[name] = [Candidate(c.rank, c.bits, c.bytes, curve(c.rel_error)) for c in cands[name]]
        tick(1, f"measuring {name}")
    params = sum(p.numel() for p in model.parameters())
    choice = allocate(recipe.bits_budget, cands, fixed_bytes(model, modules), params)
    for name, m in modules.items():
        c = choice[name]
        spec = QuantSpec(recipe.quantizer, c.bits, recipe.group_size, recipe.block_size)
        d = lowrank_decompose(m.weight.detach().cpu(), c.rank, spec, rows(name), amax(name), alphas[name],
                              recipe.refine_iters)
        set_submodule(model, name, d.to_layer(name, m).to(m.weight.device))
        tick(1, name)
    info["sensitivity"] = "end_to_end" if probe is not None else "layer_output"
    allocation = {"probe_calls": probe.calls if probe is not None else 0}
    if probe is not None:
        allocation.update(probe_samples=probe.samples, probe_scale=plan.scale if plan else 1.0,
                          probe_bits=list(plan.bits) if plan else list(rank0))
    return CompressionReport(kept, info, allocation)


def progress_total(model: nn.Module, recipe: Recipe) -> int:
    """Progress-bar length for `compress_network` (layers are visited twice under a budget)."""
    n = len(compressible_layers(model)[0])
    return n if recipe.bits is not None else 2 * n



