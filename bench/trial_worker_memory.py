"""Resident memory of Ray's reused trial workers over a sweep (trainables/memory.py says why it grew).

    python bench/trial_worker_memory.py [--backbone resnet50] [--every 2] [-- EXTRA sweeper.run FLAGS]

Runs `python -m sweeper.run --spec paper --smoke` for one backbone (16 cells x 2 folds x 2 trials, two
trial workers on this machine's CPUs) in a temporary home, offline, with torchvision's published weight
files laid out by tests/published_weights.py, and samples the resident set (RSS) of every Ray worker that
ran trials or pretraining stages every `--every` seconds. Printed: per worker, its peak and last RSS;
the sweep's wall time. BENCHMARKS.md ("Trial worker memory") quotes its output.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKERS = ("ray::ImplicitFunc", "ray::_train_stage", "ray::IDLE")


def _workers() -> dict[int, tuple[str, float]]:
    """{pid: (name, RSS GB)} of the Ray workers that train."""
    out = subprocess.run(["ps", "-eo", "pid=,rss=,args="], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        pid, rss, args = line.split(None, 2)
        if args.startswith(WORKERS):
            found[int(pid)] = (args.split()[0], int(rss) / 1e6)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("extra", nargs="*", help="more sweeper.run flags, after --")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.conftest import TEST_KEY
    from tests.published_weights import seed_published

    with tempfile.TemporaryDirectory(prefix="cxr-mem-") as tmp, tempfile.TemporaryDirectory(prefix="r", dir="/tmp") as ray_tmp:
        root = Path(tmp)
        (root / "key").write_text(TEST_KEY.decode())
        env = {**os.environ, "CXR_SWEEP_PSEUDONYM_KEY_FILE": str(root / "key"), "TORCH_HOME": str(root / "torch"),
               "CXR_SWEEP_OFFLINE": "1", "CXR_SWEEP_UNVERIFIED_WEIGHTS": "1", "RAY_TMPDIR": ray_tmp}
        os.environ["TORCH_HOME"] = env["TORCH_HOME"]
        seed_published(args.backbone)
        command = [sys.executable, "-m", "sweeper.run", "--spec", "paper", "--smoke", "--home", str(root / "home"),
                   "--num-cpus", "2", "--sweep", "memory", "--set", f'grid.backbone=["{args.backbone}"]',
                   "--bootstrap", "0", "--no-report-images", *args.extra]
        print("$", " ".join(command[1:]), flush=True)
        peak: dict[int, tuple[str, float, float]] = {}
        start = time.monotonic()
        with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) as sweep:
            while sweep.poll() is None:
                for pid, (name, gb) in _workers().items():
                    _, top, _ = peak.get(pid, (name, 0.0, 0.0))
                    peak[pid] = (name, max(top, gb), gb)
                time.sleep(args.every)
            stderr = sweep.stderr.read()
        wall = time.monotonic() - start
        if sweep.returncode != 0:
            print(stderr[-3000:], file=sys.stderr)
            return sweep.returncode
    print(f"sweep: {wall:.0f} s wall, exit {sweep.returncode}")
    print("worker pid  first seen as        peak RSS GB  last RSS GB")
    for pid, (name, top, last) in sorted(peak.items(), key=lambda item: -item[1][1]):
        if top > 0.3:
            print(f"{pid:>10}  {name:<20} {top:>11.2f}  {last:>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
