"""Compress one network: every eligible Linear/Conv2d becomes a `CompressedLayer`, by a fixed recipe or a budget.

The network may sit on an accelerator (its probes then run there); every decomposition runs on the CPU, where the
scalar k-means lives, and the new layer is moved to the network's device.

Tensors in, tensors out: the caller (the `compress` stage) loads the model, calibrates it and writes the
result; here only the decomposition and the allocation happen. Layers are replaced in place, one at a time,
so a model never holds a float and a compressed copy of more than one layer at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..artifacts.compressed import INT, PALETTE, LayerRecord, file_metadata, header_bytes, offset_digits
from ..errors import BadInput
from .allocate import Candidate, EndToEndProbe, ResponseCurve, allocate, candidate_bytes, measure_candidates
from .calibrate import Calibration
from .layer import CompressedLayer, set_submodule
from .lowrank import ALPHA_GRID, compress_layer, lowrank_decompose
from .quantizers import BITS, QuantSpec, quantize
from .recipes import TOKEN_EMBEDDING_BITS, TOKEN_EMBEDDING_QUANTIZER, Recipe, compressible_layers
from .workers import map_layers


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


def header_digits(model: nn.Module) -> int:
    """Digits of the compressed file's data offsets: it is never larger than the network in fp16."""
    return offset_digits(2 * sum(p.numel() for p in model.parameters()))


def fixed_bytes(model: nn.Module, modules: dict[str, nn.Module]) -> int:
    """Bytes that do not depend on the allocation: fp16 leftovers, their entries in the safetensors header and the
    header's own frame (its length, braces, metadata — sized for the longest component name, an upper bound)."""
    leftover = _leftover_tensors(model, modules)
    entries = [(k, tuple(t.shape), "F16" if t.is_floating_point() else "U8") for k, t in leftover.items()]
    return sum(2 * t.numel() if t.is_floating_point() else t.numel() * t.element_size() for t in leftover.values()) \
        + header_bytes(entries, file_metadata("text_encoder_2"), header_digits(model))


def budget_floor_bits(model: nn.Module, recipe: Recipe) -> float:
    """The fewest effective bits per parameter this recipe's quantizer can reach on `model` (every layer at its
    smallest bit width, rank 0, no smoothing) — a budget below it cannot be met."""
    modules, _ = compressible_layers(model)
    spec = QuantSpec(recipe.quantizer, min(BITS[recipe.quantizer]), recipe.group_size, recipe.block_size)
    digits = header_digits(model)
    floor = sum(candidate_bytes(tuple(m.weight.shape), spec, 0, False, m.bias is not None, name, digits)
                for name, m in modules.items())
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
                     progress=None, probe: ProbePlan | None = None, workers: int | None = None) -> CompressionReport:
    """Replace every eligible Linear/Conv2d of `model` (fp32 or fp16 weights) by a `CompressedLayer` (packed).

    calibration: statistics from `calibrate` (None: no smoothing, weight-space errors — e.g. random SDXL weights).
    progress: optional callable(advance: int, description: str).
    probe: how the budget's end-to-end probes replay the network (default: every recorded sample, native size,
    every bit width).
    workers: processes decomposing layers at once (`workers.map_layers`; None: every usable CPU). The bytes
    written do not depend on it; the budget's end-to-end probes stay in this process, on the network.
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
        tasks = ((m.weight.detach().cpu(), recipe.rank, spec, rows(name), amax(name), grid, recipe.refine_iters)
                 for name, m in modules.items())
        for (name, m), d in zip(modules.items(), map_layers(compress_layer, tasks, workers, len(modules))):
            set_submodule(model, name, d.to_layer(name, m).to(m.weight.device))
            modules[name] = None  # the last reference to the float layer: freed now, not when the network is done
            tick(1, name)
        return CompressionReport(kept, info)

    cands, alphas = {}, {}
    plan = probe
    probe = None
    if calibration and calibration.unet_inputs:
        probe = EndToEndProbe(model, calibration.unet_inputs, plan.samples if plan else None,
                              plan.scale if plan else 1.0)
    digits = header_digits(model)
    tasks = ((m.weight.detach().cpu(), m.bias is not None, recipe, rows(name), amax(name), grid, name, digits)
             for name, m in modules.items())
    for (name, m), measured in zip(modules.items(), map_layers(measure_candidates, tasks, workers, len(modules))):
        cands[name], alphas[name], rank0 = measured
        if probe is not None:  # read this layer's errors through how they reach the network's output
            points = [(err, w) for bits, (err, w) in rank0.items() if plan is None or bits in plan.bits]
            curve = ResponseCurve([(err, probe.response(m, w)) for err, w in points])
            cands[name] = [Candidate(c.rank, c.bits, c.bytes, curve(c.rel_error)) for c in cands[name]]
        tick(1, f"measuring {name}")
    params = sum(p.numel() for p in model.parameters())
    choice = allocate(recipe.bits_budget, cands, fixed_bytes(model, modules), params)
    specs = {name: QuantSpec(recipe.quantizer, c.bits, recipe.group_size, recipe.block_size)
             for name, c in choice.items()}
    tasks = ((m.weight.detach().cpu(), choice[name].rank, specs[name], rows(name), amax(name), alphas[name],
              recipe.refine_iters) for name, m in modules.items())
    for (name, m), d in zip(modules.items(), map_layers(lowrank_decompose, tasks, workers, len(modules))):
        set_submodule(model, name, d.to_layer(name, m).to(m.weight.device))
        modules[name] = None  # as above: one float layer and its compressed form at a time, not the whole network twice
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


def compress_token_embeddings(model: nn.Module, quantizer: str = TOKEN_EMBEDDING_QUANTIZER,
                              bits: int = TOKEN_EMBEDDING_BITS) -> dict | None:
    """Replace a text encoder's token embedding table (`get_input_embeddings()`, transformers' own accessor) by a
    `CompressedEmbedding` of `bits`-bit codes: int with one scale per token row, or a palette per 16 rows. Returns
    what the manifest records (None when the model has no plain nn.Embedding input table).

    Done after the encoder's blocks are compressed and distilled: the table precedes every block, and a lookup's
    error is the stored row's error, so it is measured in weight space (its snr_db)."""
    getter = getattr(model, "get_input_embeddings", None)
    table = getter() if callable(getter) else None
    if type(table) is not nn.Embedding:  # noqa: E721 (a subclass may change what the lookup means)
        return None
    name = next(n for n, m in model.named_modules() if m is table)
    weight = table.weight.detach().float().cpu()
    spec = QuantSpec(quantizer, bits, group_size=16, block_size=weight.shape[1]).fitted(tuple(weight.shape))
    q = quantize(weight, spec)
    error = float((weight - q.dequantized.float()).pow(2).sum())
    snr_db = 10 * math.log10(float(weight.pow(2).sum()) / max(error, 1e-30))
    record = LayerRecord(name, "embedding", tuple(weight.shape), spec.quantizer, spec.bits,
                         spec.group_size if spec.quantizer == PALETTE else None,
                         spec.block_size if spec.quantizer == INT else None, snr_db=snr_db)
    layer = CompressedLayer.from_parts(record, table, q.codes, lut=q.lut, scales=q.scales)
    set_submodule(model, name, layer.to(table.weight.device))
    return {"layer": name, "quantizer": spec.quantizer, "bits": spec.bits,
            "tiling": f"one table per {spec.group_size} rows" if spec.quantizer == PALETTE else "one scale per token row",
            "snr_db": round(snr_db, 3)}
