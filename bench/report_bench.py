"""How long the results DB takes to write a paper-sized sweep's predictions, how big it gets, and how
long the full report (bootstrap intervals, paired tests, figures) takes to build from it.

`python bench/report_bench.py [--images 1924] [--labels 14] [--trials 8] [--external 2000] [--n-boot 1000]
                              [--db URL]`

Paper size (seed 000): 2 backbones x 8 recipes x 5 outer folds x 8 trials on 1,924 target images
with 14 labels, each trial's test and inner-validation predictions, and every cell's 5 fold models
and fold ensemble on an external set of 2,000 images. Predictions are synthetic (signal + noise);
only sizes and timings matter here. The report is built as `results.report --calibrate` builds it:
every section (operating points under 3 rules, calibration raw and temperature-scaled, DeLong,
subgroups by sex, age band and view, external validation) and its figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from results.report import build  # noqa: E402
from results.render import write  # noqa: E402
from results.store import ResultsStore  # noqa: E402
from tests.handmade_sweep import epoch_report, trial_result  # noqa: E402 - records as a trainable reports them

RECIPES = {"imagenet": ("regular", "imagenet", []), "chexpert": ("regular", "scratch", ["chexpert"]),
           "nih": ("regular", "scratch", ["nih"]), "imagenet_chexpert": ("regular", "imagenet", ["chexpert"]),
           "imagenet_nih": ("regular", "imagenet", ["nih"]), "mixed_chexpert": ("mixed", "imagenet", ["chexpert"]),
           "mixed_nih": ("mixed", "imagenet", ["nih"]), "co_trained": ("co_trained", "scratch", ["chexpert", "nih"])}


def fill(url: str, images: int, labels: int, trials: int, external: int = 0, folds: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    store = ResultsStore(url)
    names = [f"label{j:02d}" for j in range(labels)]
    sweep = store.start_sweep("bench", "paper", "", "bench", list(range(folds)), trials)
    store.register_cells(sweep, [{"backbone": b, "recipe": r, "variant": "", "strategy": s, "init": i, "sources": src}
                                 for b in ("resnet50", "densenet121") for r, (s, i, src) in RECIPES.items()])
    patients = np.array([f"p{i // 3:05d}" for i in range(images)])
    keys = np.array([f"img{i:06d}" for i in range(images)])
    fold_of = (np.arange(images) // 3) % folds
    truth = (rng.random((images, labels)) < 0.1).astype(float)
    bands = rng.choice(["18-39", "40-59", "60-79", "80+"], images // 3 + 1)
    store.image_groups(sweep, [{"image_key": k, "sex": "MF"[(i // 3) % 2], "age_band": bands[i // 3],
                                "view": "AP" if i % 2 else "PA"} for i, k in enumerate(keys)])
    started, written = time.perf_counter(), 0
    for b in ("resnet50", "densenet121"):
        for r in RECIPES:
            signal = rng.uniform(0.5, 2.0)
            for fold in range(folds):
                rows = fold_of == fold
                for t in range(trials):
                    key = f"{b}-{r}-{fold}-{t}"
                    store.trial_started(sweep, key, {"backbone": b, "recipe": r, "fold": fold, "study": key,
                                                     "optuna_number": t, "params": {"lr": 10 ** rng.uniform(-5, -3)}})
                    for epoch in range(1, 11):
                        store.epoch_reported(sweep, key, epoch_report(epoch=epoch, val_auc=rng.uniform(0.6, 0.8),
                                                                      val_loss=1 / epoch, train_loss=1 / epoch))
                    probs = 1 / (1 + np.exp(-(signal * (truth[rows] - 0.5) + rng.normal(size=(rows.sum(), labels)))))
                    result = trial_result(labels, epoch=10, best_val_auc=rng.uniform(0.6, 0.8),
                                          test_auc=rng.uniform(0.7, 0.85), test_ap=rng.uniform(0.1, 0.3),
                                          thresholds=[0.1] * labels,
                                          test_auc_per_class=list(rng.uniform(0.6, 0.9, labels)))
                    val = np.flatnonzero(~rows)[rng.random((~rows).sum()) < 0.2]  # inner validation
                    val_probs = 1 / (1 + np.exp(-(signal * (truth[val] - 0.5) + rng.normal(size=(len(val), labels)))))
                    store.trial_finished(sweep, key, "COMPLETE", result, None, names,
                                         {"test": {"image_keys": list(keys[rows]), "patient_keys": list(patients[rows]),
                                                   "probs": probs, "labels": truth[rows]},
                                          "val": {"image_keys": list(keys[val]), "patient_keys": list(patients[val]),
                                                  "probs": val_probs, "labels": truth[val]}})
                    written += 1
            if external:
                _external(store, sweep, rng, b, r, signal, external, names, folds)
    return {"trials": written, "write_seconds": time.perf_counter() - started}


def _external(store, sweep: int, rng, backbone: str, recipe: str, signal: float, images: int, names, folds: int):
    """A cell's 5 fold models and fold ensemble on an external set (as sweeper.evaluate writes them)."""
    truth = (np.random.default_rng(99).random((images, len(names))) < 0.1).astype(float)
    external_id = store.external_set(sweep, "elsewhere", "bench_external", images, {n: [n] for n in names}, [])
    keys = {"image_keys": [f"ext{i:06d}" for i in range(images)],
            "patient_keys": [f"x{i // 2:05d}" for i in range(images)], "labels": truth}
    blocks = [{"model": "fold", "fold": f, **keys, "probs": 1 / (1 + np.exp(-(0.7 * signal * (truth - 0.5)
                                                                               + rng.normal(size=truth.shape))))}
              for f in range(folds)]
    blocks.append({"model": "ensemble", **keys, "probs": np.mean([b["probs"] for b in blocks], axis=0)})
    store.external_predictions(sweep, external_id, {"backbone": backbone, "recipe": recipe, "variant": ""}, "none",
                               blocks, names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1924)
    parser.add_argument("--labels", type=int, default=14)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--external", type=int, default=2000, help="images of the external set (0: none)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--db", help="SQLAlchemy URL (default: a SQLite file in a temporary folder)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    url = args.db or f"sqlite:///{tmp / 'bench.db'}"
    out = fill(url, args.images, args.labels, args.trials, args.external)
    if url.startswith("sqlite:///"):
        out["db_megabytes"] = Path(url[len("sqlite:///"):]).stat().st_size / 2**20
    started = time.perf_counter()
    built = build(url, "bench", n_boot=args.n_boot, calibrate=True)
    out["report_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    write(built, tmp / "report")
    out["write_report_seconds"] = time.perf_counter() - started
    out.update(images=args.images, labels=args.labels, trials_per_study=args.trials, n_boot=args.n_boot,
               external_images=args.external,
               html_megabytes=(tmp / "report" / "report.html").stat().st_size / 2**20)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
