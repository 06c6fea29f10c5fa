"""The ImageNet weights files a spec needs: fetched or checked before a sweep, and on a machine with
internet whose cache is then copied to an offline cluster.

    cxr-sweep weights --spec paper                  # download what is missing
    cxr-sweep weights --spec paper --check          # list, download nothing; exit 2 if any is missing
    cxr-sweep weights --backbone resnet50 densenet121

(`python -m sweeper.weights` is the same command; `python -m trainables.weights fetch|where BACKBONE...`, its
older form for named backbones, still works.)

`python -m sweeper.run` calls `preflight` before Ray starts, so a spec whose weights are missing
stops at once with the whole list, not dozens of trials later with the same error each.
"""
from __future__ import annotations

import sys

from sweeper.spec import SweepSpec, load_spec
from trainables.models import BACKBONES, IMAGENET_BACKBONES, no_imagenet_weights
from trainables.weights import OFFLINE_ENV, WeightsUnavailable, cache_dir, fetch, published, report, verify
from vocab import cli

COMMAND = cli.Command(
    name="weights", module="sweeper.weights",
    summary="Fetch or check the ImageNet weights files a spec (or named backbones) needs.",
    description="Run it once on a machine with internet, then copy the cache (torch's hub cache, which follows "
                "TORCH_HOME) to an offline cluster. A sweep checks the same files before Ray starts.",
    examples=("--spec paper", "--spec paper --check", "--backbone resnet50 densenet121"))


def imagenet_backbones(spec: SweepSpec) -> list[str]:
    """Backbones of the grid's cells that start a branch (or a pretraining stage) from ImageNet."""
    return sorted({cell["backbone"] for cell in spec.grid.cells() if needs_imagenet(spec, cell)})


def needs_imagenet(spec: SweepSpec, cell: dict) -> bool:
    """Whether the cell starts a branch, or the stage it pretrains, from ImageNet weights."""
    recipe = spec.recipes[cell["recipe"]]
    return "imagenet" in (recipe.init, recipe.pretrain_init)


def preflight(spec: SweepSpec, spec_arg: str) -> dict[str, dict]:
    """{backbone: {"file": name, "sha256": digest}} for every ImageNet file the spec needs, each present (or
    downloaded now) and matching its published hash; else one WeightsUnavailable that lists every problem."""
    found, missing, bad = {}, [], []
    for backbone in imagenet_backbones(spec):
        wanted = published(backbone)
        try:
            fetch(backbone)
            found[backbone] = {"file": wanted.path.name, "sha256": verify(wanted)}
        except WeightsUnavailable as exc:
            if wanted.path.is_file():
                bad.append((wanted, str(exc)))
            else:  # why the download failed, or the offline switch
                missing.append((wanted, str(exc.__cause__ or f"{OFFLINE_ENV}=1 forbids downloading")))
    if missing or bad:
        raise WeightsUnavailable(_problems(spec_arg, missing, bad))
    return found


def _problems(spec_arg: str, missing: list, bad: list) -> str:
    lines = []
    if missing:
        lines.append(f"{len(missing)} ImageNet weights file(s) that spec {spec_arg!r} needs are not in the cache "
                     f"{cache_dir()} and cannot be downloaded here:")
        lines += [f"  {wanted.path.name} ({wanted.backbone})" for wanted, _ in missing]
        lines.append(f"  (download: {missing[0][1][:200]})")
        lines.append(f"Fetch them all on a machine with internet with `python -m sweeper.weights --spec {spec_arg}` "
                     f"and copy them into {cache_dir()} (the cache follows TORCH_HOME).")
    lines += [f"{wanted.backbone}: {problem}" for wanted, problem in bad]
    lines.append("Nothing was started.")
    return "\n".join(lines)


def cache_status(spec: SweepSpec) -> list[dict]:
    """For the dry run: each needed file, present or missing, without downloading or hashing."""
    return [{"backbone": b, "file": published(b).path.name, "present": published(b).path.is_file()}
            for b in imagenet_backbones(spec)]


def add_arguments(parser: cli.Parser) -> None:
    which = parser.add_mutually_exclusive_group()
    cli.add_spec(which)
    which.add_argument("--backbone", nargs="+", default=None, metavar="BACKBONE",
                       help="these torchvision backbones instead of a spec's (e.g. resnet50 densenet121)")
    parser.add_argument("--check", action="store_true",
                        help="download nothing: list each file, present (with its SHA-256) or missing; exit 2 if any "
                             "is missing")


def run(args) -> int:
    without = [b for b in args.backbone or [] if b in BACKBONES and b not in IMAGENET_BACKBONES]
    if without:
        raise cli.UsageError(f"--backbone {without[0]}: {no_imagenet_weights(without[0])}; of the project's "
                             f"backbones, torchvision publishes them for {', '.join(IMAGENET_BACKBONES)}")
    backbones = args.backbone or imagenet_backbones(load_spec(args.spec)[0])
    if not backbones:
        print(f"spec {args.spec!r} starts no backbone from ImageNet: nothing to fetch")
        return 0
    return report(backbones, download=not args.check, missing_is_error=True)


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
