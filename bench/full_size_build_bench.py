"""A full-size NIH build: films of NIH's real size (1024 x 1024, 8-bit grey PNG) in Kaggle's layout, listed by
the first rows of the real label table, prepared at 512 px by `python -m data_prep.build nih` as a user runs it.
Gives images/s per worker process and the peak memory of the whole process tree (the build and its decoding
workers, sampled every 0.1 s; resident, and its anonymous part without the pages of the memmap it writes), at two film counts: peak memory must not grow with the number of films.

Pixel content: the phantom's chest films (phantom.anatomy: each film its own patient's anatomy and pose, with
quantum noise), so that films differ as real ones do (the build's near-duplicate search compares them) and
PNG decoding costs about what a real film's does.

    python bench/full_size_build_bench.py [--films 800 1600] [--workers 2] [--size 512]
                                          [--table ../shared/data/nih_data_entry_2017_v2020.csv.gz]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

from bench.locate_bench import DEFAULT_TABLE, kaggle_paths  # noqa: E402
from phantom.anatomy import film, film_pose, patient_anatomy  # noqa: E402

SIDE = 1024


def _film(args: tuple[int, str]) -> int:
    """One 1024 x 1024 grey film of a phantom patient (its own anatomy and pose) at `path`; its size in bytes."""
    seed, path = args
    rng = np.random.default_rng(seed)
    pixels = film((SIDE, SIDE), patient_anatomy(rng), film_pose(rng), lambda *painted: None, rng)
    Image.fromarray((pixels * 255).round().astype(np.uint8), "L").save(path)
    return Path(path).stat().st_size


def lay_out(root: Path, names: list[str], workers: int) -> float:
    """Kaggle's NIH layout (bench.locate_bench.kaggle_paths), each a film; mean MB a film."""
    paths = [(i, str(path)) for i, path in enumerate(kaggle_paths(root, names))]
    with ProcessPoolExecutor(workers) as pool:
        sizes = list(pool.map(_film, paths, chunksize=32))
    return float(np.mean(sizes)) / 2**20


def peak_tree_memory(proc: subprocess.Popen) -> tuple[int, float, float]:
    """Wait for `proc`; (its exit code, the peak summed resident memory of it and its descendants, and the peak
    of their anonymous part (resident less file-backed: what the build itself holds, not the pages of the memmap
    it writes, which the kernel can drop), both in GiB)."""
    top, peak, anonymous = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            family = [p.memory_info() for p in [top, *top.children(recursive=True)] if p.is_running()]
            peak = max(peak, sum(m.rss for m in family))
            anonymous = max(anonymous, sum(m.rss - m.shared for m in family))
        except psutil.Error:
            pass
        time.sleep(0.1)
    return proc.returncode, peak / 2**30, anonymous / 2**30


def build(images: Path, table: Path, out: Path, size: int, workers: int) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.build", "nih", "--images", str(images), "--labels",
                             str(table), "--out", str(out), "--size", str(size), "--workers", str(workers)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code, peak, anonymous = peak_tree_memory(proc)
    seconds = time.perf_counter() - started
    output = proc.stdout.read()
    if code != 0:
        raise SystemExit(f"the build failed ({code}):\n{output[-3000:]}")
    return {"seconds": seconds, "peak_tree_rss_gib": peak, "peak_tree_anonymous_gib": anonymous,
            "log_tail": output.strip().splitlines()[-3:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, nargs="+", default=[800, 1600])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    args = parser.parse_args()
    rows = pd.read_csv(args.table)
    root = Path(tempfile.mkdtemp())
    try:
        images = root / "nih"
        mb = lay_out(images, rows["Image Index"].head(max(args.films)).tolist(), args.workers)
        runs = []
        for films in args.films:
            table = root / f"Data_Entry_2017_{films}.csv"
            rows.head(films).to_csv(table, index=False)
            done = build(images, table, root / f"out{films}", args.size, args.workers)
            runs.append({"films": films, **done, "images_per_second": films / done["seconds"],
                         "images_per_second_per_worker": films / done["seconds"] / args.workers})
        print(json.dumps({"film_side": SIDE, "film_megabytes": mb, "size": args.size, "workers": args.workers,
                          "machine": f"{platform.node()} {os.cpu_count()} cores", "runs": runs}, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
