"""Orchestration overhead of a sweep, and pretraining runs per sweep.

1. Overhead: a sweep of N short fine-tuning trials (no pretraining, ASHA grace period = all
   epochs so none is stopped) through the real CLI: local Ray, the per-study Optuna searcher
   with its studies in SQLite, the per-study ASHA scheduler, the DB callback, checkpoints
   every epoch. Ratio = Tune's wall time / (sum of the trials' own time_total_s / concurrency);
   1.0 means the sweeper adds nothing to the trials' compute. Target: at most 1.05. Also split:
   `startup_s` (Tune's start to the first trial: worker processes importing torch, torchvision and
   scikit-learn, once per worker) and the ratio from the first trial's start to the last one's end
   (the per-trial hand-over: searcher, scheduler, DB callback, actor reuse).
2. Pretraining: the `tiny` spec (2 backbones x 2 recipes x 2 folds x 2 trials) on a cold
   cache; the stage trainings logged must equal the dry run's unique pretraining jobs (2),
   not one per cell, fold or trial.

    python bench/orchestration_bench.py --trials 64 --epochs 3 --concurrency 2 --out result.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sqlite3
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SPEC = """
name = "overhead"
[data]
target = "phantom"
size = {size}
folds = {folds}
phantom = {{ n_patients = {patients}, image_px = 64, seed = 0 }}
[grid]
backbone = ["resnet18"]
recipe = ["scratch"]
[recipes.scratch]
[search]
trials = {per_study}
[asha]
grace_period = {epochs}
[train]
epochs = {epochs}
batch_size = 8
[resources]
cpus_per_trial = 1
"""


def _sweep(spec: str, home: Path, concurrency: int, name: str,
           extra: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sweeper.run", "--spec", spec, "--home", str(home),
                           "--num-cpus", str(concurrency), "--name", name, *extra],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"sweep {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc, time.monotonic() - started


def overhead(args, home: Path) -> dict:
    folds = 4
    home.mkdir(parents=True)
    spec = home / "overhead.toml"
    spec.write_text(SPEC.format(size=args.size, folds=folds, patients=args.patients, per_study=args.trials // folds,
                                epochs=args.epochs))
    extra = ("--max-concurrent", str(args.concurrency)) if args.limit else ()
    proc, total = _sweep(str(spec), home, args.concurrency, "overhead", extra)
    tune_wall = float(re.search(r"Tune ran for ([\d.]+) s", proc.stdout).group(1))
    results = [json.loads(f.read_text().splitlines()[-1]) for f in (home / "ray" / "overhead").glob("*/result.json")]
    compute = sum(r["time_total_s"] for r in results)
    ideal = compute / args.concurrency
    with sqlite3.connect(home / "results.db") as conn:  # the driver's clock: first trial start, last trial end
        first, last = conn.execute("SELECT MIN(started_at), MAX(finished_at) FROM sweep_trials").fetchone()
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return {"trials": len(results), "epochs": args.epochs, "concurrency": args.concurrency,
            "max_concurrent_given": args.limit,
            "trial_seconds_mean": round(compute / len(results), 2), "trial_compute_s": round(compute, 1),
            "ideal_wall_s": round(ideal, 1), "tune_wall_s": tune_wall, "ratio": round(tune_wall / ideal, 3),
            "first_to_last_trial_s": round(span, 1), "ratio_first_to_last_trial": round(span / ideal, 3),
            "startup_s": round(tune_wall - span, 1), "command_wall_s": round(total, 1)}


def pretraining_runs(home: Path) -> dict:
    plan = json.loads(subprocess.run([sys.executable, "-m", "sweeper.run", "--spec", "tiny", "--dry-run", "--json"],
                                     capture_output=True, text=True, cwd=REPO, check=True).stdout)
    proc, total = _sweep("tiny", home, 2, "stages")
    runs = re.findall(r"\[pretrain\] \S+ \(\S+\) on \S+ for \d+ epoch\(s\) -> (\S+)", proc.stdout + proc.stderr)
    return {"spec": "tiny", "fine_tuning_trials": plan["trials"], "unique_pretraining_jobs": len(plan["pretrain"]),
            "pretraining_runs": len(runs), "distinct_stage_files": len(set(runs)), "command_wall_s": round(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=64, help="fine-tuning trials (a multiple of 4)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=2, help="CPUs of the local Ray = trials at once")
    parser.add_argument("--limit", action="store_true",
                        help="pass --max-concurrent CONCURRENCY (Ray's ConcurrencyLimiter: no trial is asked ahead)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("CXR_SWEEP_PSEUDONYM_KEY_FILE", str(Path(tmp) / "bench.key"))
        Path(os.environ["CXR_SWEEP_PSEUDONYM_KEY_FILE"]).write_text("bench-key-0123456789abcdef0123456789")
        result = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                  "overhead": overhead(args, Path(tmp) / "a"), "pretraining": pretraining_runs(Path(tmp) / "b")}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
