"""What keeping a finished trial's best weights in half precision changes: the same seeded fit with and
without the rounding, compared by test macro AUC and the largest probability difference.

    python bench/half_precision_bench.py [--epochs 4] [--backbones resnet18 densenet121]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import trainables.fit as fitting  # noqa: E402
from data_prep.build import build  # noqa: E402
from data_prep.settings import BuildSettings  # noqa: E402
from phantom.generate import make_phantom_set  # noqa: E402
from vocab.records import TrialPredictions, TrialResult  # noqa: E402


def final(data: Path, backbone: str, epochs: int) -> tuple[float, np.ndarray]:
    reports = []
    cfg = fitting.FitConfig(data_dir=str(data), backbone=backbone, outer_fold=0, epochs=epochs, batch_size=16,
                            lr=1e-3, dropout=0.0, threads=os.cpu_count(), schedule="constant")
    fitting.fit(cfg, report=lambda m, s: reports.append((m, copy.deepcopy(s))), log=lambda *_: None)
    metrics, state = reports[-1]
    result, kept = TrialResult.from_report(metrics), TrialPredictions.from_state(state["predictions"])
    return result.splits["test"].macro["auc"], kept.splits["test"].probs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "densenet121"])
    args = parser.parse_args()
    key = os.urandom(32)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        make_phantom_set(raw, kind="target", n_patients=120, image_px=128, prevalence=0.4, seed=11,
                         images_per_patient=(1, 1))
        data = build(raw, raw / "labels.csv", Path(tmp) / "prepared", BuildSettings(size=64, folds=3, workers=1),
                     key=key, log=lambda *_: None)
        rounded = {b: final(data, b, args.epochs) for b in args.backbones}
        fitting.half_precision = dict  # the same fit, evaluated (and kept) in full precision
        full = {b: final(data, b, args.epochs) for b in args.backbones}
    for b in args.backbones:
        (auc_half, p_half), (auc_full, p_full) = rounded[b], full[b]
        print(f"{b}: test macro AUC {auc_half:.5f} (half) vs {auc_full:.5f} (full), "
              f"largest probability difference {np.abs(p_half - p_full).max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
