"""`python -m sweeper.run`: run a sweep spec on Ray Tune and write every trial to the DB.

With no arguments: the built-in `demo` spec on phantom data, a local Ray on this
machine's CPUs, results in sqlite:///.cxr-sweep/results.db, and the report printed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

DEFAULT_HOME = Path(".cxr-sweep")
DEFAULT_DB = f"sqlite:///{DEFAULT_HOME}/results.db"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m sweeper.run", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="demo", help="built-in spec name or path of a TOML file (default: demo)")
    parser.add_argument("--smoke", action="store_true",
                        help="the same grid shrunk to minutes on a CPU: 32 px, 2 folds, 2 trials, 2 epochs, 1 "
                             "pretraining epoch, phantom data for every location not given (sweeper/overrides.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a spec key, checked like the file (repeatable; after --smoke): "
                             "--set train.epochs=10 --set 'grid.backbone=[\"resnet50\"]'")
    parser.add_argument("--db", default=None, help=f"SQLAlchemy URL of the results DB (default: {DEFAULT_DB})")
    parser.add_argument("--address", default=None,
                        help="a running Ray cluster: host:port, auto (the last `ray start` here) or ray://...; "
                             "default: $RAY_ADDRESS if set, else a new local Ray. One that does not answer within "
                             "10 s stops the run (exit 2)")
    parser.add_argument("--resume", action="store_true", help="continue the latest sweep of this spec (or --name)")
    parser.add_argument("--name", default=None, help="sweep name (default: SPEC-YYYYmmdd-HHMMSS)")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME,
                        help="folder for data sets, Ray results and the default DB (default: .cxr-sweep)")
    parser.add_argument("--storage", default=None,
                        help="Ray Tune storage: a path or s3:// URI, shared by all nodes on a cluster "
                             "(default: HOME/ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for a local Ray (default: all)")
    parser.add_argument("--max-concurrent", type=_positive, default=None, metavar="N",
                        help="fine-tuning trials at once (default: the spec's resources.max_concurrent, else "
                             "what the cluster's resources fit)")
    parser.add_argument("--report-bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples for the final report's intervals and p-values (default 1000)")
    parser.add_argument("--no-report-images", action="store_true",
                        help="leave test images (Grad-CAM over a few per cell) out of the report")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (cells, folds, trials, pretraining jobs, GPU-hour estimate) and exit; "
                             "starts no Ray and builds no data")
    parser.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    parser.add_argument("--gpu-tflops", type=float, default=None, metavar="T",
                        help="with --dry-run: sustained TFLOP/s of one GPU for the estimate (default 150, the "
                             "H100 target; measure yours with bench/train_speed.py)")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=LOCATION",
                        help="where data set NAME is (target, or a source of the spec): a prepared data set's path "
                             "or phantom:KIND; overrides CXR_SWEEP_DATA_NAME and the spec (repeatable)")
    args = parser.parse_args(argv)
    if (args.json or args.gpu_tflops is not None) and not args.dry_run:
        parser.error("--json and --gpu-tflops go with --dry-run")
    if args.dry_run and args.resume:
        parser.error("--dry-run plans a new sweep; leave out --resume")
    return args


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a positive number")
    return value


def data_locations(pairs: list[str]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        name, sep, location = pair.partition("=")
        if not sep or not name or not location:
            from sweeper.spec import SpecError

            raise SpecError(f"--data {pair!r}: expected NAME=LOCATION, e.g. --data chexpert=/data/chexpert-1a2b")
        found[name] = location
    return found


def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _sweep_name(args, spec_name: str, storage: str) -> str:
    if args.name:
        return args.name
    if args.resume:
        if "://" in storage:
            raise FileNotFoundError("--resume with a remote --storage needs --name (the sweep to continue)")
        runs = sorted(p.name for p in Path(storage).glob(f"{spec_name}-*") if p.is_dir())
        if not runs:
            raise FileNotFoundError(f"--resume: no earlier sweep of spec {spec_name!r} under {storage}")
        return runs[-1]
    return f"{spec_name}-{datetime.now():%Y%m%d-%H%M%S}"


def _dry_run(spec, args) -> int:
    from sweeper import dry_run, estimate

    plan = dry_run.dry_run(spec, data_locations(args.data), args.gpu_tflops or estimate.DEFAULT_TFLOPS,
                           args.max_concurrent, spec_arg=args.spec)
    print(dry_run.to_json(plan) if args.json else dry_run.render(plan))
    return 0


def main(argv: list[str] | None = None) -> int:
    from sweeper.ray_address import given_address
    from sweeper.spec import load_spec
    from vocab.errors import CxrSweepError, USAGE_ERROR

    args = parse_args(argv)
    try:
        spec, spec_text = load_spec(args.spec, args.overrides, args.smoke)  # before anything slow: a bad spec stops here
        if args.dry_run:
            return _dry_run(spec, args)
        home = args.home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        db_url = args.db or f"sqlite:///{home / 'results.db'}"
        storage = args.storage or str(home / "ray")
        name = _sweep_name(args, spec.name, storage)
        from sweeper.driver import RunOptions, run_sweep

        options = RunOptions(name=name, db_url=db_url, home=home, storage=storage, address=given_address(args.address),
                             resume=args.resume, num_cpus=args.num_cpus, version=code_version(),
                             data=data_locations(args.data), max_concurrent=args.max_concurrent,
                             report_images=not args.no_report_images, report_bootstrap=args.report_bootstrap)
        return run_sweep(spec, spec_text, args.spec, options)
    except (CxrSweepError, FileNotFoundError) as exc:  # not vocab's exits_on_error: also a missing path
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted; continue with: python -m sweeper.run --resume "
              + (f"--spec {args.spec}" if args.spec != "demo" else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Snapshots of a local experiment take milliseconds; Ray warns about them at every checkpoint.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    sys.exit(main())
