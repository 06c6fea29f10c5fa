"""What the streamed feed delivers from a memory-mapped prepared set, CPU side: images/s into the training
step, so that a GPU's goal (1,200 images/s for ResNet50 at 512 px) is known not to be starved by it.

A prepared set's `images.npy` of random uint8 films (pixel content does not change the cost), read by
`trainables.feed.ImageFeed` in `stream` mode exactly as `fit` reads a source too big to keep resident: a
background thread gathers each batch of a shuffled epoch order from the memmap, a few batches ahead, and
the step takes float [0, 1] tensors. Nothing else runs in the step, so the rate is the feed's ceiling.
Cold: the page cache dropped first (root only: `/proc/sys/vm/drop_caches`), every image read from disk;
warm: the same epoch again, from memory.

    python bench/feed_bench.py [--images 4000] [--size 512] [--batch 16] [--epochs 2] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainables.feed import ImageFeed  # noqa: E402


def drop_page_cache() -> bool:
    """Empty the kernel's page cache so the next reads come from the disk; False where this process may not."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def epoch(feed: ImageFeed, order: np.ndarray, batch: int) -> dict:
    """One pass over `order`: images/s into the step and the share of the time the step waited on data."""
    feed.waited, seen, started = 0.0, 0, time.perf_counter()
    for images, _ in feed.batches(order, batch):
        seen += images.shape[0]
        float(images[:, :, :1, :1].sum())  # the step touches the batch
    seconds = time.perf_counter() - started
    return {"images_per_second": seen / seconds, "seconds": seconds, "waited_share": feed.waited / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2, help="warm epochs after the cold one")
    parser.add_argument("--dir", default=None, help="where the memmap is written (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        path = folder / "images.npy"
        stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(args.images, args.size, args.size))
        rng = np.random.default_rng(0)
        for start in range(0, args.images, 256):
            stored[start:start + 256] = rng.integers(0, 256, (min(256, args.images - start), args.size, args.size),
                                                     dtype=np.uint8)
        stored.flush()
        del stored
        images = np.load(path, mmap_mode="r")
        feed = ImageFeed(images, torch.device("cpu"), mode="stream")
        order = rng.permutation(args.images)
        cold = drop_page_cache()
        runs = [{"epoch": "cold" if cold else "first (page cache not dropped: not root)", **epoch(feed, order, args.batch)}]
        runs += [{"epoch": f"warm {n + 1}", **epoch(feed, rng.permutation(args.images), args.batch)}
                 for n in range(args.epochs)]
        print(json.dumps({"images": args.images, "size": args.size, "batch": args.batch,
                          "megabytes": path.stat().st_size / 2**20, "file_system": str(folder),
                          "machine": f"{platform.node()} {os.cpu_count()} cores", "torch": torch.__version__,
                          "runs": runs}, indent=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
