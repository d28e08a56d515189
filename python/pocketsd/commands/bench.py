"""`pocketsd bench` (owner: generation extras): time and measure generation across model kinds; the harness is
`pocketsd.bench`, part of the package, so the command works from an installed wheel."""

from __future__ import annotations

import argparse

from ..errors import BadInput

NAME = "bench"
HELP = "time and measure generation across model kinds"


def harness():
    """The harness behind `pocketsd bench` (`pocketsd.bench`, part of the package: it works from a wheel)."""
    from .. import bench

    return bench


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..models.device import DEVICES

    p.add_argument("--model", help="diffusers model folder (default: the embedded reference model)")
    p.add_argument("--compressed", help="its compressed folder; default: made now with `pocketsd compress`")
    p.add_argument("--keep-compressed", metavar="DIR", help="compress into DIR and keep it (reused if it exists)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps per image (default 20)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    p.add_argument("--prompts", type=int, default=3, help="how many of the fixed prompts (1-3, default 3)")
    p.add_argument("--threads", type=int, help="torch threads (default: min(2, CPUs))")
    p.add_argument("--kinds", default="fp16,compressed-dense,compressed-packed",
                   help="comma-separated subset of fp16, compressed-dense, compressed-packed")
    p.add_argument("--out-dir", help="where generate.json/.md/.png go (default: benchmarks/results in a source "
                   "checkout, else ./pocketsd-bench)")
    p.add_argument("--device", default="cpu", choices=DEVICES,
                   help="torch device (default cpu; auto: CUDA, then MPS, then CPU)")


def run(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from ..bench import KINDS as known
    from ..bench import PROMPTS, default_out_dir, markdown, run_bench

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds or any(k not in known for k in kinds):
        raise BadInput(f"--kinds {args.kinds!r}: choose from {', '.join(known)}")
    if args.steps < 1 or args.seeds < 1 or not 1 <= args.prompts <= len(PROMPTS):
        raise BadInput(f"--steps and --seeds must be ≥ 1 and --prompts in 1..{len(PROMPTS)}")
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir()
    if not out_dir.parent.is_dir():
        raise BadInput(f"--out-dir {out_dir}: folder {out_dir.parent} does not exist")
    console = Console(stderr=True)
    doc = run_bench(args.model, args.compressed, out_dir, steps=args.steps, prompts=PROMPTS[: args.prompts],
                    seeds=tuple(range(args.seeds)), threads=args.threads, kinds=kinds,
                    keep_compressed=Path(args.keep_compressed) if args.keep_compressed else None,
                    progress=lambda msg: console.log(msg), device=args.device)
    print(markdown(doc))
    print(f"wrote {out_dir / 'generate.json'} and {out_dir / 'generate.md'}")
    return 0
