"""`pocketsd info` (shared: `info.describe` dispatches on the kind of path): describe a model folder, compressed
folder or Core ML bundle."""

from __future__ import annotations

import argparse

from ..entry import quiet_libraries
from ..errors import BadInput

NAME = "info"
HELP = "describe a model folder, compressed folder or Core ML bundle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    p.add_argument("--memory", action="store_true", help="Core ML bundle: resident model bytes per stage "
                   "for the default and low-memory schedules")
    p.add_argument("--budget-mb", type=float, help="with --memory: say whether each stage fits this many MB")
    p.add_argument("--no-verify", action="store_true", help="skip checking recorded sha256 digests")


def run(args) -> int:
    import math

    quiet_libraries()
    from ..info import describe

    if args.budget_mb is not None and (not math.isfinite(args.budget_mb) or args.budget_mb <= 0):
        raise BadInput(f"--budget-mb must be a positive number, got {args.budget_mb}")
    if args.budget_mb is not None and not args.memory:
        raise BadInput("--budget-mb goes with --memory")
    from ..info import DamagedArtifact

    try:
        print(describe(args.path, memory=args.memory, budget_mb=args.budget_mb, verify=not args.no_verify))
    except DamagedArtifact as exc:
        print(exc.description)  # what the artifact is, then the one error line
        raise
    return 0
