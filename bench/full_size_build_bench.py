"""A full-size NIH build: films of NIH's real size (1024 x 1024, 8-bit grey PNG) in Kaggle's layout, listed by
the first rows of the real label table, prepared at 512 px by `python -m data_prep.build nih` as a user runs it.
Gives images/s per worker process and the peak memory of the whole process tree (the build and its decoding
workers, sampled every 0.1 s), at two film counts: peak memory must not grow with the number of films.

Pixel content: a smooth body-like gradient with noise, so that PNG compression and decoding cost what a real
film's do (NIH's PNGs are about 0.2-0.3 MB; these come out at a similar size).

    python bench/full_size_build_bench.py [--films 1500 3000] [--workers 2] [--size 512]
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

DEFAULT_TABLE = REPO.parent / "shared" / "data" / "nih_data_entry_2017_v2020.csv.gz"
SIDE = 1024


def _film(args: tuple[int, str]) -> int:
    """One 1024 x 1024 grey film at `path`; its size in bytes."""
    seed, path = args
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    body = 180 * np.exp(-((x - 0.5) ** 2 / 0.08 + (y - 0.55) ** 2 / 0.15)) + 30 * y
    pixels = np.clip(body + rng.normal(0, 6, (SIDE, SIDE)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "L").save(path)
    return Path(path).stat().st_size


def lay_out(root: Path, names: list[str], workers: int) -> float:
    """Kaggle's NIH layout (`images_001/images` ... `images_012/images`, names in table order); mean MB a film."""
    per = -(-len(names) // 12)
    paths = []
    for i, name in enumerate(names):
        folder = root / f"images_{i // per + 1:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        paths.append((i, str(folder / name)))
    with ProcessPoolExecutor(workers) as pool:
        sizes = list(pool.map(_film, paths, chunksize=32))
    return float(np.mean(sizes)) / 2**20


def peak_tree_rss(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for `proc`; (its exit code, the peak summed resident memory of it and its descendants in GiB)."""
    top, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            family = [top, *top.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in family if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    return proc.returncode, peak / 2**30


def build(images: Path, table: Path, out: Path, size: int, workers: int) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.build", "nih", "--images", str(images), "--labels",
                             str(table), "--out", str(out), "--size", str(size), "--workers", str(workers)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code, peak = peak_tree_rss(proc)
    seconds = time.perf_counter() - started
    output = proc.stdout.read()
    if code != 0:
        raise SystemExit(f"the build failed ({code}):\n{output[-3000:]}")
    return {"seconds": seconds, "peak_tree_rss_gib": peak, "log_tail": output.strip().splitlines()[-3:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, nargs="+", default=[1500, 3000])
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
