"""Fetch (or check) every ImageNet weights file a spec needs, before a sweep or on a machine
with internet whose cache is then copied to an offline cluster.

    python -m sweeper.weights --spec paper           # download what is missing
    python -m sweeper.weights --spec paper --check   # list, download nothing; exit 2 if any is missing
"""
from __future__ import annotations

import argparse
import sys

from sweeper.spec import SpecError, SweepSpec, load_spec
from trainables.weights import report


def imagenet_backbones(spec: SweepSpec) -> list[str]:
    """Backbones of the grid that some recipe of the grid starts from ImageNet."""
    if not any("imagenet" in (spec.recipes[r].init, spec.recipes[r].pretrain_init) for r in spec.grid.recipe):
        return []
    return sorted(set(spec.grid.backbone))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeper.weights", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="demo", help="built-in spec name or TOML path (default: demo)")
    parser.add_argument("--check", action="store_true", help="only report which files are present")
    args = parser.parse_args(argv)
    try:
        backbones = imagenet_backbones(load_spec(args.spec)[0])
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not backbones:
        print(f"spec {args.spec!r} starts no backbone from ImageNet: nothing to fetch")
        return 0
    return report(backbones, download=not args.check, missing_is_error=True)

if __name__ == "__main__":
    sys.exit(main())
