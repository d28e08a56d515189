"""Budgeted allocation: per layer a rank and a bit width under an effective-bits-per-parameter budget.

Like Apple's mixed-bit palettization pre-analysis, sensitivity is measured rather than guessed — but with
the low-rank rank as a second dial beside the bit width. Every (rank, bits) candidate of a layer gets its
own output error on calibration inputs (error/signal = 1/SNR of the layer's output). When calibration
recorded UNet calls, each layer also gets an end-to-end response curve (`EndToEndProbe`): the UNet's
relative output error with that layer alone at each bit width and rank 0, against that layer's own error.
A candidate's cost is its layer error read through that curve, so a layer whose errors barely reach the
UNet's output does not soak up the budget, and the 1–2-bit regime (where the UNet's response is far from
linear) is judged by what it does downstream, not extrapolated from 4 bits.

Allocation is greedy: every layer starts at its cheapest candidate, then the upgrade with the largest error
reduction per extra byte is taken, anywhere in the UNet, until the next one would exceed the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..artifacts.compressed import PALETTE, compressed_layer_entries, header_entry_bytes
from .lowrank import lowrank_decompose, smoothed_matrix, svd_factors
from .quantizers import BITS, QuantSpec
from .recipes import RANKS, Recipe


@dataclass(frozen=True)
class Candidate:
    rank: int
    bits: int
    bytes: int
    rel_error: float  # squared output error / squared output norm


def layer_bytes(shape: tuple[int, ...], spec: QuantSpec, rank: int, smoothed: bool, has_bias: bool) -> int:
    """Stored bytes of one compressed layer (see format.py for the tensors)."""
    out, cin = shape[0], shape[1]
    numel = math.prod(shape)
    spec = spec.fitted(shape)
    b = math.ceil(numel * spec.bits / 8)
    if spec.quantizer == PALETTE:
        b += (out // spec.group_size) * (1 << spec.bits) * 2
    else:
        b += (numel // spec.block_size) * 2
    b += rank * (out + numel // out) * 2
    return b + (cin * 2 if smoothed else 0) + (out * 2 if has_bias else 0)


def candidate_bytes(shape: tuple[int, ...], spec: QuantSpec, rank: int, smoothed: bool, has_bias: bool,
                    name: str, digits: int) -> int:
    """What a candidate costs in the file: its tensors plus their entries in the safetensors header (named as the
    layer `name` will store them; `digits`: see artifacts.compressed.offset_digits)."""
    fitted = spec.fitted(shape)
    entries = compressed_layer_entries(name, shape, fitted.bits, fitted.quantizer, fitted.group_size,
                                       fitted.block_size, rank, smoothed, has_bias)
    return (layer_bytes(shape, spec, rank, smoothed, has_bias)
            + sum(header_entry_bytes(key, dims, dtype, digits) for key, dims, dtype in entries))


def rank_cap(shape: tuple[int, ...]) -> int:
    return min(shape[0], math.prod(shape[1:])) // 2


def measure_candidates(W: torch.Tensor, has_bias: bool, recipe: Recipe, rows=None, act_max=None,
                       alpha_grid=(0.0,), name: str = "", digits: int = 11,
                       ) -> tuple[list[Candidate], float, dict[int, tuple[float, torch.Tensor]]]:
    """Output error of every (rank, bits) candidate of one layer, the smoothing α they share, and per bit
    width the rank-0 candidate's (relative error, effective dense weight) for the end-to-end probe.

    α is picked once (at 4 bits and a middle rank); candidates are measured unrefined (SVD + one
    quantization), which ranks them by sensitivity; the chosen one is recomputed with full refinement.
    """
    shape = tuple(W.shape)
    ranks = [r for r in RANKS if r <= rank_cap(shape)]
    probe = QuantSpec(recipe.quantizer, 4, recipe.group_size, recipe.block_size)
    alpha = min((lowrank_decompose(W, min(16, ranks[-1]), probe, rows, act_max, a, 0, probe=True)
                 for a in alpha_grid), key=lambda d: d.error).alpha
    out, rank0 = [], {}
    factors = svd_factors(smoothed_matrix(W, act_max, alpha)[0], ranks[-1]) if ranks[-1] else None  # one SVD
    for bits in BITS[recipe.quantizer]:
        spec = QuantSpec(recipe.quantizer, bits, recipe.group_size, recipe.block_size)
        for rank in ranks:
            d = lowrank_decompose(W, rank, spec, rows, act_max, alpha, iters=0, probe=True, init_factors=factors)
            nbytes = candidate_bytes(shape, spec, rank, d.smooth is not None, has_bias, name, digits)
            out.append(Candidate(rank, bits, nbytes, d.error / max(d.signal, 1e-30)))
            if rank == 0:
                rank0[bits] = (out[-1].rel_error, d.effective_weight())
    return out, alpha, rank0


class EndToEndProbe:
    """Each layer's end-to-end sensitivity: how much of the UNet's output error that layer's own relative
    output error causes (MBP measures the same thing per layer, for bit widths only).

    Replays a few recorded UNet calls (one batch) with one layer's weight swapped for a probe weight.
    `response` is the UNet's relative output MSE.
    Assuming layers' errors add up independently, the allocator minimises Σ response instead of Σ error.
    """

    def __init__(self, model, calls: list[dict], samples: int | None = None, scale: float = 1.0):
        """samples: keep this many of the recorded rows (spread over the calls, so over the schedule);
        scale: 0.5 replays the UNet on latents average-pooled to half the side (a quarter of the cost) — both
        used when the full probe would cost more UNet evaluations than allowed (see compress.plan_probes)."""
        self.model = model
        self.calls = 0  # network evaluations made, the baseline included
        self.inputs = _batch_calls(calls)
        shared = self.inputs.pop(UNBATCHED, {})  # FLUX.1's position ids: one per call, no batch rows to pick
        if samples is not None:
            self.inputs = _pick_rows(self.inputs, samples)
        if scale != 1.0 and "sample" in self.inputs:
            factor = round(1 / scale)
            self.inputs["sample"] = torch.nn.functional.avg_pool2d(self.inputs["sample"], factor)
        self.samples = len(next(iter(v for v in self.inputs.values() if isinstance(v, torch.Tensor))))
        self.inputs.update(shared)
        with torch.no_grad():
            self.base = self._run()
        self.norm = max(float(self.base.pow(2).sum()), 1e-30)

    def _run(self) -> torch.Tensor:
        self.calls += 1
        if "input_ids" in self.inputs:  # a text encoder: what the UNet reads from it
            return encoder_readout(self.model(self.inputs["input_ids"], output_hidden_states=True))
        return self.model(**self.inputs, return_dict=False)[0]

    def response(self, module, probe_weight: torch.Tensor) -> float:
        original = module.weight.data
        module.weight.data = probe_weight.to(original.device, original.dtype)
        try:
            with torch.no_grad():
                return float((self._run() - self.base).pow(2).sum()) / self.norm
        finally:
            module.weight.data = original


class ResponseCurve:
    """A layer's end-to-end error as a function of its own relative error, from a few measured points.

    Interpolated linearly in log-log space between the points (sorted by layer error, made non-decreasing)
    and extended beyond them with slope 1 — proportional, the small-error limit of a smooth network.
    """

    def __init__(self, points: list[tuple[float, float]]):
        pts = sorted((max(e, 1e-30), max(r, 1e-30)) for e, r in points)
        xs = [math.log(e) for e, _ in pts]
        ys, top = [], -math.inf
        for _, r in pts:
            top = max(top, math.log(r))
            ys.append(top)
        self.xs, self.ys = xs, ys

    def __call__(self, rel_error: float) -> float:
        if rel_error <= 0:
            return 0.0
        x, xs, ys = math.log(rel_error), self.xs, self.ys
        if x <= xs[0]:
            return math.exp(ys[0] + x - xs[0])
        if x >= xs[-1]:
            return math.exp(ys[-1] + x - xs[-1])
        i = next(j for j in range(1, len(xs)) if xs[j] >= x)
        span = xs[i] - xs[i - 1]
        t = 0.0 if span <= 0 else (x - xs[i - 1]) / span
        return math.exp(ys[i - 1] + t * (ys[i] - ys[i - 1]))


def encoder_readout(out) -> torch.Tensor:
    """A CLIP text encoder's output as the UNet sees it: the last two hidden states (SDXL reads the penultimate
    layer, SD 1.x/2.x the final one after its norm) and the pooled/projected embedding when there is one."""
    parts = [out.hidden_states[-2].flatten(1), out[0].flatten(1)]
    return torch.cat(parts, dim=1)


def _pick_rows(inputs: dict, n: int) -> dict:
    """`n` batch rows spread evenly over a batched call (nested dicts such as added_cond_kwargs included)."""
    total = next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]
    idx = torch.linspace(0, total - 1, min(n, total)).round().long().unique()

    def pick(v):
        return {k: pick(x) for k, x in v.items()} if isinstance(v, dict) else v[idx]

    return {k: pick(v) for k, v in inputs.items()}


# The key of a recorded transformer call that names its inputs without a batch axis (`calibrate._transformer_call`).
UNBATCHED = "_unbatched"


def _batch_calls(calls: list[dict]) -> dict:
    """Concatenate recorded network calls into one batch (UNet: timesteps expanded to one per row). A transformer's
    call (keyword arguments, `hidden_states` first) is concatenated input by input; its unbatched inputs are taken
    from the first call and returned under UNBATCHED."""
    if "input_ids" in calls[0]:
        return {"input_ids": torch.cat([c["input_ids"] for c in calls])}
    if "hidden_states" in calls[0]:
        shared = set(calls[0].get(UNBATCHED, ()))
        out = {k: torch.cat([c[k] for c in calls]) for k in calls[0] if k != UNBATCHED and k not in shared}
        out[UNBATCHED] = {k: calls[0][k] for k in shared}
        return out
    rows = [c["sample"].shape[0] for c in calls]
    out = {"sample": torch.cat([c["sample"] for c in calls]),
           "timestep": torch.cat([c["timestep"].reshape(-1).expand(n) if c["timestep"].numel() == 1
                                  else c["timestep"].reshape(-1) for c, n in zip(calls, rows)]),
           "encoder_hidden_states": torch.cat([c["encoder_hidden_states"] for c in calls])}
    if "added_cond_kwargs" in calls[0]:
        out["added_cond_kwargs"] = {k: torch.cat([c["added_cond_kwargs"][k] for c in calls])
                                    for k in calls[0]["added_cond_kwargs"]}
    return out


def allocate(budget_bits: float, candidates: dict[str, list[Candidate]], fixed_bytes: int,
             total_params: int) -> dict[str, Candidate]:
    """Greedy choice of one candidate per layer with total bytes ≤ budget_bits·total_params/8.

    fixed_bytes: everything not allocated (fp16 leftovers, container overhead).
    """
    budget = budget_bits * total_params / 8 - fixed_bytes
    choice = {name: min(c, key=lambda x: (x.bytes, x.rel_error)) for name, c in candidates.items()}
    spent = sum(c.bytes for c in choice.values())
    while True:
        best_name, best_cand, best_gain = None, None, 0.0
        for name, options in candidates.items():
            cur = choice[name]
            for cand in options:
                extra = cand.bytes - cur.bytes
                gain = cur.rel_error - cand.rel_error
                if gain <= 0 or spent + max(extra, 0) > budget:
                    continue
                ratio = math.inf if extra <= 0 else gain / extra
                if ratio > best_gain:
                    best_name, best_cand, best_gain = name, cand, ratio
        if best_name is None:
            return choice
        spent += best_cand.bytes - choice[best_name].bytes
        choice[best_name] = best_cand
