"""Time to find every listed NIH image in Kaggle's layout: the real table's 112,120 names, empty files in
`images_001/images` ... `images_012/images` (the walk reads names, not bytes), located from the top folder.

    python bench/locate_bench.py [--table ../shared/data/nih_data_entry_2017_v2020.csv.gz] [--runs 3]
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

import pandas as pd  # noqa: E402

from data_prep.locate import locate  # noqa: E402

DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih_data_entry_2017_v2020.csv.gz"


def kaggle_paths(root: Path, names: list[str]) -> list[Path]:
    """Where Kaggle's NIH layout puts each name: the names in table order over 12 folders
    (`images_001/images` ... `images_012/images`), which are made here."""
    per = -(-len(names) // 12)
    paths = [root / f"images_{i // per + 1:03d}" / "images" / name for i, name in enumerate(names)]
    for folder in dict.fromkeys(path.parent for path in paths):
        folder.mkdir(parents=True, exist_ok=True)
    return paths


def lay_out(root: Path, names: list[str]) -> None:
    """Kaggle's NIH layout, every listed file empty."""
    for path in kaggle_paths(root, names):
        path.touch()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    names = pd.read_csv(args.table, usecols=["Image Index"])["Image Index"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        lay_out(root, names)
        print(f"{len(names)} files laid out in {time.perf_counter() - started:.1f} s; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        for run in range(args.runs):
            started = time.perf_counter()
            found = locate("nih", root, names)
            total = time.perf_counter() - started
            assert not found.missing and len(found.folders) == 12
            print(f"run {run + 1}: {len(names)} found in {total:.2f} s (walk and index {found.seconds:.2f} s, "
                  f"the rest the paths as listed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
