"""`pocketsd domains` (owner: generation extras): the domain presets as a table or JSON."""

from __future__ import annotations

import argparse

NAME = "domains"
HELP = "list the domain presets"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the presets as JSON instead of a table")


def run(args) -> int:
    import dataclasses
    import json

    from rich.console import Console

    from ..pipeline.presets import load_presets, presets_table

    presets = load_presets()
    if args.json:
        print(json.dumps([dataclasses.asdict(p) for p in presets.values()], indent=2))
    else:
        Console().print(presets_table(presets))
    return 0
