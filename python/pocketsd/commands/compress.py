"""`pocketsd compress` (owner: palettize): 4-bit + low-rank compression; the work is `compress.run.compress_model`."""

from __future__ import annotations

import argparse
import sys

from ..entry import quiet_libraries

NAME = "compress"
HELP = "4-bit + low-rank compression of a model's UNet and text encoders"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..compress.run import PRECISIONS
    from ..models.device import DEVICES
    from ..palettize.blockwise import DISTILL_MODES
    from ..palettize.calibrate import TIMESTEP_RANGES, CalibrationSettings as C
    from ..palettize.recipes import DEFAULT_BUDGET, FIXED, MAX_BUDGET, Recipe as R

    p.add_argument("--model", default=None, help="diffusers folder or cached hub id (default: the reference model)")
    p.add_argument("--out", required=True, help="compressed model folder to write (replaced atomically; an existing "
                   "folder only if it is a compressed folder PocketSD wrote, or with --force)")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not a compressed folder "
                   "PocketSD wrote (never the --model folder itself)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--recipe", default=None, help=f"fixed recipe: {', '.join(FIXED)} (default: the budget)")
    how.add_argument("--bits-budget", type=float, default=None,
                     help=f"effective bits per parameter to allocate ranks and bit widths under (default {DEFAULT_BUDGET:g}, "
                          f"at most {MAX_BUDGET:g})")
    p.add_argument("--quantizer", default=R.quantizer, choices=["palette", "int4", "int"],
                   help="palette: k-means LUT per group of output channels; int4: symmetric ints, scale per input block")
    p.add_argument("--group-size", type=int, default=R.group_size,
                   help=f"palette: output channels sharing a table (default {R.group_size})")
    p.add_argument("--block-size", type=int, default=R.block_size,
                   help=f"int4: input channels sharing a scale (default {R.block_size})")
    p.add_argument("--no-smoothing", action="store_true", help="disable activation smoothing (alpha = 0)")
    p.add_argument("--refine-iters", type=int, default=R.refine_iters,
                   help=f"low-rank refinement rounds (default {R.refine_iters})")
    p.add_argument("--calib-prompts", default=None, help="file with one calibration prompt per line")
    p.add_argument("--calib-count", type=int, default=C.count,
                   help=f"default calibration prompts to draw (default {C.count})")
    p.add_argument("--calib-steps", type=int, default=C.steps,
                   help=f"sampling steps per calibration prompt (default {C.steps})")
    p.add_argument("--calib-timesteps", default=C.timesteps, choices=TIMESTEP_RANGES,
                   help="record layer inputs over all timesteps or only the first/last quarter of sampling")
    p.add_argument("--distill", default=R.distill, choices=DISTILL_MODES,
                   help=f"after quantizing, train the low-rank factors, tables and biases against the fp16 model, codes "
                        f"frozen: block by block for the UNet and text encoders (one block in fp32 at a time), or the "
                        f"whole UNet at once (an fp32 copy of it) (default {R.distill})")
    p.add_argument("--distill-inputs", default=R.distill_inputs, choices=["best", "student", "fp16"],
                   help=f"block mode: train each block on the recorded fp16 inputs, on what the compressed blocks before "
                        f"it feed it, or both, keeping the better (default {R.distill_inputs})")
    p.add_argument("--distill-cache-gb", type=float, default=R.distill_cache_gb,
                   help=f"block mode: disk cap for the recorded fp16 block inputs and outputs, in GB "
                        f"(default {R.distill_cache_gb:g})")
    p.add_argument("--distill-steps", type=int, default=R.distill_steps,
                   help=f"distillation steps (per block in block mode; default {R.distill_steps}; 0: off)")
    p.add_argument("--distill-epochs", type=float, default=R.distill_epochs,
                   help=f"… but at most this many passes over the recorded fp16 outputs (default {R.distill_epochs:g})")
    p.add_argument("--distill-minutes", type=float, default=R.distill_minutes,
                   help=f"stop distilling after this many minutes of wall clock (default {R.distill_minutes:g})")
    p.add_argument("--distill-tensors", default=",".join(R.distill_tensors),
                   help="which small tensors to train: any of lowrank, table (palette tables or int4 scales), bias "
                        f"(default {','.join(R.distill_tensors)})")
    p.add_argument("--distill-lr", type=float, default=R.distill_lr,
                   help=f"Adam step relative to each tensor's RMS (default {R.distill_lr:g})")
    p.add_argument("--distill-batch", type=int, default=R.distill_batch,
                   help=f"(unconditional, conditional) pairs per step (default {R.distill_batch})")
    p.add_argument("--distill-seed", type=int, default=R.distill_seed, help="distillation seed (default 0)")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="where calibration and the budget's probes run (default cpu; auto: CUDA, then MPS, then CPU)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="dtype the model is held in while it calibrates (auto: fp32 up to 4 GB of fp32 weights, else "
                        "bf16 on the CPU, fp16 on a GPU); every decomposition is computed in fp32")
    p.add_argument("--calib-size", metavar="WxH", help="image size calibration samples at (default: native)")
    p.add_argument("--max-unet-evals", type=int, default=C.max_unet_evaluations,
                   help=f"UNet evaluations at native size that calibration and the budget's probes may take "
                        f"(default {C.max_unet_evaluations}; probes use fewer samples or half the latent size to fit)")
    from ..compress.run import DEFAULT_COMPONENTS

    p.add_argument("--components", default=",".join(DEFAULT_COMPONENTS),
                   help="what to compress: any of unet, text_encoder, text_encoder_2, vae (default: all; the VAE is "
                        "kept only if it passes its image-PSNR gate)")
    for component in ("text_encoder", "text_encoder_2", "vae"):
        flag = component.replace("_", "-")
        p.add_argument(f"--{flag}-bits-budget", type=float, default=None, dest=f"{component}_bits_budget",
                       help=f"budget for the {component} (default: the UNet's --bits-budget or --recipe)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _parse_size(text: str | None, flag: str) -> tuple[int, int] | None:
    if text is None:
        return None
    from ..pipeline.options import parse_size

    return parse_size(text, flag)


def run(args) -> int:
    from pathlib import Path

    quiet_libraries()
    from ..compress.run import CompressOptions, compress_model, summary_line
    from ..palettize.calibrate import CalibrationSettings
    from ..palettize.recipes import make_recipe
    from ..ui import task_progress

    recipe = make_recipe(args.recipe, args.bits_budget, args.quantizer, args.group_size, args.block_size,
                         smoothing=not args.no_smoothing, refine_iters=args.refine_iters,
                         distill=args.distill, distill_inputs=args.distill_inputs,
                         distill_cache_gb=args.distill_cache_gb,
                         distill_steps=args.distill_steps, distill_epochs=args.distill_epochs,
                         distill_minutes=args.distill_minutes,
                         distill_tensors=args.distill_tensors, distill_lr=args.distill_lr,
                         distill_batch=args.distill_batch, distill_seed=args.distill_seed)
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    component_recipes = {
        c: make_recipe(None, getattr(args, f"{c}_bits_budget"), args.quantizer, args.group_size, args.block_size,
                       smoothing=not args.no_smoothing, refine_iters=args.refine_iters)
        for c in ("text_encoder", "text_encoder_2", "vae") if getattr(args, f"{c}_bits_budget") is not None}
    opts = CompressOptions(out=Path(args.out), model=args.model, recipe=recipe,
                           calibration=CalibrationSettings(count=args.calib_count, steps=args.calib_steps,
                                                           timesteps=args.calib_timesteps,
                                                           max_unet_evaluations=args.max_unet_evals,
                                                           size=_parse_size(args.calib_size, "--calib-size")),
                           calib_prompts=Path(args.calib_prompts) if args.calib_prompts else None, force=args.force,
                           components=components, component_recipes=component_recipes, device=args.device,
                           precision=args.precision)
    with task_progress(not args.quiet) as on_progress:
        manifest = compress_model(opts, on_progress, on_note=lambda m: print(f"pocketsd: {m}", file=sys.stderr))
    print(summary_line(manifest))
    print(f"wrote {args.out} (took {sum(manifest['timings_s'].values()):.0f} s); inspect it with `pocketsd info {args.out}`")
    return 0
