"""`pocketsd bench`'s harness, for a source checkout: `python benchmarks/generate.py [bench options]` is
`pocketsd bench …`. The harness itself lives in the package (`pocketsd.bench`), so the command also works from an
installed wheel; this file only keeps the old path working.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))  # a checkout without `pip install -e`

from pocketsd.bench import *  # noqa: E402,F401,F403  (PROMPTS, run_bench, markdown, ratios… for old importers)
from pocketsd.bench import worker_main  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":  # a worker started by an older harness
        worker_main(sys.argv[2])
    else:
        from pocketsd.cli import main

        sys.exit(main(["bench", *sys.argv[1:]]))
