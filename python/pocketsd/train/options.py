"""`pocketsd lora train`'s options and their checks, in one place (before any model loads)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInput

UNET_MODES = ("packed", "dense")
# Upper bounds, so a typo (an extra zero, a pasted number) is refused in one line instead of running for days or
# until the kernel's OOM killer ends it without a word.
MAX_STEPS = 1_000_000
MAX_BATCH = 256  # images per step: activations grow with it, and 256 is past what any LoRA recipe uses
MAX_RESOLUTION = 4096  # generate's MAX_SIDE: the largest image any PocketSD stage makes
MAX_PREVIEW_STEPS = 1000  # generate's MAX_STEPS
MAX_LR = 1.0  # AdamW with a step of 1 already diverges at once
MAX_ALPHA = 1e6
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed's range


@dataclass
class TrainOptions:
    images: Path
    out: Path
    captions: Path | None = None
    model: str | None = None  # None: the embedded reference model
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank (scale 1)
    steps: int = 500
    lr: float = 1e-4
    batch: int = 4
    resolution: int | None = None  # None: the model's native size
    text_encoders: bool = False
    unet_mode: str = "packed"  # compressed models: 4-bit codes in memory (QLoRA) or dequantized once
    device: str = "cpu"  # a concrete torch device (the CLI resolves `auto`)
    seed: int = 0
    checkpoint_every: int = 100
    resume: bool = False
    keep_checkpoint: bool = False
    preview_every: int | None = None  # None: as often as checkpoints; 0: never
    preview_prompts: list[str] = field(default_factory=list)  # empty: the first captions of the data
    preview_steps: int = 20
    snr_gamma: float | None = 5.0  # min-SNR loss weighting (Hang et al. 2023); None: plain MSE
    warmup_steps: int = 20
    gradient_checkpointing: bool = False
    allow_pickle: bool = False
    report: Path | None = None  # None: <out>.json
    force: bool = False  # replace an --out/--report PocketSD did not write

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def preview_interval(self) -> int:
        return self.checkpoint_every if self.preview_every is None else self.preview_every

    @property
    def report_path(self) -> Path:
        return self.report or Path(self.out).with_suffix(".json")


def _positive_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> None:
    if not isinstance(value, int) or value < minimum:
        raise BadInput(f"{name} must be an integer ≥ {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise BadInput(f"{name} must be at most {maximum:,}, got {value:,}")


def check_options(opts: TrainOptions) -> None:
    """Every check that needs neither the images nor the model; BadInput with one line."""
    _positive_int("--rank", opts.rank)  # its upper bound depends on the model's layers: lora.check_rank
    _positive_int("--steps", opts.steps, 1, MAX_STEPS)
    _positive_int("--batch", opts.batch, 1, MAX_BATCH)
    _positive_int("--checkpoint-every", opts.checkpoint_every, 1, MAX_STEPS)
    _positive_int("--preview-steps", opts.preview_steps, 1, MAX_PREVIEW_STEPS)
    _positive_int("--warmup-steps", opts.warmup_steps, 0, MAX_STEPS)
    if opts.preview_every is not None:
        _positive_int("--preview-every", opts.preview_every, 0, MAX_STEPS)
    if not isinstance(opts.seed, int) or not 0 <= opts.seed <= SEED_MAX:
        raise BadInput(f"--seed must be in 0..2^64-1, got {opts.seed}")
    if not (isinstance(opts.lr, (int, float)) and math.isfinite(opts.lr) and opts.lr > 0):
        raise BadInput(f"--lr must be a positive number, got {opts.lr}")
    if opts.lr > MAX_LR:
        raise BadInput(f"--lr must be at most {MAX_LR:g} (LoRA learning rates are around 1e-4), got {opts.lr:g}")
    if opts.alpha is not None and not (math.isfinite(opts.alpha) and 0 < opts.alpha <= MAX_ALPHA):
        raise BadInput(f"--alpha must be a positive number up to {MAX_ALPHA:g}, got {opts.alpha}")
    if opts.snr_gamma is not None and not (math.isfinite(opts.snr_gamma) and opts.snr_gamma > 0):
        raise BadInput(f"--snr-gamma must be a positive number, got {opts.snr_gamma}")
    if opts.resolution is not None:
        _positive_int("--resolution", opts.resolution, 64, MAX_RESOLUTION)
    if opts.unet_mode not in UNET_MODES:
        raise BadInput(f"--unet-mode must be one of {', '.join(UNET_MODES)}, got {opts.unet_mode!r}")
    out = Path(opts.out)
    if out.suffix != ".safetensors":
        raise BadInput(f"--out {out} must end in .safetensors (the LoRA is written as a safetensors file)")
    if out.is_dir():
        raise BadInput(f"--out {out} is a folder; give a file name ending in .safetensors")
    if not out.parent.is_dir():
        raise BadInput(f"the folder of --out {out} does not exist; create {out.parent} first")
