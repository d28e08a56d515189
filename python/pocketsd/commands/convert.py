"""`pocketsd convert` (owner: convert): Core ML conversion into a bundle; the work is `ui.convert_with_progress`
over the convert stage."""

from __future__ import annotations

import argparse
import os
import sys

from ..entry import quiet_libraries

NAME = "convert"
HELP = "Core ML conversion of every component into a bundle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..convert import DEFAULT_TARGET, TARGETS

    p.add_argument("--model", help="diffusers or compressed model folder, or a cached hub id (default: the reference model)")
    p.add_argument("--out", required=True, help="bundle folder (Resources/ + pocketsd.json)")
    p.add_argument("--size", metavar="WxH", help="image size the packages are fixed to (default: the model's native size)")
    p.add_argument("--target", default=DEFAULT_TARGET, choices=list(TARGETS),
                   help="minimum deployment target (default iOS18: grouped LUTs and int4 blocks need iOS18/macOS15)")
    p.add_argument("--attention", default="split-einsum", choices=["split-einsum", "original"],
                   help="split-einsum: Neural Engine layout (default); original: diffusers' attention, for the GPU")
    p.add_argument("--chunk-unet", action="store_true", help="split the UNet into UnetChunk1/UnetChunk2 of about equal size (iOS)")
    p.add_argument("--unet-batch-one", action="store_true",
                   help="UNet with batch 1 (two calls per step for CFG) instead of batch 2")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="bake a LoRA into the UNet's low-rank branches; repeatable")
    p.add_argument("--lora-functions", metavar="A.safetensors,B.safetensors",
                   help="one multifunction Unet: function 'main' plus one per LoRA, sharing the 4-bit weights")
    p.add_argument("--force", action="store_true", help="re-convert components that are already done, and write into "
                   "an --out folder that is not a Core ML bundle PocketSD wrote")
    p.add_argument("--only", metavar="NAME,NAME", help="convert only these components (e.g. Unet,VAEDecoder)")
    p.add_argument("--controlnet", action="append", default=[], metavar="[NAME=]DIR",
                   help="diffusers ControlNet folder → Resources/controlnet/NAME.mlpackage (the Unet gets its residual "
                        "inputs); repeatable")
    p.add_argument("--controlnet-recipe", metavar="RECIPE|BITS",
                   help="compress the ControlNets: a fixed recipe (w4r32, w4r16, …) or a bits-per-parameter budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _quiet_converter() -> None:
    """coremltools and torch.export print 40–60 lines per package (version notices, tqdm bars over ops and passes,
    int64→int32 notes, FutureWarnings); our own log and bar say what is happening, so the last line stays ours.
    `pocketsd --debug convert …` (or POCKETSD_DEBUG=1) shows them all."""
    import logging
    import warnings

    if os.environ.get("POCKETSD_DEBUG") or "--debug" in sys.argv[1:]:
        return
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _parse_controlnet(text: str):
    """`[NAME=]DIR` → (name or None, folder)."""
    from pathlib import Path

    name, sep, folder = text.partition("=")
    if sep and name and "/" not in name and not Path(text).exists():
        return name, Path(folder)
    return None, Path(text)


def run(args) -> int:
    from pathlib import Path

    quiet_libraries()
    _quiet_converter()
    from ..convert.bundle import ConvertOptions
    from ..palettize.lora import parse_lora_arg
    from ..ui import convert_with_progress

    size = None
    if args.size:
        from ..models.family import parse_size

        size = parse_size(args.size)
    opts = ConvertOptions(
        model=args.model, out=Path(args.out), size=size, target=args.target, attention=args.attention,
        chunk_unet=args.chunk_unet, unet_batch_one=args.unet_batch_one, loras=[parse_lora_arg(x) for x in args.lora],
        lora_functions=[Path(x) for x in args.lora_functions.split(",") if x] if args.lora_functions else [],
        force=args.force, only=[x for x in args.only.split(",") if x] if args.only else None,
        controlnets=[_parse_controlnet(x) for x in args.controlnet], controlnet_recipe=args.controlnet_recipe)
    convert_with_progress(opts, quiet=args.quiet)
    return 0
