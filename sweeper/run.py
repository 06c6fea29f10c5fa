"""`cxr-sweep run` (or `python -m sweeper.run`): run a sweep spec on Ray Tune and write every trial to the DB.

With no arguments: the built-in `demo` spec on phantom data, a local Ray on this
machine's CPUs, results in HOME/results.db (sqlite:///.cxr-sweep/results.db), and the report printed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from vocab import cli

COMMAND = cli.Command(
    name="run", module="sweeper.run", summary="Run a sweep spec on Ray Tune and write every trial to the results DB.",
    description="With no flags: the built-in demo spec on phantom data, on a local Ray with this machine's CPUs; "
                "every trial goes to HOME/results.db and the report is printed and written to HOME/reports/SWEEP/.",
    examples=("", "--spec paper --dry-run", "--spec paper --smoke",
              "--spec paper --data target=/data/prepared/target-1a2b --data nih=/data/prepared/nih-3c4d "
              "--data chexpert=/data/prepared/chexpert-5e6f",
              "--spec paper --address auto --home /efs/cxr-sweep --max-concurrent 4", "--spec paper --resume",
              "--spec tiny --set train.epochs=3 --set 'grid.backbone=[\"resnet18\"]'"),
    interrupted="continue with: {prog} --resume --spec {spec} --sweep {sweep}")


def add_arguments(parser: cli.Parser) -> None:
    cli.add_spec(parser)
    parser.add_argument("--smoke", action="store_true",
                        help="the same grid shrunk to minutes on a CPU: 32 px, 2 folds, 2 trials, 2 epochs, 1 "
                             "pretraining epoch, phantom data for every location not given (sweeper/overrides.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a spec key, checked like the file (repeatable; after --smoke): "
                             "--set train.epochs=10 --set 'grid.backbone=[\"resnet50\"]'")
    cli.add_db(parser)
    parser.add_argument("--address", default=None,
                        help="a running Ray cluster: host:port, auto (the last `ray start` here) or ray://...; "
                             "default: $RAY_ADDRESS if set, else a new local Ray. One that does not answer within "
                             "10 s stops the run (exit 2)")
    parser.add_argument("--resume", action="store_true", help="continue the latest sweep of this spec (or --sweep)")
    cli.add_sweep(parser, help="the new sweep's name (default: SPEC-YYYYmmdd-HHMMSS), or with --resume the sweep to "
                               "continue")
    parser.rename("--name", "--sweep")
    parser.add_argument("--storage", default=None,
                        help="Ray Tune storage: a path or s3:// URI, shared by all nodes on a cluster "
                             "(default: HOME/ray)")
    parser.add_argument("--num-cpus", type=cli.at_least(1), default=None, metavar="N",
                        help="CPUs for a local Ray (default: all)")
    parser.add_argument("--max-concurrent", type=cli.at_least(1), default=None, metavar="N",
                        help="fine-tuning trials at once (default: the spec's resources.max_concurrent, else "
                             "what the cluster's resources fit)")
    cli.add_bootstrap(parser, help="bootstrap resamples for the final report's intervals and p-values")
    parser.rename("--report-bootstrap", "--bootstrap")
    parser.add_argument("--no-report-images", action="store_true",
                        help="leave test images (Grad-CAM over a few per cell) out of the report")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (cells, folds, trials, pretraining jobs, GPU-hour estimate) and exit; "
                             "starts no Ray and builds no data")
    cli.add_format(parser, csv=False)
    parser.add_argument("--gpu-tflops", type=float, default=None, metavar="T",
                        help="with --dry-run: sustained TFLOP/s of one GPU for the estimate (default 150, the "
                             "H100 target; measure yours with bench/train_speed.py)")
    cli.add_data(parser, help="where data set NAME is (target, or a source of the spec): a prepared data set's path "
                              "or phantom:KIND; overrides CXR_SWEEP_DATA_NAME and the spec (repeatable)")
    parser.check(_dry_run_flags)


def _dry_run_flags(args) -> None:
    if (args.json or args.gpu_tflops is not None) and not args.dry_run:
        raise cli.UsageError("--json and --gpu-tflops go with --dry-run")
    if args.dry_run and args.resume:
        raise cli.UsageError("--dry-run plans a new sweep; leave out --resume")


def parse_args(argv):
    return cli.build_parser(COMMAND, add_arguments).parse_args(argv)


def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sweep_name(args, spec_name: str, storage: str) -> str:
    from sweeper.driver import ResumeError

    if args.sweep:
        return args.sweep
    if args.resume:
        if "://" in storage:
            raise ResumeError("--resume with a remote --storage needs --sweep (the sweep to continue)")
        runs = sorted(p.name for p in Path(storage).glob(f"{spec_name}-*") if p.is_dir())
        if not runs:
            raise ResumeError(f"--resume: no earlier sweep of spec {spec_name!r} under {storage}")
        return runs[-1]
    return f"{spec_name}-{datetime.now():%Y%m%d-%H%M%S}"


def _dry_run(spec, args) -> int:
    from sweeper import dry_run, estimate

    plan = dry_run.dry_run(spec, args.data, args.gpu_tflops or estimate.DEFAULT_TFLOPS,
                           args.max_concurrent, spec_arg=args.spec)
    print(dry_run.to_json(plan) if args.json else dry_run.render(plan))
    return 0


def run(args) -> int:
    from sweeper.ray_address import given_address
    from sweeper.spec import load_spec

    spec, spec_text = load_spec(args.spec, args.overrides, args.smoke)  # before anything slow: a bad spec stops here
    if args.dry_run:
        return _dry_run(spec, args)
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    storage = args.storage or str(home / "ray")
    args.sweep = _sweep_name(args, spec.name, storage)  # what Ctrl-C's hint names
    from sweeper.driver import RunOptions, run_sweep

    options = RunOptions(name=args.sweep, db_url=args.db, home=home, storage=storage,
                         address=given_address(args.address), resume=args.resume, num_cpus=args.num_cpus,
                         version=code_version(), data=args.data, max_concurrent=args.max_concurrent,
                         report_images=not args.no_report_images, report_bootstrap=args.bootstrap)
    return run_sweep(spec, spec_text, args.spec, options)


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    # Snapshots of a local experiment take milliseconds; Ray warns about them at every checkpoint.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sys.exit(main())
