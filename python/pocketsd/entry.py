"""What every console entry shares (`pocketsd`, `python -m pocketsd.eval`): the exit-code contract and quiet libraries.

Exit codes (shared/CONTRACT.md): 0 done, 2 bad input (one line on stderr), 130 interrupted, 1 anything else (one
line; the traceback with --debug or POCKETSD_DEBUG).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

from .errors import BadInput


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line and exit code 2, like every other bad input."""

    def error(self, message: str):  # noqa: D401
        raise BadInput(f"{self.prog}: {message} (see {self.prog} --help)")


def quiet_libraries() -> None:
    # transformers/diffusers print loading bars and optional-dependency notices; our own bar and table say enough.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # Environment variables only reach libraries imported later; ones already loaded (tests, bench) are told directly.
    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            lib_logging = importlib.import_module(f"{name}.utils.logging")
            lib_logging.disable_progress_bar()
            lib_logging.set_verbosity_error()


def run_entry(build_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None, prog: str = "pocketsd") -> int:
    """Parse `argv` with the parser `build_parser` makes and run its `func`, keeping the exit-code contract."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("POCKETSD_DEBUG"))
    if not debug:
        # Library tqdm bars (coremltools' op and pass bars) off: our rich bars say the same. tqdm ≥ 4.66 reads
        # TQDM_* defaults when it is first imported, so this must come before any library import.
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        args = build_parser().parse_args(argv)
        quiet_libraries()
        return int(args.func(args) or 0)
    except BadInput as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except Exception as exc:  # the contract: one line and exit 1, traceback only on request
        if debug:
            raise
        print(f"{prog}: failed: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
