"""The methods compared by benchmarks/compression.py: each builds a UNet to evaluate plus its size accounting.

Every method quantizes the same layers (`recipes.compressible_layers`: the rest stays fp16 for all of them) and is
sized by the same `artifacts.compressed.accounting` (codes, tables, scales, low-rank factors, smoothing, biases, fp16
leftovers, safetensors header), so bits per parameter are comparable. Baselines are evaluated with their dequantized weights
in dense modules — exactly what their Core ML constexpr ops would decode to.

- rtn_int4_per_channel: symmetric round-to-nearest, one scale per output channel (`quantizers.rtn_per_channel`).
- kmeans4_g16_coremltools: coremltools' own k-means palettization (`palettize_weights.blockwise_compress`,
  mode KMEANS, 4 bits, per_grouped_channel, group 16 along the output axis — what
  `OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=16)` runs), unchanged.
- int4_block32: symmetric int4 with one fp16 scale per 32 input channels (`quantizers.quantize_int_blockwise`).
- mbp_4.5: Apple's mixed-bit palettization recipe search (ml-stable-diffusion's pre-analysis), re-implemented:
  every layer alone palettized at {1, 2, 4, 6, 8} bits, its sensitivity the latent PSNR after the first step on
  calibration prompts, then a PSNR threshold is swept and each layer takes the fewest bits that keep it above the
  threshold; the highest threshold whose whole-UNet effective bits fit 4.5 wins. (Tables per group of 16 output
  channels like the k-means baseline; k-means by `quantizers.kmeans_1d`, as coremltools at 5 bit widths × every
  layer would take too long on 2 cores.)
- ours_*: `palettize.compress.compress_network` with the given recipe and calibration, run dense;
  `*_distilled` then runs `palettize.distill` with the recipe's default distillation settings, paced by its steps
  alone (no time budget, so the row is reproducible), on the fp16 teacher's calls over the calibration prompts.
- apple_mbp_*: recipes made by Apple's own pre-analysis code (`benchmarks/apple_mbp.py --apple-src DIR` writes
  them to results/apple_mbp*.json), applied as Apple applies them — one k-means table per tensor, by
  coremltools' `_get_kmeans_lookup_table_and_weight`, the function Apple's `fake_palettize` calls — and sized
  honestly like every other row. `label_bits` keeps Apple's own figure (code bits over its candidate layers).

Every palettized row also reports `label_bits`: Σ bits·weights / Σ weights over the layers it palettized — how
Apple's recipe names count — beside the honest `bits_per_param` over all UNet parameters.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pocketsd.artifacts.compressed import INT, PALETTE, LayerRecord, accounting
from pocketsd.palettize.packing import pack_codes

MBP_BITS = (1, 2, 4, 6, 8)
MBP_BUDGET = 4.5
RESULTS = Path(__file__).resolve().parent / "results"
GUIDANCE = 5.0


@dataclass
class MethodContext:
    pipe: object
    model: Path
    calib_prompts: list[str]
    calib_steps: int
    latent_prompts: list[str]
    quick: bool = False
    _calibrations: dict = field(default_factory=dict)

    def layers(self, unet):
        from pocketsd.palettize.recipes import compressible_layers

        return compressible_layers(unet)

    def teacher(self):
        """The fp16 UNet's calls and outputs over the calibration prompts (distillation's teacher), recorded once."""
        from pocketsd.palettize.distill import record_teacher

        if "teacher" not in self._calibrations:
            self._calibrations["teacher"] = record_teacher(self.pipe, self.calib_prompts, self.calib_steps, GUIDANCE)
        return self._calibrations["teacher"]

    def calibration(self, timesteps: str = "all"):
        """One calibration per timestep range, shared by every method that uses it."""
        from pocketsd.palettize.calibrate import calibrate

        if timesteps not in self._calibrations:
            modules, _ = self.layers(self.pipe.unet)
            self._calibrations[timesteps] = calibrate(self.pipe, modules, self.calib_prompts, self.calib_steps,
                                                      timesteps)
        return self._calibrations[timesteps]


# ---- shared helpers -------------------------------------------------------------------------------
def _leftover(unet, modules) -> dict[str, torch.Tensor]:
    skip = {f"{n}.{p}" for n in modules for p in ("weight", "bias")}
    return {k: v.detach().to(torch.float16) for k, v in unet.state_dict().items() if k not in skip}


@dataclass
class StoredLayer:
    """One baseline layer as the format would store it: its record and tensors (codes unpacked)."""

    record: LayerRecord
    codes: torch.Tensor
    lut: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    @property
    def shape(self):
        return self.record.shape

    @property
    def group_size(self):
        return self.record.group_size


def _layer(name, m, codes, bits, quantizer, lut=None, scales=None, group=None, block=None) -> StoredLayer:
    record = LayerRecord(name, "conv" if isinstance(m, torch.nn.Conv2d) else "linear", tuple(m.weight.shape),
                         quantizer, bits, group, block, has_bias=m.bias is not None)
    return StoredLayer(record, codes, lut, scales, None if m.bias is None else m.bias.detach().to(torch.float16))


def _accounting(layers: dict[str, StoredLayer], leftover: dict) -> dict:
    """The format's accounting of these layers' tensors plus the fp16 leftovers (header estimated)."""
    state = dict(leftover)
    for name, layer in layers.items():
        state[f"{name}.codes"] = pack_codes(layer.codes, layer.record.bits)
        for key in ("lut", "scales", "bias"):
            if getattr(layer, key) is not None:
                state[f"{name}.{key}"] = getattr(layer, key)
    return accounting(state, [layer.record for layer in layers.values()])


def _finish(fp16_unet, modules, layers: dict, dense: dict, extra: dict | None = None):
    """(evaluation UNet with the dequantized weights, size info) for a method without a low-rank branch."""
    acc = _accounting(layers, _leftover(fp16_unet, modules))
    unet = copy.deepcopy(fp16_unet)
    mods = dict(unet.named_modules())
    with torch.no_grad():
        for name, w in dense.items():
            mods[name].weight.copy_(w.to(mods[name].weight.dtype))
    info = {"bits_per_param": acc["bits_per_param"], "unet_bytes": acc["total_bytes"], "low_rank": False,
            "layers_quantized": len(layers)}
    info.update(extra or {})
    return unet, info


# ---- fp16 and the single-format baselines ---------------------------------------------------------
def fp16(ctx, fp16_unet):
    params = sum(p.numel() for p in fp16_unet.parameters())
    n = len(fp16_unet.state_dict())
    return fp16_unet, {"bits_per_param": 8 * (2 * params + 8 + 90 * n) / params,
                       "unet_bytes": 2 * params + 8 + 90 * n, "low_rank": False, "layers_quantized": 0}


def rtn_int4_per_channel(ctx, fp16_unet):
    from pocketsd.palettize.quantizers import rtn_per_channel

    modules, _ = ctx.layers(fp16_unet)
    layers, dense = {}, {}
    for name, m in modules.items():
        q = rtn_per_channel(m.weight.detach().float(), 4)
        block = q.spec.block_size
        layers[name] = _layer(name, m, q.codes, 4, INT, scales=q.scales, block=block)
        dense[name] = q.dequantized
    return _finish(fp16_unet, modules, layers, dense)


def coreml_kmeans_g16(W: torch.Tensor, bits: int = 4, group: int = 16):
    """coremltools' per-grouped-channel k-means palettization of one weight: (codes, lut (out/G, 2^b), dequantized)."""
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    w = W.detach().to(torch.float16).numpy()
    params = palettize_weights.blockwise_compress(w, "KMEANS", bits, [group] + [0] * (w.ndim - 1))
    lut = torch.from_numpy(np.asarray(params.lut)).reshape(w.shape[0] // group, 1 << bits)
    codes = torch.from_numpy(np.asarray(params.indices).astype(np.uint8)).reshape(w.shape)
    rows = lut.repeat_interleave(group, 0)
    deq = torch.gather(rows, 1, codes.reshape(w.shape[0], -1).long()).reshape(w.shape)
    return codes, lut.to(torch.float16), deq


def kmeans4_g16_coremltools(ctx, fp16_unet):
    from pocketsd.palettize.quantizers import _largest_divisor

    modules, _ = ctx.layers(fp16_unet)
    layers, dense = {}, {}
    for name, m in modules.items():
        g = _largest_divisor(m.weight.shape[0], 16)
        codes, lut, deq = coreml_kmeans_g16(m.weight, 4, g)
        layers[name] = _layer(name, m, codes, 4, PALETTE, lut=lut, group=g)
        dense[name] = deq
    return _finish(fp16_unet, modules, layers, dense, {"implementation": "coremltools blockwise_compress KMEANS"})


def int4_block32(ctx, fp16_unet):
    from pocketsd.palettize.quantizers import QuantSpec, quantize

    modules, _ = ctx.layers(fp16_unet)
    layers, dense = {}, {}
    for name, m in modules.items():
        q = quantize(m.weight.detach().float(), QuantSpec(INT, 4, block_size=32))
        layers[name] = _layer(name, m, q.codes, 4, INT, scales=q.scales, block=q.spec.block_size)
        dense[name] = q.dequantized
    return _finish(fp16_unet, modules, layers, dense)


# ---- Apple's mixed-bit palettization, re-implemented ----------------------------------------------
def palettize_any_bits(W: torch.Tensor, bits: int, group: int):
    """k-means palettization at any bit width (1..8), one table per `group` output channels."""
    from pocketsd.palettize.quantizers import _assign, kmeans_1d

    shape = tuple(W.shape)
    rows = W.detach().float().reshape(shape[0] // group, -1)
    lut = kmeans_1d(rows, 1 << bits).to(torch.float16)
    codes = _assign(rows, lut.float()).to(torch.uint8)
    deq = torch.gather(lut.float(), 1, codes.long()).reshape(shape)
    return codes.reshape(shape), lut, deq


class OneStepLatents:
    """The latent after the first denoising step for fixed prompts and noise, with the UNet called directly
    (text embeddings computed once) — thousands of sensitivity probes stay cheap."""

    def __init__(self, pipe, prompts: list[str], steps: int, guidance: float = 5.0, seed: int = 2024):
        self.pipe, self.guidance = pipe, guidance
        with torch.no_grad():
            emb, neg, pooled, neg_pooled = pipe.encode_prompt(prompts, do_classifier_free_guidance=True,
                                                              negative_prompt=None)
        self.emb = torch.cat([neg, emb])
        size = pipe.default_sample_size * pipe.vae_scale_factor
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(2 * len(prompts), 1)
        self.cond = {"text_embeds": torch.cat([neg_pooled, pooled]), "time_ids": time_ids}
        self.sched = copy.deepcopy(pipe.scheduler)
        self.sched.set_timesteps(steps)
        self.t = self.sched.timesteps[0]
        gen = torch.Generator().manual_seed(seed)
        c = pipe.unet.config.in_channels
        self.x = torch.randn((len(prompts), c, pipe.default_sample_size, pipe.default_sample_size), generator=gen)
        self.x = self.x * self.sched.init_noise_sigma

    @torch.no_grad()
    def __call__(self, unet) -> torch.Tensor:
        sched = copy.deepcopy(self.sched)
        xin = sched.scale_model_input(torch.cat([self.x, self.x]), self.t)
        eps = unet(xin, self.t, self.emb, added_cond_kwargs=self.cond).sample
        uncond, cond = eps.chunk(2)
        eps = uncond + self.guidance * (cond - uncond)
        return sched.step(eps, self.t, self.x).prev_sample


def mbp(ctx, fp16_unet, budget: float = MBP_BUDGET):
    from pocketsd.eval.metrics import latent_psnr
    from pocketsd.palettize.quantizers import _largest_divisor

    modules, _ = ctx.layers(fp16_unet)
    probe = OneStepLatents(ctx.pipe, ctx.calib_prompts[: (4 if ctx.quick else 8)], ctx.calib_steps)
    ref = probe(fp16_unet)
    palettes: dict[str, dict[int, tuple]] = {}
    sens: dict[str, dict[int, float]] = {}
    t0 = time.time()
    for name, m in modules.items():
        g = _largest_divisor(m.weight.shape[0], 16)
        original = m.weight.detach().clone()
        palettes[name], sens[name] = {}, {}
        for bits in MBP_BITS:
            codes, lut, deq = palettize_any_bits(original, bits, g)
            palettes[name][bits] = (codes, lut, g)
            with torch.no_grad():
                m.weight.copy_(deq.to(m.weight.dtype))
            sens[name][bits] = latent_psnr(ref, probe(fp16_unet))
            with torch.no_grad():
                m.weight.copy_(original)
    sensitivity_s = time.time() - t0

    leftover = _leftover(fp16_unet, modules)

    def recipe_at(threshold: float) -> dict[str, int]:
        return {n: next((b for b in MBP_BITS if sens[n][b] >= threshold), MBP_BITS[-1]) for n in modules}

    def layers_for(choice):
        return {n: _layer(n, modules[n], palettes[n][b][0], b, PALETTE, lut=palettes[n][b][1], group=palettes[n][b][2])
                for n, b in choice.items()}

    thresholds = sorted({round(v, 3) for s in sens.values() for v in s.values() if math.isfinite(v)})
    best = None
    for thr in thresholds:  # ascending: more bits as the threshold rises; keep the last that fits
        choice = recipe_at(thr)
        acc = _accounting(layers_for(choice), leftover)
        if acc["bits_per_param"] <= budget:
            best = (thr, choice)
    if best is None:  # even the lowest threshold overshoots: everything at the fewest bits
        best = (thresholds[0], {n: MBP_BITS[0] for n in modules})
    thr, choice = best
    layers = layers_for(choice)
    dense = {n: torch.gather(l.lut.float().repeat_interleave(l.group_size, 0), 1,
                             l.codes.reshape(l.shape[0], -1).long()).reshape(l.shape) for n, l in layers.items()}
    hist = {str(b): sum(1 for v in choice.values() if v == b) for b in MBP_BITS}
    return _finish(fp16_unet, modules, layers, dense,
                   {"psnr_threshold_db": thr, "bits_histogram": hist, "sensitivity_seconds": sensitivity_s,
                    "budget": budget, "label_bits": _label_bits(choice, {n: m.weight.numel() for n, m in modules.items()}),
                    "label_note": "re-implementation: the honest bits_per_param is what its budget bounds"})


def _label_bits(bits: dict[str, int], numel: dict[str, int]) -> float:
    """Apple's way: Σ bits·weights / Σ weights over the palettized layers only (16 for those it left fp16)."""
    return sum(bits[n] * numel[n] for n in bits) / max(1, sum(numel[n] for n in bits))


# ---- Apple's own recipes (made by benchmarks/apple_mbp.py from Apple's code) --------------------------------
def _apple_recipe(recipe: dict[str, int], doc: dict):
    def build(ctx, fp16_unet):
        from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

        modules = dict(fp16_unet.named_modules())
        ours, _ = ctx.layers(fp16_unet)
        layers, dense = {}, {}
        for name, bits in recipe.items():
            if bits == 16:
                continue
            m = modules[name]
            w = m.weight.detach().cpu().numpy().astype(np.float16)  # as Apple's fake_palettize
            lut, idx = _get_kmeans_lookup_table_and_weight(bits, w)
            lut = torch.from_numpy(lut.astype(np.float16)).reshape(1, -1)
            codes = torch.from_numpy(np.asarray(idx).astype(np.uint8)).reshape(w.shape)
            layers[name] = _layer(name, m, codes, bits, PALETTE, lut=lut, group=w.shape[0])
            dense[name] = lut[0][codes.long()].float()
        # Layers Apple leaves at 16 bits (under its size threshold or above every PSNR threshold) stay fp16
        # leftovers, as every row's unquantized layers do.
        hist = {str(b): sum(1 for v in recipe.values() if v == b) for b in (*MBP_BITS, 16)}
        return _finish(fp16_unet, layers, layers, dense, {
            "label_bits": _label_bits(recipe, {n: modules[n].weight.numel() for n in recipe}),
            "bits_histogram": hist, "implementation": "Apple's pre-analysis recipe (apple_mbp.py)",
            "palettize_min_size": doc["palettize_min_size"], "not_in_our_layer_set": sorted(set(layers) - set(ours))})
    return build


def apple_methods(results: Path = RESULTS) -> dict:
    """One method per recipe in results/apple_mbp*.json (absent until benchmarks/apple_mbp.py has run)."""
    import json

    out = {}
    for path in sorted(results.glob("apple_mbp*.json")):
        if path.stem.endswith("_quick"):
            continue
        doc = json.loads(path.read_text())
        for name, recipe in doc.get("recipes", {}).items():
            out[f"{name}_min{int(doc['palettize_min_size'])}"] = _apple_recipe(recipe, doc)
    return out


# ---- ours -----------------------------------------------------------------------------------------
def _ours(recipe_kwargs: dict, timesteps: str = "all", distill: bool = False):
    def build(ctx, fp16_unet):
        from dataclasses import replace

        from pocketsd.palettize.compress import compress_network
        from pocketsd.palettize.distill import distill as run_distill
        from pocketsd.palettize.layer import compressed_layers, compressed_state_dict, set_mode
        from pocketsd.palettize.recipes import make_recipe

        recipe = make_recipe(**recipe_kwargs)
        calib = ctx.calibration(timesteps)
        unet = copy.deepcopy(fp16_unet)  # compress_network replaces layers in place
        compress_network(unet, recipe, calib)
        extra = {}
        if distill:
            settings = replace(recipe.distill_settings(GUIDANCE), minutes=None)  # paced by steps: reproducible
            rep = run_distill(unet, ctx.teacher(), settings)
            extra = {"distill_steps": rep.steps_done, "distill_seconds": rep.seconds,
                     "distill_cpu_seconds": rep.cpu_seconds, "distill_tensors": list(settings.trainable),
                     "held_out_snr_db_before": rep.held_out_snr_db_before,
                     "held_out_snr_db_after": rep.held_out_snr_db_after}
        layers = compressed_layers(unet)
        acc = accounting(compressed_state_dict(unet), [l.record() for l in layers.values()])
        ranks = [l.rank for l in layers.values()]
        bits = [l.bits for l in layers.values()]
        return set_mode(unet, "dense").eval(), {
            "bits_per_param": acc["bits_per_param"], "unet_bytes": acc["total_bytes"], "ours": True,
            "low_rank": any(r > 0 for r in ranks),
            "layers_quantized": len(layers), "recipe": recipe.name, "calib_timesteps": timesteps,
            "smoothing": recipe.smoothing, "mean_rank": float(np.mean(ranks)) if ranks else 0.0,
            "bits_histogram": {str(b): bits.count(b) for b in sorted(set(bits))},
            "lowrank_bytes": acc["bytes_by_category"]["lowrank"],
            "label_bits": _label_bits({n: l.bits for n, l in layers.items()}, {n: l.numel for n, l in layers.items()}),
            **extra,
        }
    return build


METHODS = {
    "fp16": fp16,
    "rtn_int4_per_channel": rtn_int4_per_channel,
    "kmeans4_g16_coremltools": kmeans4_g16_coremltools,
    "int4_block32": int4_block32,
    "mbp_4.5": mbp,
    "ours_w4r32": _ours({"recipe": "w4r32"}),
    "ours_budget4.5": _ours({"bits_budget": 4.5}),
    "ours_budget4.5_no_smoothing": _ours({"bits_budget": 4.5, "smoothing": False}),
    "ours_budget4.5_calib_first25": _ours({"bits_budget": 4.5}, "first25"),
    "ours_budget4.5_calib_last25": _ours({"bits_budget": 4.5}, "last25"),
    "ours_budget4.5_distilled": _ours({"bits_budget": 4.5}, distill=True),
    "ours_budget4.0": _ours({"bits_budget": 4.0}),
    "ours_budget4.0_distilled": _ours({"bits_budget": 4.0}, distill=True),
    "ours_budget6.0_distilled": _ours({"bits_budget": 6.0}, distill=True),
}
METHODS.update(apple_methods())
