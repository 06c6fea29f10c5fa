"""Patient-grouped, multi-label stratified outer folds and inner validation splits.

iterative-stratification stratifies rows, not patients, and counts each row once. Stratifying
patients on their any-positive label vector (how outer folds were made before issue 17) balances
patient-level prevalence but not image-level prevalence: on the full NIH table (5 folds) a label's
share of a fold's images was up to 13-20% off the overall, because patients with many films weigh
unevenly. Outer folds and the holdout split therefore come from `_balanced_groups`, a seeded greedy
on per-patient counts (positive films and patients per label, films, patients); the inner validation
split still stratifies patients with the library.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

from data_prep.errors import DataPrepError
from data_prep.settings import BuildSettings
from data_prep.labelset import read_csv
from data_prep.table_layout import KEYS, NOT_LABELS, label_columns
from vocab import cli


def _patient_table(patient_keys, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = pd.DataFrame(np.nan_to_num(labels, nan=0.0)).assign(patient=np.asarray(patient_keys))  # masked: not positive
    per_patient = frame.groupby("patient", sort=True).max()
    codes = pd.Index(per_patient.index).get_indexer(np.asarray(patient_keys))
    return per_patient.index.to_numpy(), per_patient.to_numpy(), codes


def _patient_counts(patient_keys, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts, weights, codes): one row per patient of what a group must hold in proportion - per label its
    positive films and whether it has any (image- and patient-level prevalence), per label with masked
    (NaN) values its known films (the prevalence's denominator), then 1 (patients) and its films."""
    patients, codes = np.unique(np.asarray(patient_keys).astype(str), return_inverse=True)
    values = np.asarray(labels, dtype=np.float64).reshape(len(codes), -1)
    known = ~np.isnan(values)
    positive = np.zeros((len(patients), values.shape[1]))
    np.add.at(positive, codes, np.where(known, values, 0.0) > 0)
    films = np.bincount(codes, minlength=len(patients)).astype(np.float64)
    masked = ~known.all(axis=0)
    known_films = np.zeros((len(patients), int(masked.sum())))
    np.add.at(known_films, codes, known[:, masked])
    counts = np.hstack([positive, positive > 0, known_films, np.ones((len(patients), 1)), films[:, None]])
    weights = np.ones(counts.shape[1])
    weights[-1] = max(values.shape[1], 1)  # image counts weigh as much as all labels' positive films together
    return counts, weights, codes


def _balanced_groups(patient_keys, labels: np.ndarray, fractions, seed: int) -> np.ndarray:
    """Group number per image (group g gets about fractions[g] of everything); all images of a patient
    share a group.

    Iterative stratification on counts (the library counts each row once and cannot weigh patients by
    their films): patients in order of film count, most first (ties in seeded random order), each into
    the group that least raises the sum over groups g and count columns d of
        weight[d] * fractions[g] * (load[g, d] / fractions[g] - placed[d])**2 / total[d]**2,
    each group's squared relative deviation from its share of what is placed so far (zero when every
    load is in proportion). While as many patients are left as groups are empty, only empty groups
    take one, so every group gets a patient."""
    counts, column_weight, codes = _patient_counts(patient_keys, labels)
    fractions = np.asarray(fractions, dtype=np.float64)
    totals = counts.sum(axis=0)
    weight = np.outer(1 / fractions, np.where(totals > 0, column_weight / np.maximum(totals, 1e-12) ** 2, 0.0))
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(counts))
    order = shuffled[np.argsort(-counts[shuffled, -1], kind="stable")]
    load = np.zeros((len(fractions), counts.shape[1]))
    members = np.zeros(len(fractions), np.int64)
    group_of_patient = np.empty(len(counts), np.int64)
    for left, patient in zip(range(len(order), 0, -1), order):
        columns = np.flatnonzero(counts[patient])
        added = counts[patient, columns]
        cost = ((2 * load[:, columns] + added) * added * weight[:, columns]).sum(axis=1)
        empty = members == 0
        if left <= empty.sum():
            cost[~empty] = np.inf
        group = int(np.argmin(cost))
        group_of_patient[patient] = group
        load[group, columns] += added
        members[group] += 1
    return group_of_patient[codes]


def patient_folds(patient_keys, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) for each image; all images of a patient share a fold. Each fold holds
    about 1/k of the images, of the patients and, per label, of the positive films and of the patients
    with one (image- and patient-level prevalence both stratified). `k` is a BuildSettings' `folds`, whose
    range (at least 2) is checked there."""
    n_patients = len(np.unique(np.asarray(patient_keys).astype(str)))
    if n_patients < k:
        raise DataPrepError(f"{n_patients} patients cannot fill {k} folds; use fewer folds or more data")
    return _balanced_groups(patient_keys, labels, [1 / k] * k, seed)


def inner_split(patient_keys, labels: np.ndarray, train_idx: np.ndarray, val_fraction: float, seed: int):
    """Split image indices `train_idx` into (train, validation), grouped by patient."""
    keys = np.asarray(patient_keys)[train_idx]
    patients, patient_labels, codes = _patient_table(keys, labels[train_idx])
    if len(patients) < 2:
        raise DataPrepError(f"{len(patients)} patient(s) in the training part; cannot hold out a validation split")
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    _, val_patients = next(splitter.split(np.zeros(len(patients)), patient_labels))
    is_val = np.isin(codes, val_patients)
    return train_idx[~is_val], train_idx[is_val]


def holdout_split(patient_keys, labels: np.ndarray, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Seed 003's train/val/test split ('train', 'val', 'test' per image), patient-grouped and
    stratified like `patient_folds` (images, patients and per label image- and patient-level
    positives in proportion to the fractions: a BuildSettings' `holdout_fractions`, checked there)."""
    n_patients = len(np.unique(np.asarray(patient_keys).astype(str)))
    if n_patients < 3:
        raise DataPrepError(f"{n_patients} patient(s) cannot fill a train/val/test split")
    return np.array(["train", "val", "test"], dtype=object)[_balanced_groups(patient_keys, labels, fractions, seed)]


def read_label_matrix(path) -> tuple[pd.DataFrame, np.ndarray]:
    """(table, its labels as floats, NaN where empty) of a prepared labels.csv; the label columns are those
    data_prep.table_layout does not name. A label cell that is not a number is an error naming it."""
    table = read_csv(path, [])  # as text, empty cells "": no column is guessed a number
    missing = [c for c in KEYS if c not in table.columns]
    if missing:
        raise DataPrepError(f"{path}: missing column(s) {missing}; expected a prepared labels.csv "
                            f"(python -m data_prep.labels); columns are {list(table.columns)}")
    names = label_columns(table.columns)
    values = table[names].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().to_numpy() & (table[names] != "").to_numpy()
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise DataPrepError(f"{path}: row {row + 2}, column {names[column]!r}: {table[names].iat[row, column]!r}; "
                            f"expected 1, 0 or empty (every column but {list(NOT_LABELS)} is a label)")
    return table, values.to_numpy(np.float32)


COMMAND = cli.Command(
    name="folds", module="data_prep.folds",
    summary="Patient-grouped outer folds (or one holdout split) for a prepared labels.csv.",
    description="Every column but the keys, view, sex, age and the source size is a label (data_prep/table_layout.py); "
                "the folds are the ones `cxr-sweep prepare` makes with the same --folds (or --holdout) and --seed.",
    examples=("--labels nih.csv --folds 5 --out folds.csv",
              "--labels nih.csv --holdout 60/20/20 --seed 3 --out split.csv"))
FLAGS = ("folds", "holdout", "seed")  # the build settings this command takes


def add_arguments(parser: cli.Parser) -> None:
    cli.add_labels(parser, help="a prepared labels.csv (`cxr-sweep labels`, or a prepared data set's)",
                   positional="labels.csv")
    cli.add_out(parser, "the CSV file to write: image_key, fold (or split)", required=True)
    skip = [name for name in BuildSettings.model_fields if name not in FLAGS]
    cli.add_model_flags(parser, BuildSettings, skip=skip)
    parser.rename("--k", "--folds")

    def resolve(args) -> None:
        args.settings = cli.model_from_flags(BuildSettings, args, skip=skip)

    parser.check(resolve)


def run(args) -> int:
    table, labels = read_label_matrix(args.labels)
    settings = args.settings
    if settings.holdout is not None:
        column = ("split", holdout_split(table["patient_key"], labels, settings.holdout_fractions, settings.seed))
    else:
        column = ("fold", patient_folds(table["patient_key"], labels, settings.folds, settings.seed))
    pd.DataFrame({"image_key": table["image_key"], column[0]: column[1]}).to_csv(args.out, index=False)
    print(f"wrote {args.out}: {len(table)} images, {table['patient_key'].nunique()} patients")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
