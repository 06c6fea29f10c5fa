"""GPU check and timing of `trainables.fit` (no Ray): every backbone x every loss on CUDA.

Generates a phantom set, builds it, fits each backbone for a few epochs on the GPU and
writes per-epoch seconds and images/s. Usage:
    python bench/gpu_fit_check.py --out results.json [--size 128] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data_prep.build import build  # noqa: E402
from data_prep.settings import BuildSettings  # noqa: E402
from phantom.generate import make_phantom_set  # noqa: E402
from trainables.fit import FitConfig, fit  # noqa: E402
from trainables.losses import LOSSES  # noqa: E402
from trainables.models import BACKBONES  # noqa: E402
from vocab.records import TrialResult  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    raw = work / "raw"
    make_phantom_set(raw, n_patients=args.patients, image_px=256, prevalence=0.3, seed=0)
    data = build(raw, raw / "labels.csv", work / "prep", BuildSettings(size=args.size, folds=5), key=b"k" * 32)
    report = {"torch": torch.__version__, "python": platform.python_version(), "device": args.device,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "size": args.size, "epochs": args.epochs, "runs": []}
    for backbone in sorted(BACKBONES):
        for loss in LOSSES:
            epochs = []
            started = time.perf_counter()
            final = TrialResult.from_report(fit(
                FitConfig(data_dir=str(data), backbone=backbone, outer_fold=0, epochs=args.epochs, batch_size=16,
                          loss=loss, lr=3e-4, device=args.device),
                report=lambda m, s: epochs.append(m["epoch_seconds"]), log=lambda *_: None))  # noqa: B023 - called now
            run = {"backbone": backbone, "loss": loss, "epoch_seconds": epochs,
                   "total_seconds": time.perf_counter() - started, "val_auc": final.val["auc"],
                   "test_auc": final.splits["test"].macro["auc"], "finite": final.train_loss == final.train_loss}
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
