"""`python -m results.evaluate`: the same as `python -m sweeper.evaluate` (external validation of a finished
sweep: --db, --sweep, --external NAME=PREPARED_DIR, --labels, --cell, --tta, --device).

Evaluating applies trained models, which needs torch and the trainables; `results` imports none of the
other packages so that a report can be made from a copied DB on a machine without them (docs/design.md
§2). This module therefore imports nothing of sweeper: it hands the command line over to
`python -m sweeper.evaluate` in the same interpreter executable.
"""
from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    os.execv(sys.executable, [sys.executable, "-m", "sweeper.evaluate", *args])


if __name__ == "__main__":
    main()
