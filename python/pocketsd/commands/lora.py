"""`pocketsd lora merge|train`: the group, and `merge` (owner: palettize — the work is `compress.lora_merge`).
`train` lives in `lora_train.py`."""

from __future__ import annotations

import argparse

from ..entry import OneLineParser, quiet_libraries
from . import lora_train

NAME = "lora"
HELP = "LoRA tools (train a style; merge into a compressed model's low-rank branches)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    lsub = p.add_subparsers(dest="lora_command", required=True, parser_class=OneLineParser)
    m = lsub.add_parser("merge", help="append LoRAs to a compressed model's low-rank branches (no re-quantizing)")
    m.add_argument("--model", required=True, help="compressed model folder (from `pocketsd compress`)")
    m.add_argument("--lora", action="append", required=True, metavar="FILE[:SCALE]",
                   help="LoRA .safetensors (diffusers/PEFT or kohya keys), optional scale; repeatable")
    m.add_argument("--out", required=True, help="new compressed model folder (written atomically)")
    m.add_argument("--force", action="store_true", help="replace --out even if it is not a compressed folder "
                   "PocketSD wrote (never --model itself)")
    lora_train.add_arguments(lsub.add_parser(lora_train.NAME, help=lora_train.HELP))


def run(args) -> int:
    return run_merge(args) if args.lora_command == "merge" else lora_train.run(args)


def run_merge(args) -> int:
    import time
    from pathlib import Path

    quiet_libraries()
    from ..compress.lora_merge import merge_loras
    from ..palettize.lora import parse_lora_arg

    start = time.time()
    manifest = merge_loras(args.model, [parse_lora_arg(x) for x in args.lora], Path(args.out), force=args.force)
    for rec in [r for r in manifest["loras"] if r.get("merged_utc") == manifest["created_utc"]]:
        print(f"merged {rec['file']} ×{rec['scale']:g} into the {rec.get('component', 'unet')}: {rec['lowrank_concat']} "
              f"low-rank branches widened by rank {rec['rank']}, {rec['dense_fused']} fp16 layers fused")
    acc = manifest["components"]["unet"]["accounting"]
    print(f"wrote {args.out} in {time.time() - start:.1f} s (UNet {acc['total_bytes'] / 1e6:.2f} MB, "
          f"{acc['bits_per_param']:.2f} bits/param)")
    return 0
