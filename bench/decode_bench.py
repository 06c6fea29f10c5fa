"""Decode + resize throughput of full-size 12-bit DICOM radiographs (issue 3's target: at least
100 images/s per core for uncompressed input, scaling with cores).

    python bench/decode_bench.py [--n 48] [--rows 2500] [--cols 2048] [--size 512] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data_prep.decode import _init_worker, decoded  # noqa: E402
from data_prep.phantom import _write_dicom  # noqa: E402
from data_prep.phantom_anatomy import film, film_pose, patient_anatomy  # noqa: E402


def make_files(directory: Path, n: int, rows: int, cols: int) -> list[Path]:
    rng = np.random.default_rng(0)
    base = film((rows, cols), patient_anatomy(rng), film_pose(rng), lambda *_: None, rng)
    paths = []
    for i in range(n):
        noisy = np.clip(base + rng.normal(0, 0.01, base.shape), 0, 1)
        path = directory / f"{i}.dcm"
        _write_dicom(path, noisy, {"name": "BENCH^X", "id": f"B{i}", "birth_date": "19700101", "sex": "F"}, rng)
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_files(Path(tmp), args.n, args.rows, args.cols)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        os.sync()  # no write-back competing with the timed reads
        for path in paths:  # measure decoding, not the disk: every file in the page cache
            path.read_bytes()
        print(f"{args.n} files of {args.rows}x{args.cols} 12-bit ({mb:.0f} MB), to {args.size} px; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        all_cores = sorted(os.sched_getaffinity(0))
        _init_worker()  # workers=1 decodes in this process: give it the worker's settings
        for workers in args.workers:
            list(decoded(paths[:2], args.size, 1))  # warm the page cache and imports
            os.sched_setaffinity(0, all_cores[:workers])  # "per core" means it: threads included
            started = time.perf_counter()
            results, times = [], []
            for result in decoded(paths, args.size, workers):
                times.append(time.perf_counter())
                results.append(result)
            total = times[-1] - started
            warm = args.n // 4  # steady state: the last three quarters, when every worker has started
            steady = (args.n - 1 - warm) / (times[-1] - times[warm])
            os.sched_setaffinity(0, all_cores)
            assert all(r[2] is None for r in results), [r[2] for r in results if r[2]][:1]
            print(f"workers={workers}: {steady:.1f} images/s steady ({steady / workers:.1f} per worker); "
                  f"{args.n / total:.1f} images/s including {times[0] - started:.2f} s to the first image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
