"""Training throughput per backbone: images/s of `engine.train_one_epoch`, time waiting on data,
and (CUDA) GPU utilisation sampled by nvidia-smi during the timed epochs.

Pixel content does not change the speed, so the images are random uint8 of the target set's
shape (1,924 films by default), fed exactly as `fit` feeds them (resident or streamed), with
the default augmentation and batch-weighted BCE.

    python bench/train_speed.py --device cpu --size 64 --batch 16                        # every backbone
    python bench/train_speed.py --device cuda --size 512 --batch 16 max --backbones resnet50 densenet121
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainables import engine  # noqa: E402
from trainables.augment import AugmentConfig, BatchAugment  # noqa: E402
from trainables.feed import ImageFeed  # noqa: E402
from trainables.losses import batch_weighted_bce  # noqa: E402
from trainables.models import BACKBONES, build_model  # noqa: E402


class GpuSampler:
    """Mean GPU utilisation (%) from `nvidia-smi -lms 100` while running."""

    def __init__(self):
        self.samples: list[float] = []
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-lms", "100"], stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.recording = False
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            if self.recording and line.strip().isdigit():
                self.samples.append(float(line))

    def close(self):
        self.proc.terminate()


def _setup(backbone, n_images, size, device, feed_mode):
    torch.manual_seed(0)
    model = build_model(backbone, num_classes=8, dropout=0.2).to(device)
    precision = engine.Precision.choose("auto", device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = np.random.default_rng(0).integers(0, 256, (n_images, size, size), dtype=np.uint8)
    labels = torch.as_tensor(np.random.default_rng(1).random((n_images, 8)) < 0.2, dtype=torch.float32, device=device)
    feed = ImageFeed(images, device, feed_mode)
    return model, precision, feed, labels


def measure(backbone, batch, args, device, sampler=None) -> dict:
    if device.type == "cuda":  # the peak of this run, not of largest_batch's probes before it
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, precision, feed, labels = _setup(backbone, args.images, args.size, device, args.feed)
    optimizer = engine.adam(model.parameters(), 1e-4)
    scaler, generator = precision.scaler(), torch.Generator().manual_seed(0)
    augment = BatchAugment(AugmentConfig())
    indices = np.arange(args.images)

    def epoch():
        return engine.train_one_epoch(model, batch_weighted_bce, optimizer, scaler, feed, labels, indices, batch,
                                      precision, generator, augment)

    epoch()  # warm-up: cudnn autotuning, allocator, first-touch
    if device.type == "cuda":
        torch.cuda.synchronize()
    waited, started = feed.waited, time.perf_counter()
    if sampler:
        sampler.recording = True
    for _ in range(args.epochs):
        epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if sampler:
        sampler.recording = False
    result = {"backbone": backbone, "batch": batch, "images_per_second": args.images * args.epochs / seconds,
              "data_wait_fraction": (feed.waited - waited) / seconds, "resident": feed.resident,
              "precision": str(precision.dtype)}
    if sampler and sampler.samples:
        result["gpu_util_percent"] = float(np.mean(sampler.samples))
        sampler.samples.clear()
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return result


def largest_batch(backbone, args, device) -> int:
    """Doubling search for the largest power-of-two batch whose training step fits."""
    model, precision, feed, labels = _setup(backbone, 2, args.size, device, "resident")
    optimizer, fits = engine.adam(model.parameters(), 1e-3), 16
    for batch in (32, 64, 128, 256, 512, 1024):
        try:
            x = torch.rand(batch, 1, args.size, args.size, device=device)
            with precision.autocast():
                loss = model(precision.prepare(x)).float().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            fits = batch
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return fits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=1924, help="images per epoch (the hospital set: 1,924)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs after one warm-up epoch")
    parser.add_argument("--batch", nargs="+", default=["16"], help="batch sizes; 'max': the largest that fits")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--feed", default="auto", choices=("auto", "resident", "stream"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sampler = GpuSampler() if device.type == "cuda" else None
    report = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "threads": torch.get_num_threads(), "size": args.size, "images": args.images, "runs": []}
    try:
        for backbone in args.backbones:
            for batch in args.batch:
                size = largest_batch(backbone, args, device) if batch == "max" else int(batch)
                run = measure(backbone, size, args, device, sampler)
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
    finally:
        if sampler:
            sampler.close()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
