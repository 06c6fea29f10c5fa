"""Throughput of `sweeper.predict`'s path on new files: full-size DICOM decoded and resized as the
data set was built, then the model's forward pass, and Grad-CAM per image.

    python bench/predict_bench.py [--n 32] [--backbone resnet50] [--size 512] [--device cpu] [--workers 1 2]

The model has untrained weights (the cost does not depend on them); the files are phantom films
at CheXpert-like 2500 x 2048, 12-bit.
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
import torch  # noqa: E402

from bench.decode_bench import make_files  # noqa: E402
from trainables import engine  # noqa: E402
from trainables.explain import grad_cam  # noqa: E402
from trainables.fit import FitConfig, choose_device  # noqa: E402
from trainables.predict import TrainedModel  # noqa: E402
from trainables.recipe import recipe_architecture  # noqa: E402


def model_for(backbone: str, size: int, device: str) -> TrainedModel:
    cfg = FitConfig(data_dir="-", backbone=backbone, outer_fold=0, device=device)
    chosen = choose_device(device)
    return TrainedModel(model=recipe_architecture(cfg.backbone, cfg.init, cfg.strategy, None, 14, cfg.dropout).to(chosen).eval(), config=cfg, label_names=[f"l{k}" for k in range(14)],
                        thresholds=np.full(14, 0.5), size=size, bits=8, device=chosen,
                        precision=engine.Precision.choose("auto", chosen))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cams", type=int, default=4, help="images to time Grad-CAM on")
    args = parser.parse_args()
    model = model_for(args.backbone, args.size, args.device)
    print(f"{args.n} files of 2500x2048 12-bit DICOM -> {args.size} px, {args.backbone} on {model.device}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_files(Path(tmp), args.n, 2500, 2048)
        list(model.predict(paths[:2], args.batch_size, workers=1))  # warm up imports, kernels, page cache
        for workers in args.workers:
            started = time.perf_counter()
            results = list(model.predict(paths, args.batch_size, workers=workers))
            seconds = time.perf_counter() - started
            assert all(r.probs is not None for r in results)
            print(f"decode + predict, {workers} decoding process(es): {args.n / seconds:.1f} images/s "
                  f"({seconds:.1f} s)")
        image = results[0].image
        started = time.perf_counter()
        for _ in range(args.cams):
            grad_cam(model.model, model.tensor(image), 0)
        print(f"Grad-CAM: {(time.perf_counter() - started) / args.cams:.2f} s per image and label")
    return 0


if __name__ == "__main__":
    sys.exit(main())
