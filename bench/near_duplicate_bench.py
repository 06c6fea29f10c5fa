"""Time the near-duplicate search of a large set (issue 3): N prepared films, of which 1% are
re-exports. Films are phantom anatomy at 64 px with pose and noise, so thumbnails of
different films are as alike as real chest films are (correlations up to about 0.98).

    python bench/near_duplicate_bench.py [--n 20000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data_prep.duplicates import near_duplicates, thumbnail  # noqa: E402
from phantom.anatomy import film, film_pose, patient_anatomy  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = np.empty((args.n, 64, 64), np.uint8)
    for i in range(args.n):
        if i % 100 == 99:  # a re-export of the previous film: another grey curve
            images[i] = np.round(255 * (images[i - 1] / 255.0) ** 1.1)
        else:
            density = film((64, 64), patient_anatomy(rng), film_pose(rng), lambda *_: None, rng)
            images[i] = np.round(density * 255)
    started = time.perf_counter()
    thumbs = np.stack([thumbnail(image) for image in images])
    found = near_duplicates(images, thumbs, 0.9)
    took = time.perf_counter() - started
    planted = {i for i in range(99, args.n, 100)}
    print(f"{args.n} films: {took:.1f} s ({args.n / took:.0f} films/s); found {len(found)}, "
          f"planted {len(planted)}, correct {len(planted & {d for d, _, _ in found})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
