"""Compression recipes: fixed (bits, rank) for every layer, or a bits-per-parameter budget to allocate.

Which layers stay fp16 (the same rule for every recipe, recorded in the manifest):
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from torch import nn

from ..errors import BadInput
from .format import INT, PALETTE

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
# Like Apple's mixed-bit palettization, the budget may drop insensitive layers to 1–2-bit palettes and spend
# what that saves on sensitive ones; with {4, 6, 8} alone a 4.5-bit budget leaves almost nothing to move
# (measured on the reference model: 31.5 dB image PSNR against MBP's 37.1 dB at equal size).
BITS = {PALETTE: (1, 2, 4, 6, 8), INT: (4, 8)}
DEFAULT_BUDGET = 4.5
MIN_BUDGET = 4.0


@dataclass(frozen=True)
class Recipe:
    name: str
    quantizer: str = PALETTE
    group_size: int = 16
    block_size: int = 32
    bits: int | None = 4  # fixed bits (None: allocated by the budget)
    rank: int | None = 32  # fixed rank (None: allocated)
    bits_budget: float | None = None
    smoothing: bool = True
    refine_iters: int = 3
    fp16_layers_rule: str = FP16_LAYERS_RULE

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rank_note"] = "rank is capped at min(out, in·k)/2 per layer"
        return d


FIXED = {"w4r32": (4, 32), "w4r0": (4, 0), "w4r16": (4, 16), "w4r64": (4, 64), "w6r0": (6, 0), "w8r0": (8, 0)}


def make_recipe(recipe: str | None = None, bits_budget: float | None = None, quantizer: str = PALETTE,
                group_size: int = 16, block_size: int = 32, smoothing: bool = True, refine_iters: int = 3) -> Recipe:
    """Validate the user's choice (one of a fixed recipe or a budget; the budget by default)."""
    quantizer = {"int": INT}.get(quantizer, quantizer)
    if quantizer not in (PALETTE, INT):
        raise BadInput(f"unknown quantizer {quantizer!r}: use palette or int4")
    if recipe is not None and bits_budget is not None:
        raise BadInput("give either --recipe or --bits-budget, not both")
    common = dict(quantizer=quantizer, group_size=group_size, block_size=block_size, smoothing=smoothing,
                  refine_iters=refine_iters)
    if group_size < 1 or block_size < 1:
        raise BadInput("--group-size and --block-size must be positive")
    if recipe is not None and recipe != "budget":
        if recipe not in FIXED:
            raise BadInput(f"unknown recipe {recipe!r}: choose one of {', '.join(FIXED)} or use --bits-budget")
        bits, rank = FIXED[recipe]
        if bits not in BITS[quantizer]:
            raise BadInput(f"recipe {recipe} needs {bits}-bit weights, which the {quantizer} quantizer cannot "
                           f"store (Core ML blocks are int4/int8); use --quantizer palette")
        return Recipe(name=recipe, bits=bits, rank=rank, **common)
    budget = DEFAULT_BUDGET if bits_budget is None else float(bits_budget)
    if budget < MIN_BUDGET:
        raise BadInput(f"--bits-budget {budget:g} is below {MIN_BUDGET:g}: the smallest codes are 4 bits per weight")
    return Recipe(name=f"budget{budget:g}", bits=None, rank=None, bits_budget=budget, **common)


def compressible_layers(unet: nn.Module) -> tuple[dict[str, nn.Module], list[str]]:
    """(Linear/Conv2d modules to compress by name, names of Linear/Conv2d kept fp16) per FP16_LAYERS_RULE."""
    chosen, kept = {}, []
    for name, m in unet.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        small = m.weight.numel() < MIN_WEIGHTS
        odd = isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros")
        if _FP16_NAME.match(name) or small or odd:
            kept.append(name)
        else:
            chosen[name] = m
    return chosen, kept
