"""The `pocketsd` command: assembles the commands of `commands/` (one module each: `NAME`, `HELP`,
`add_arguments(parser)`, `run(args)`) into one parser; the work lives in the stages.

Exit codes (shared/CONTRACT.md): 0 done, 2 bad input (one line on stderr), 1 anything else. `entry.run_entry` is the
one place that turns errors into those lines and codes, for this command and for `python -m pocketsd.eval`.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .commands import app, bench, compress, convert, domains, generate, info, lora
from .commands import eval as eval_command
from .entry import OneLineParser, run_entry

# In `pocketsd --help` order.
COMMANDS = (generate, compress, convert, lora, domains, info, bench, eval_command, app)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="pocketsd", description="SDXL in 4-bit + low-rank, for Core ML")
    parser.add_argument("--version", action="version", version=f"pocketsd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for command in COMMANDS:
        command_parser = sub.add_parser(command.NAME, help=command.HELP)
        command.add_arguments(command_parser)
        command_parser.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_entry(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
