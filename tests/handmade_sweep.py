"""A small results DB written through ResultsStore by hand, with the numbers a report must show
kept aside so that tests can compute them independently (numpy and scikit-learn, not results)."""
from __future__ import annotations

import atexit
import copy
import math
import os
import shutil
import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.pool import NullPool

from results.store import ResultsStore
from vocab.metrics import EPOCH_METRICS, MACRO_METRICS, PER_CLASS_METRICS, SPLIT_METRICS
from vocab.names import FINAL_SPLITS, metric_key
from vocab.records import EpochReport, SplitMetrics, TrialResult

LABELS = ["Cardiomegaly", "Effusion", "Nodule"]
FOLDS = (0, 1, 2)
FOLDS_SHA256 = "5f" * 32  # what the sweep records of its target's folds.csv
N_PATIENTS = 36
# backbone -> recipe -> (strategy, init, sources, signal strength of its predictions)
CELLS = {
    "resnet50": {"scratch": ("regular", "scratch", [], 0.3), "imagenet": ("regular", "imagenet", [], 1.6), "nih": ("regular", "scratch", ["nih"], 2.4),
                 "imagenet_nih": ("regular", "imagenet", ["nih"], 1.2), "mixed_nih": ("mixed", "imagenet", ["nih"], 0.2)},
    "densenet121": {"scratch": ("regular", "scratch", [], 1.1), "imagenet": ("regular", "imagenet", [], 1.0), "nih": ("regular", "scratch", ["nih"], 0.8),
                    "imagenet_nih": ("regular", "imagenet", ["nih"], 2.0), "mixed_nih": ("mixed", "imagenet", ["nih"], 1.5)},
}


@dataclass
class Expected:
    """Per (backbone, recipe): the selected trial's metrics per fold, and the pooled predictions."""

    selected: dict = field(default_factory=dict)  # (backbone, recipe) -> list of per-fold metric dicts
    pooled: dict = field(default_factory=dict)  # (backbone, recipe) -> (truth, probs, patients)
    # (backbone, recipe) -> per fold: the selected trial's inner-validation (image indices, probs)
    validation: dict = field(default_factory=dict)
    truth: np.ndarray | None = None
    patients: np.ndarray | None = None
    # external set "elsewhere": (backbone, recipe, tta) -> {"truth", "patients", "folds": [probs per fold]}
    external: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)  # attribute -> each image's group ("" unknown)


def _images(rng):
    patients = np.repeat([f"p{i:03d}" for i in range(N_PATIENTS)], 2)
    images = np.array([f"img{i:04d}" for i in range(len(patients))])
    fold = np.repeat(np.arange(N_PATIENTS) % len(FOLDS), 2)
    truth = (rng.random((len(images), len(LABELS))) < 0.35).astype(float)
    truth[::7, 2] = np.nan  # some labels unknown (masked), as for CheXpert's uncertain ones
    return images, patients, fold, truth


NAN = float("nan")


def epoch_report(**given) -> dict:
    """An epoch's report as a trainable makes it (EpochReport.to_report()): the `given` values, NaN for the rest."""
    epoch = given.get("epoch", 1)
    base = EpochReport(epoch=epoch, train_loss=NAN, val={m: NAN for m in EPOCH_METRICS}, lr=NAN, best_epoch=epoch,
                       best_val_auc=NAN, epoch_seconds=NAN, train_images_per_second=NAN, data_wait_seconds=NAN)
    return _with(base.to_report(), given)


def trial_result(n_labels: int, **given) -> dict:
    """A completed trial's result as a trainable makes it (TrialResult.to_report()): the `given` values, NaN (an
    undefined metric) for the rest, and each macro metric's `_classes` counted from its per-class values."""
    undefined = SplitMetrics(macro={m: NAN for m in SPLIT_METRICS}, per_class={m: [NAN] * n_labels for m in PER_CLASS_METRICS},
                             classes={m: 0 for m in MACRO_METRICS}, undefined=[])
    last = EpochReport.from_report(epoch_report(epoch=given.get("epoch", 3)))
    base = TrialResult(**dict(last), thresholds=[NAN] * n_labels, splits={s: undefined for s in FINAL_SPLITS},
                       completed=True, stop_reason="epochs").to_report()
    report = _with(base, given)
    for split in FINAL_SPLITS:
        for metric in MACRO_METRICS:
            classes = metric_key(split, f"{metric}_classes")
            if classes not in given:
                report[classes] = sum(not math.isnan(v) for v in report[metric_key(split, f"{metric}_per_class")])
    return report


def _with(base: dict, given: dict) -> dict:
    unknown = sorted(set(given) - set(base) - {"node_id"})
    assert not unknown, f"not a key of the record: {unknown}"
    return {**base, **given}


def _completed(result: dict | None, n_labels: int, status: str) -> dict | None:
    """A hand-written result as the trainable would have reported it: a completed trial's whole TrialResult,
    else (a pruned or failed trial's last report) an EpochReport unless it has end-of-trial keys."""
    if result is None:
        return None
    ended = status == "COMPLETE" or set(result) - set(EpochReport.layout())
    return trial_result(n_labels, **result) if ended else epoch_report(**result)


def write_trial(store, sweep: int, key: str, *, backbone: str = "resnet18", recipe: str = "scratch", variant: str = "",
                fold: int = 0, study: str | None = None, optuna_number: int = 0, params: dict | None = None,
                epochs: list[dict] = (), result: dict | None = None, labels: list[str] = (),
                predictions: dict | None = None, status: str = "COMPLETE", checkpoint: str | None = None) -> None:
    """One trial as the driver's results callback writes it: started, its epochs reported, finished. The
    tests' one hand-made trial writer: `epochs` and `result` name only the values a test looks at, the rest
    are undefined (NaN), as the store is given every metric of a record."""
    store.trial_started(sweep, key, {"backbone": backbone, "recipe": recipe, "variant": variant, "fold": fold,
                                     "study": study or f"{backbone}/{recipe}/fold{fold}",
                                     "optuna_number": optuna_number, "params": params or {}})
    for row in epochs:
        store.epoch_reported(sweep, key, epoch_report(**row))
    store.trial_finished(sweep, key, status, _completed(result, len(labels), status), None, list(labels), predictions,
                         checkpoint)


def _trial(store, sweep, key, backbone, recipe, fold, val_auc, result, predictions, status="COMPLETE"):
    write_trial(store, sweep, key, backbone=backbone, recipe=recipe, fold=fold,
                params={"lr": 10 ** -(2 + fold), "dropout": 0.1},
                epochs=[{"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1.1 / epoch, "val_auc": val_auc - 0.1 / epoch,
                         "best_epoch": epoch, "lr": 1e-3, "val_binary_acc": 0.8 + 0.03 * epoch,
                         "val_exact_match": 0.2 + 0.1 * epoch, "val_fnr": 0.5 / epoch} for epoch in (1, 2, 3)],
                result={"epoch": 3, "best_val_auc": val_auc, **result}, labels=LABELS,
                predictions=predictions if status == "COMPLETE" else None, status=status,
                checkpoint=f"/ray/handmade/{key}/checkpoint_000002" if status == "COMPLETE" else None)


EXTERNAL_CELLS = (("resnet50", "nih"), ("resnet50", "scratch"))
EXTERNAL_LABELS = LABELS[:2]  # what the external set can judge; the third is left out


def _external(store, sweep: int, rng) -> dict:
    """Two cells' fold models and fold ensembles on an external set of 30 patients (2 films each), with and
    without test-time augmentation, written as sweeper.evaluate writes them."""
    patients = np.repeat([f"x{i:03d}" for i in range(30)], 2)
    images = [f"ext{i:04d}" for i in range(len(patients))]
    truth = (rng.random((len(images), len(EXTERNAL_LABELS))) < 0.3).astype(float)
    truth[::9, 1] = np.nan
    external_id = store.external_set(sweep, "elsewhere", "phantom_elsewhere-0123", len(images),
                                     {t: [t.upper()] for t in EXTERNAL_LABELS}, LABELS[2:])
    found = {}
    for backbone, recipe in EXTERNAL_CELLS:
        signal = CELLS[backbone][recipe][3]
        for tta in ("none", "hflip"):
            folds = [1 / (1 + np.exp(-(0.5 * signal * np.nan_to_num(truth) + rng.normal(size=truth.shape))))
                     for _ in FOLDS]
            keys = {"image_keys": images, "patient_keys": list(patients), "labels": truth}
            blocks = [{"model": "fold", "fold": f, "trial_key": f"{backbone}-{recipe}-{f}-0", "probs": p, **keys}
                      for f, p in zip(FOLDS, folds)]
            blocks.append({"model": "ensemble", "probs": np.mean(folds, axis=0), **keys})
            store.external_predictions(sweep, external_id, {"backbone": backbone, "recipe": recipe, "variant": ""},
                                       tta, blocks, EXTERNAL_LABELS)
            found[(backbone, recipe, tta)] = {"truth": truth, "patients": patients, "folds": folds}
    return found


def build_sweep(url: str, name: str = "handmade", seed: int = 0, missing_cell: bool = True) -> Expected:
    """2 backbones x 4 recipes x 3 folds x 2 trials, plus (if asked) a planned cell with no trial.

    Written once per test process and backend through ResultsStore (`write_sweep`), then copied into
    each test's empty database (SQLite's backup API, PostgreSQL's CREATE DATABASE ... TEMPLATE): the same
    rows at a fiftieth of the cost. Into a database that already holds something it is written anew."""
    if not _empty(url):
        return write_sweep(url, name, seed, missing_cell)
    backend = make_url(url).get_backend_name()
    key = (backend, name, seed, missing_cell)
    if key not in _TEMPLATES:
        template = _new_template(url, len(_TEMPLATES))
        _TEMPLATES[key] = (template, write_sweep(template, name, seed, missing_cell))
    template, expected = _TEMPLATES[key]
    _copy_database(template, url)
    return copy.deepcopy(expected)


_TEMPLATES: dict[tuple, tuple[str, Expected]] = {}  # (backend, name, seed, missing_cell) -> (URL, its numbers)


def _empty(url: str) -> bool:
    engine = create_engine(url)
    try:
        return not inspect(engine).get_table_names()
    finally:
        engine.dispose()


def _new_template(url: str, number: int) -> str:
    """A URL for a template database beside `url`'s, removed when this process exits."""
    if make_url(url).get_backend_name() == "sqlite":
        folder = tempfile.mkdtemp(prefix="cxr-handmade-")
        atexit.register(shutil.rmtree, folder, True)
        return f"sqlite:///{folder}/template.db"
    name = f"cxr_handmade_{os.getpid()}_{number}"
    with _admin(url) as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    atexit.register(_drop_database, url, name)
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _admin(url: str):
    """An AUTOCOMMIT connection to the server's maintenance database (CREATE/DROP DATABASE)."""
    engine = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    return engine.connect()


def _drop_database(url: str, name: str) -> None:
    with _admin(url) as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _copy_database(template: str, url: str) -> None:
    """Make `url`'s (empty) database a copy of `template`'s."""
    source, target = make_url(template), make_url(url)
    if source.get_backend_name() == "sqlite":
        with closing(sqlite3.connect(source.database)) as src, closing(sqlite3.connect(target.database)) as dst:
            src.backup(dst)
        return
    with _admin(url) as conn:
        conn.execute(text(f'DROP DATABASE "{target.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{target.database}" TEMPLATE "{source.database}"'))


def write_sweep(url: str, name: str = "handmade", seed: int = 0, missing_cell: bool = True) -> Expected:
    """The handmade sweep written into `url` through ResultsStore; the numbers it holds."""
    rng = np.random.default_rng(seed)
    store = ResultsStore(url)
    sweep = store.start_sweep(name, "handmade", "name = 'handmade'", "test", FOLDS, 2, split="random",
                              folds_sha256=FOLDS_SHA256)
    images, patients, fold_of, truth = _images(rng)
    planned = [{"backbone": b, "recipe": r, "variant": "", "strategy": s, "init": i, "sources": src,
                "settings": {"loss": "batch_weighted_bce"}} for b, recipes in CELLS.items()
               for r, (s, i, src, _) in recipes.items()]
    if missing_cell:
        planned.append({"backbone": "resnet50", "recipe": "co_trained", "variant": "", "strategy": "co_trained",
                        "init": "scratch", "sources": ["chexpert", "nih"], "settings": {}})
    store.register_cells(sweep, planned)
    expected = Expected(truth=truth, patients=patients)
    for backbone, recipes in CELLS.items():
        for recipe, (_, _, _, signal) in recipes.items():
            chosen, pooled_probs, validation = [], np.full(truth.shape, np.nan), []
            for fold in FOLDS:
                rows = fold_of == fold
                candidates = []
                for t in range(2):
                    noise = rng.normal(size=(rows.sum(), len(LABELS)))
                    probs = 1 / (1 + np.exp(-(signal * (np.nan_to_num(truth[rows]) - 0.5) + noise)))
                    # inner validation: a third of the other folds' images, the model a little better on them
                    val_rows = np.sort(rng.choice(np.flatnonzero(~rows), size=(~rows).sum() // 3, replace=False))
                    noise = rng.normal(size=(len(val_rows), len(LABELS)))
                    val_probs = 1 / (1 + np.exp(-(1.2 * signal * (np.nan_to_num(truth[val_rows]) - 0.5) + noise)))
                    metrics = {"test_auc": rng.uniform(0.6, 0.9), "test_ap": rng.uniform(0.2, 0.5),
                               "test_hamming": rng.uniform(0.1, 0.3), "outer_train_binary_acc": rng.uniform(0.7, 0.95),
                               "outer_train_mae": rng.uniform(0.05, 0.3),
                               "test_auc_per_class": list(rng.uniform(0.5, 0.9, len(LABELS))),
                               "test_prevalence_per_class": list(np.nanmean(truth[rows], axis=0)),
                               "thresholds": [0.3, 0.4, 0.5]}
                    val_auc = rng.uniform(0.5, 0.9)
                    preds = {"test": {"image_keys": list(images[rows]), "patient_keys": list(patients[rows]),
                                      "probs": probs, "labels": truth[rows]},
                             "val": {"image_keys": list(images[val_rows]), "patient_keys": list(patients[val_rows]),
                                     "probs": val_probs, "labels": truth[val_rows]}}
                    _trial(store, sweep, f"{backbone}-{recipe}-{fold}-{t}", backbone, recipe, fold, val_auc,
                           metrics, preds)
                    candidates.append((val_auc, metrics, probs, (val_rows, val_probs)))
                _, metrics, probs, val = max(candidates, key=lambda c: c[0])  # best on inner validation
                chosen.append(metrics)
                pooled_probs[rows] = probs
                validation.append(val)
            expected.selected[(backbone, recipe)] = chosen
            expected.pooled[(backbone, recipe)] = pooled_probs
            expected.validation[(backbone, recipe)] = validation
    expected.external = _external(store, sweep, rng)
    expected.groups = {"sex": np.where(np.arange(len(images)) // 2 % 2, "M", "F"),  # per patient
                       "age_band": np.where(np.arange(len(images)) // 2 % 3 == 0, "80+", "40-59"),
                       "view": np.where(np.arange(len(images)) % 2, "AP", "PA")}
    expected.groups["sex"][-2:] = ""  # one patient's sex unknown
    store.image_groups(sweep, [{"image_key": k, **{a: str(v[i]) for a, v in expected.groups.items()}}
                               for i, k in enumerate(images)])
    # an ERROR trial with the best validation AUC of all must never be selected
    _trial(store, sweep, "err", "resnet50", "imagenet", 0, 0.999, {"test_auc": 0.999}, None, status="ERROR")
    store.finish_sweep(sweep, "FINISHED")
    store.engine.dispose()
    return expected
