"""`pocketsd generate` (owner: generation): text/image/sketch → image; the work is `pipeline.run.run`."""

from __future__ import annotations

import argparse

from ..entry import quiet_libraries

NAME = "generate"
HELP = "text/image/sketch → image with any model kind"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..models.device import DEVICES
    from ..pipeline.coreml_backend import COMPUTE_UNITS
    from ..pipeline.options import (BACKENDS, DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_STEPS, DEFAULT_STRENGTH,
                                    SCHEDULERS, UNET_MODES)
    from ..pipeline.options import GenerateOptions as G

    p.add_argument("prompt", help="what to draw, e.g. \"a red circle on a white background\"")
    p.add_argument("--model", help="diffusers folder, compressed folder, Core ML bundle, .safetensors file or hub id "
                   "(default: the embedded reference model)")
    p.add_argument("--backend", default=G.backend, choices=BACKENDS,
                   help="auto: coreml for a Core ML bundle, torch otherwise")
    p.add_argument("--compute-units", choices=list(COMPUTE_UNITS),
                   help="Core ML compute units (coreml backend only; default all)")
    p.add_argument("--steps", type=int, help=f"denoising steps (default {DEFAULT_STEPS}, or the domain's)")
    p.add_argument("--guidance", type=float,
                   help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE}; ≤ 1 turns it off)")
    p.add_argument("--seed", type=int, default=G.seed, help=f"random seed (default {G.seed})")
    p.add_argument("--size", metavar="WxH", help="image size (default: the model's native size)")
    p.add_argument("--negative", help="negative prompt (default: none — zero embeddings for SDXL, as diffusers)")
    p.add_argument("--scheduler", choices=SCHEDULERS, help=f"default {DEFAULT_SCHEDULER} (or the domain's)")
    p.add_argument("--domain", help="domain preset (see `pocketsd domains`)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]", help="LoRA file; repeatable")
    p.add_argument("--image", help="starting image (image → image)")
    p.add_argument("--strength", type=float,
                   help=f"with --image/--sketch: how much to repaint, (0, 1] (default {DEFAULT_STRENGTH})")
    p.add_argument("--sketch", help="line drawing to follow (sketch → image)")
    p.add_argument("--controlnet", help="ControlNet conditioning on --sketch/--depth (or --image): a diffusers "
                   "ControlNetModel folder (torch), or the name of one converted into a Core ML bundle")
    p.add_argument("--controlnet-scale", type=float, default=G.controlnet_scale,
                   help=f"ControlNet residual scale (default {G.controlnet_scale})")
    p.add_argument("--control-guidance-start", type=float, default=G.control_guidance_start,
                   help=f"share of the steps before the ControlNet starts (default {G.control_guidance_start})")
    p.add_argument("--control-guidance-end", type=float, default=G.control_guidance_end,
                   help=f"share of the steps after which the ControlNet stops (default {G.control_guidance_end})")
    p.add_argument("--mask", help="with --image: inpainting mask, white where the image is repainted")
    p.add_argument("--mask-blur", type=int, default=G.mask_blur,
                   help=f"px the paste-back feathers outside the mask (default {G.mask_blur})")
    p.add_argument("--no-paste-back", action="store_true",
                   help="keep the decoded pixels outside the mask instead of the original's")
    p.add_argument("--depth", help="depth map (near = bright, any bit depth) for a depth ControlNet (--controlnet)")
    p.add_argument("--depth-invert", action="store_true", help="the depth map is near = dark")
    p.add_argument("--count", type=int, default=G.count,
                   help="images to make with seeds SEED, SEED+1, … (models load once)")
    p.add_argument("--out", help="output PNG (default pocketsd-<seed>.png)")
    p.add_argument("--report", help="JSON report path (default: the PNG path with .json)")
    p.add_argument("--low-memory", action="store_true", help="load each component only while it is needed")
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin/.pt checkpoints (can run code)")
    p.add_argument("--unet-mode", default=G.unet_mode, choices=UNET_MODES,
                   help="compressed models: dense (dequantize once, fast) or packed (4-bit in memory)")
    p.add_argument("--device", default=G.device, choices=DEVICES,
                   help=f"torch device (default {G.device}; auto: CUDA, then Apple MPS, then CPU)")
    p.add_argument("--no-verify", action="store_true", help="skip checking the model's recorded sha256 digests")
    p.add_argument("--force", action="store_true",
                   help="overwrite an --out/--report file that exists but is not a PocketSD image/report")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table (the report is still written)")


def run(args) -> int:
    from pathlib import Path

    quiet_libraries()
    from rich.console import Console

    from ..palettize.lora import parse_lora_arg
    from ..pipeline.options import GenerateOptions, parse_size
    from ..pipeline.run import run as run_generation

    opts = GenerateOptions(
        prompt=args.prompt, model=args.model, backend=args.backend, compute_units=args.compute_units,
        steps=args.steps, guidance=args.guidance, seed=args.seed, size=parse_size(args.size) if args.size else None,
        negative=args.negative, scheduler=args.scheduler, domain=args.domain,
        loras=[parse_lora_arg(x) for x in args.lora], image=Path(args.image) if args.image else None,
        strength=args.strength, sketch=Path(args.sketch) if args.sketch else None,
        controlnet=Path(args.controlnet) if args.controlnet else None, count=args.count,
        controlnet_scale=args.controlnet_scale, control_guidance_start=args.control_guidance_start,
        control_guidance_end=args.control_guidance_end, mask=Path(args.mask) if args.mask else None,
        mask_blur=args.mask_blur, paste_back=not args.no_paste_back, depth=Path(args.depth) if args.depth else None,
        depth_invert=args.depth_invert,
        out=Path(args.out) if args.out else None, report=Path(args.report) if args.report else None,
        low_memory=args.low_memory, allow_pickle=args.allow_pickle, unet_mode=args.unet_mode, device=args.device,
        verify=not args.no_verify, force=args.force)
    console = None if args.quiet else Console(stderr=False)
    reports = run_generation(opts, progress=not args.quiet, console=console)
    for rep in reports:
        print(f"wrote {rep['output']}")
    return 0
