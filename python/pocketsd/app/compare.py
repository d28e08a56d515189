"""One press of Generate: the same prompt and seed on one model, or on fp16 and a 4-bit form side by side.

Everything is checked first (`check_options` for every model, before any weights load), then each model runs
through the one generation path (`GenerationSession.generate`) on a cached session, its PNG and JSON report are
written with `save_output` (the CLI's writer), and the 4-bit image gets its PSNR against the fp16 one. Progress,
cancel and warnings go through the session's own hooks (`on_step`, `cancel`, `warn`).
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from ..errors import BadInput
from ..eval.metrics import image_psnr
from ..pipeline.options import GenerateOptions, check_options
from ..pipeline.session import GenerationCancelled, GenerationOutput, save_output
from .models import ModelCache, ModelChoice

_run_ids = itertools.count(1)
_run_ids_lock = threading.Lock()


@dataclass
class ModelResult:
    choice: ModelChoice
    output: GenerationOutput
    png: Path
    report_path: Path
    psnr_db: float | None = None  # the image's PSNR against the fp16 image of the same run (compare mode)

    @property
    def report(self) -> dict:
        return self.output.report


@dataclass
class Progress:
    """What the page shows while a model works: `stage` is "loading" or "denoising"."""

    label: str
    stage: str
    step: int = 0
    total: int = 0


@dataclass
class RunLog:
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.warnings:  # both models warn about the same prompt: say it once
            self.warnings.append(message)


def options_for(base: GenerateOptions, choice: ModelChoice) -> GenerateOptions:
    return replace(base, model=choice.model, unet_mode=choice.unet_mode, backend=choice.backend)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_models(base: GenerateOptions, choices: list[ModelChoice], cache: ModelCache, out_dir: Path, *,
               cancel: threading.Event | None = None, log: RunLog | None = None,
               on_progress: Callable[[Progress], None] | None = None) -> Iterator[ModelResult]:
    """Generate `base` on each model in turn, yielding each result as soon as it is saved.

    Raises BadInput (before anything loads) for bad options and GenerationCancelled when `cancel` is set.
    """
    log = log if log is not None else RunLog()
    tell = on_progress or (lambda p: None)
    per_model = [options_for(base, c) for c in choices]
    for opts in per_model:
        check_options(opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _run_ids_lock:
        run_id = next(_run_ids)
    reference_image = None
    for choice, opts in zip(choices, per_model):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled(f"stopped before {choice.label} started")
        loaded = cache.is_loaded(opts)
        if not loaded:
            tell(Progress(choice.label, "loading"))
        with cache.use(opts) as entry:
            def on_step(i: int, total: int, _seconds: float, label=choice.label) -> None:
                tell(Progress(label, "denoising", i + 1, total))

            output = entry.session.generate(opts, opts.seed, warn=log.warn, on_step=on_step, cancel=cancel)
        stem = f"{run_id:04d}-{_slug(choice.label)}-seed{opts.seed}"
        result = ModelResult(choice, output, out_dir / f"{stem}.png", out_dir / f"{stem}.json")
        if reference_image is None:
            reference_image = output.image
        elif output.image.size == reference_image.size:
            result.psnr_db = image_psnr([reference_image], [output.image])
            finite = math.isfinite(result.psnr_db)  # identical images: infinite PSNR, which JSON cannot hold
            output.report["comparison"] = {"reference_model": choices[0].label,
                                           "image_psnr_db": result.psnr_db if finite else None, "identical": not finite}
        save_output(output, result.png, result.report_path)
        yield result


def check_request(base: GenerateOptions, choices: list[ModelChoice]) -> None:
    """Every check that needs no weights, for every model of the request (BadInput on the first problem)."""
    if not choices:
        raise BadInput("no model chosen")
    for choice in choices:
        check_options(options_for(base, choice))
