"""Compression recipes: fixed (bits, rank) for every layer, or a bits-per-parameter budget to allocate.

Every default of a compression lives in `Recipe`'s signature (the way diffusers' `@register_to_config`
keeps a model's defaults in one place); the CLI reads its defaults from there.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

from torch import nn

from ..artifacts.compressed import INT, PALETTE
from ..errors import BadInput
from .lowrank import REFINE_ITERS
from .quantizers import BITS, DEFAULT_BLOCK_SIZE, DEFAULT_GROUP_SIZE

FP16_LAYERS_RULE = (
    "conv_in and conv_out (4 latent channels: tiny, and every error there hits the latents directly), "
    "the timestep and added-condition embedding MLPs (time_embedding.*, add_embedding.*: conditioning "
    "for every block), Linear/Conv2d with fewer than 1024 weights or groups≠1; norms, biases and "
    "all non-Linear/Conv2d parameters are fp16 leftovers"
)
_FP16_NAME = re.compile(r"^(conv_in|conv_out|time_embedding\..*|add_embedding\..*|class_embedding\..*)$")
MIN_WEIGHTS = 1024

RANKS = (0, 4, 8, 16, 32, 64, 128)  # the issue's {0, 8, …, 128} plus 4: rank is relative to width, and
# on 32–128-wide layers (the reference model) rank 8 already costs 1–4 extra bits per weight
DEFAULT_BUDGET = 4.5
MAX_BUDGET = 16.0  # fp16 itself: a budget above it buys nothing
FIXED = {"w4r32": (4, 32), "w4r0": (4, 0), "w4r16": (4, 16), "w4r64": (4, 64), "w6r0": (6, 0), "w8r0": (8, 0)}
QUANTIZER_ALIASES = {"int": INT, "int4": INT, "palette": PALETTE}
# The VAE's default: one fixed palette for every layer (no calibration runs through the VAE while calibrating, so
# there is nothing to allocate a budget by), tried in this order; the first that passes the fidelity gate below is
# kept, and if none does the VAE stays uncompressed. 8 bits, not 6: on the reference model 6 bits passes on the
# model's own samples (46 dB worst of 8) but not on latents outside them (31 dB on an encode→decode of N(0, 1)
# latents' images, where 8 bits keeps 44 dB; docs/compression.md), and 6 bits would save only ~21 MB of SDXL's VAE.
VAE_RECIPES = ("w8r0",)
# The gate: image PSNR of the compressed VAE against the source VAE (both computed in fp32), on the decode of
# calibration latents and on the encode→decode round trip of those decoded images, worst image of either path.
VAE_MIN_PSNR_DB = 40.0
VAE_GATE_IMAGES = 2  # calibration latents the gate decodes (each costs ~3 decodes and 2 encodes per recipe tried)
# Text encoders' token embeddings: int8 codes with one fp16 scale per token row (the table is read by a gather, so
# its error reaches the first block directly; 8 bits keep it near fp16's while halving its bytes).
TOKEN_EMBEDDING_QUANTIZER, TOKEN_EMBEDDING_BITS = INT, 8
DEFAULT_DISTILL_STEPS = 600
DEFAULT_DISTILL_MINUTES = 10.0


@dataclass(frozen=True)
class Recipe:
    name: str = f"budget{DEFAULT_BUDGET:g}"
    quantizer: str = PALETTE
    group_size: int = DEFAULT_GROUP_SIZE  # palette: output channels sharing one table
    block_size: int = DEFAULT_BLOCK_SIZE  # int: input channels sharing one scale
    bits: int | None = None  # fixed bits (None: allocated by the budget)
    rank: int | None = None  # fixed rank (None: allocated)
    bits_budget: float | None = DEFAULT_BUDGET
    smoothing: bool = True
    refine_iters: int = REFINE_ITERS
    fp16_layers_rule: str = FP16_LAYERS_RULE
    # Distillation of the small tensors against the fp16 model after quantization, codes frozen: block by block
    # ("block", `palettize.blockwise`: one block in fp32 at a time, every compressed network) or the whole UNet at
    # once ("whole", `palettize.distill`: an fp32 copy of the UNet, for models where it fits); it runs until
    # `distill_steps` (per block in block mode) or `distill_minutes` (wall clock, all of it), whichever comes first.
    distill: str = "block"  # "block" | "whole" | "off"
    distill_inputs: str = "best"  # block mode: "best" | "student" | "fp16" (see palettize.blockwise)
    distill_cache_gb: float = 4.0  # block mode: disk cap for the recorded fp16 block inputs and outputs (GB, 1e9 B)
    distill_steps: int = DEFAULT_DISTILL_STEPS  # 0: off
    distill_epochs: float = 10.0  # at most this many passes over the recorded teacher pairs
    distill_minutes: float | None = DEFAULT_DISTILL_MINUTES
    distill_tensors: tuple[str, ...] = ("lowrank", "table", "bias")  # of layer.TRAINABLE
    distill_lr: float = 1e-3  # Adam step relative to each tensor's RMS
    distill_batch: int = 8  # (unconditional, conditional) pairs per step
    distill_seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rank_note"] = "rank is capped at min(out, in·k)/2 per layer"
        return d

    @property
    def distills(self) -> bool:
        return self.distill != "off" and self.distill_steps > 0

    def block_distill_settings(self, minutes: float | None = None):
        """The `palettize.blockwise.BlockDistillSettings` of this recipe (`minutes`: this network's share)."""
        from .blockwise import BlockDistillSettings

        return BlockDistillSettings(steps=self.distill_steps, max_epochs=self.distill_epochs, minutes=minutes, trainable=tuple(self.distill_tensors),
                                    lr=self.distill_lr, inputs=self.distill_inputs, seed=self.distill_seed).check()

    def distill_settings(self, guidance: float = 5.0):
        """The `palettize.distill.DistillSettings` this recipe asks for (checked: bad values are BadInput)."""
        from .distill import DistillSettings

        return DistillSettings(steps=self.distill_steps, max_epochs=self.distill_epochs, minutes=self.distill_minutes,
                               trainable=tuple(self.distill_tensors), lr=self.distill_lr,
                               batch_pairs=self.distill_batch, guidance=guidance, seed=self.distill_seed).check()

    @classmethod
    def default(cls, name: str):
        """A field's default value, for the CLI's help and argument defaults."""
        return next(f.default for f in fields(cls) if f.name == name)


def make_recipe(recipe: str | None = None, bits_budget: float | None = None, quantizer: str = Recipe.quantizer,
                group_size: int = Recipe.group_size, block_size: int = Recipe.block_size,
                smoothing: bool = Recipe.smoothing, refine_iters: int = Recipe.refine_iters,
                **distill) -> Recipe:
    """Validate the user's choice (one of a fixed recipe or a budget; the budget by default).
    `distill`: any of Recipe's distill_* fields (validated here)."""
    quantizer = QUANTIZER_ALIASES.get(quantizer, quantizer)
    if quantizer not in (PALETTE, INT):
        raise BadInput(f"unknown quantizer {quantizer!r}: use palette or int4")
    if recipe is not None and bits_budget is not None:
        raise BadInput("give either --recipe or --bits-budget, not both")
    if group_size < 1 or block_size < 1:
        raise BadInput("--group-size and --block-size must be positive")
    if refine_iters < 0 or refine_iters > 20:
        raise BadInput(f"--refine-iters must be in 0..20, got {refine_iters}")
    unknown = [k for k in distill if not k.startswith("distill") or k not in {f.name for f in fields(Recipe)}]
    if unknown:
        raise TypeError(f"make_recipe() got unexpected arguments {unknown}")
    if isinstance(distill.get("distill_tensors"), str):
        distill["distill_tensors"] = tuple(t.strip() for t in distill["distill_tensors"].split(",") if t.strip())
    common = dict(quantizer=quantizer, group_size=group_size, block_size=block_size, smoothing=smoothing,
                  refine_iters=refine_iters, **distill)
    checked = Recipe(**common)
    checked.distill_settings()  # bad distillation options fail here, before anything loads
    if checked.distill not in ("block", "whole", "off"):
        raise BadInput(f"--distill must be one of block, whole, off, got {checked.distill!r}")
    checked.block_distill_settings()
    if not (math.isfinite(checked.distill_cache_gb) and 0 < checked.distill_cache_gb <= 10_000):
        raise BadInput(f"--distill-cache-gb must be in (0, 10000] GB, got {checked.distill_cache_gb}")
    if recipe is not None and recipe != "budget":
        if recipe not in FIXED:
            raise BadInput(f"unknown recipe {recipe!r}: choose one of {', '.join(FIXED)} or use --bits-budget")
        bits, rank = FIXED[recipe]
        if bits not in BITS[quantizer]:
            raise BadInput(f"recipe {recipe} needs {bits}-bit weights, which the {quantizer} quantizer cannot "
                           f"store (Core ML blocks are int4/int8); use --quantizer palette")
        return Recipe(name=recipe, bits=bits, rank=rank, bits_budget=None, **common)
    budget = DEFAULT_BUDGET if bits_budget is None else float(bits_budget)
    if not math.isfinite(budget) or budget <= 0 or budget > MAX_BUDGET:
        raise BadInput(f"--bits-budget must be a number in (0, {MAX_BUDGET:g}] bits per parameter, got {bits_budget}")
    return Recipe(name=f"budget{budget:g}", bits=None, rank=None, bits_budget=budget, **common)


def compressible_layers(model: nn.Module) -> tuple[dict[str, nn.Module], list[str]]:
    """(Linear/Conv2d modules to compress by name, names of Linear/Conv2d kept fp16) per FP16_LAYERS_RULE."""
    chosen, kept = {}, []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        small = m.weight.numel() < MIN_WEIGHTS
        odd = isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str))
        if _FP16_NAME.match(name) or small or odd:
            kept.append(name)
        else:
            chosen[name] = m
    return chosen, kept
