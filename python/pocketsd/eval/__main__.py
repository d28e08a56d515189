"""`python -m pocketsd.eval …` — what `accelerate launch -m pocketsd.eval …` and `torchrun -m pocketsd.eval …` start
in every process — is the `pocketsd eval` command: the same arguments (`evaluate.add_arguments`), the same run and
the same exit codes (`entry.run_entry`), without assembling the whole CLI.

An entry script is run, never imported, so it stands on the top floor wherever it sits (tests/test_layering.py counts
every `__main__` module there); the eval stage's own modules still import nothing above them.
"""

import sys

from pocketsd.entry import OneLineParser, quiet_libraries, run_entry
from pocketsd.eval.sharding import finish


def build_parser() -> OneLineParser:
    from pocketsd.evaluate import add_arguments, run_command

    def run(args) -> int:
        quiet_libraries()
        return run_command(args)

    parser = OneLineParser(prog="pocketsd eval", description="the quality protocol, in every launched process")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


code = run_entry(build_parser, sys.argv[1:], prog="pocketsd")
finish()
sys.exit(code)
