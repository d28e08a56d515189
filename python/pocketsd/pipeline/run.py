"""`pocketsd generate` end to end: check the options, open a session, make `--count` images (models stay loaded),
write each PNG and its JSON report, return the reports.

Everything that can be checked before loading weights is checked first (`options.check_options`), so a bad
option costs nothing and leaves no file behind; outputs are written atomically at the end of each image.
"""

from __future__ import annotations

import time
from typing import Callable

from .options import GenerateOptions, check_options, output_paths
from .session import GenerationSession, _stderr_warn, save_output


def run(opts: GenerateOptions, *, warn: Callable[[str], None] = _stderr_warn, progress: bool = True,
        console=None) -> list[dict]:
    """Generate `opts.count` images; returns their reports (also written beside each image)."""
    check_options(opts)
    t0 = time.perf_counter()
    # importing torch/diffusers/transformers takes seconds: timed as "startup", kept out of "load"
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401  (lazy modules: import them here)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

    from . import generate as _generate, inputs as _inputs  # noqa: F401
    from .report import step_progress, summary_table

    startup = time.perf_counter() - t0
    session = GenerationSession.open(opts)
    session.startup_seconds = startup
    reports = []
    for i in range(opts.count):
        seed = opts.seed + i
        png_path, report_path = output_paths(opts, seed)
        if progress:
            bar, advance = step_progress(opts.steps or 1, console=console, description=f"denoising (seed {seed})")
            with bar:
                output = session.generate(opts, seed, warn=warn if i == 0 else (lambda m: None), on_step=advance)
        else:
            output = session.generate(opts, seed, warn=warn if i == 0 else (lambda m: None))
        save_output(output, png_path, report_path)
        if console is not None:
            console.print(summary_table(output.report))
        reports.append(output.report)
    return reports
