"""`pocketsd eval` (owner: eval protocol): the arguments and the run live in `evaluate.py`, which
`python -m pocketsd.eval` (every process `accelerate launch` starts) shares without assembling the whole CLI."""

from __future__ import annotations

import argparse

from ..entry import quiet_libraries

NAME = "eval"
HELP = ("quality protocol: generate with two models on the same seeds, then PSNR, SSIM, LPIPS, FID, CLIP score, "
        "ImageReward, adherence")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluate import add_arguments as add_eval_arguments

    add_eval_arguments(p)


def run(args) -> int:
    quiet_libraries()
    from ..evaluate import run_command

    return run_command(args)
