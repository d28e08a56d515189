"""`python -m pocketsd.eval …` — what `accelerate launch -m pocketsd.eval …` and `torchrun -m pocketsd.eval …` start
in every process — is the `pocketsd eval` command, parsed and reported by the CLI.

An entry script is run, never imported, so it stands on the top floor wherever it sits (tests/test_layering.py counts
every `__main__` module there); the eval stage's own modules still import nothing above them.
"""

import sys

from pocketsd.cli import main
from pocketsd.eval.sharding import finish

code = main(["eval", *sys.argv[1:]])
finish()
sys.exit(code)
