"""The `pocketsd` command: argument parsing and messages only; the work lives in the stages.

Exit codes (shared/CONTRACT.md): 0 done, 2 bad input (one line on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .errors import BadInput


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line and exit code 2, like every other bad input."""

    def error(self, message: str):  # noqa: D401
        raise BadInput(f"{self.prog}: {message} (see {self.prog} --help)")


# ---- generate (owner: generation) -------------------------------------------------------------
def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text/image/sketch → image with any model kind")
    p.set_defaults(func=_not_yet)


# ---- compress / info of compressed folders (owner: palettize) --------------------------------
def _add_compress(sub) -> None:
    p = sub.add_parser("compress", help="4-bit + low-rank compression of a model's UNet")
    p.set_defaults(func=_not_yet)


def _add_lora(sub) -> None:
    p = sub.add_parser("lora", help="LoRA tools (merge into a compressed model's low-rank branches)")
    p.set_defaults(func=_not_yet)


# ---- convert (owner: convert) -----------------------------------------------------------------
def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="Core ML conversion of every component into a bundle")
    p.set_defaults(func=_not_yet)


# ---- domains / bench (owner: generation extras) -----------------------------------------------
def _add_domains(sub) -> None:
    p = sub.add_parser("domains", help="list the domain presets")
    p.set_defaults(func=_not_yet)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time and measure generation across model kinds")
    p.set_defaults(func=_not_yet)


# ---- info (shared: dispatches on the kind of path) --------------------------------------------
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a model folder, compressed folder or Core ML bundle")
    p.add_argument("path")
    p.set_defaults(func=_not_yet)


def _not_yet(args) -> int:
    raise BadInput(f"`pocketsd {args.command}` is not available in this build")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="pocketsd", description="SDXL in 4-bit + low-rank, for Core ML")
    parser.add_argument("--version", action="version", version=f"pocketsd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for add in (_add_generate, _add_compress, _add_convert, _add_lora, _add_domains, _add_info, _add_bench):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("POCKETSD_DEBUG"))
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except BadInput as exc:
        if debug:
            raise
        print(f"pocketsd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pocketsd: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except Exception as exc:  # the contract: one line and exit 1, traceback only on request
        if debug:
            raise
        print(f"pocketsd: failed: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
