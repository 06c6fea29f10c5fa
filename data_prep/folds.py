"""Patient-grouped, multi-label stratified outer folds and inner validation splits.

iterative-stratification stratifies rows, not patients, so we stratify patients (label
vector = any positive over the patient's images) and map back to images (DESIGN.md).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit

from data_prep.errors import DataPrepError


def _patient_table(patient_keys, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = pd.DataFrame(np.nan_to_num(labels, nan=0.0)).assign(patient=np.asarray(patient_keys))  # masked: not positive
    per_patient = frame.groupby("patient", sort=True).max()
    codes = pd.Index(per_patient.index).get_indexer(np.asarray(patient_keys))
    return per_patient.index.to_numpy(), per_patient.to_numpy(), codes


def patient_folds(patient_keys, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) for each image; all images of a patient share a fold."""
    patients, patient_labels, codes = _patient_table(patient_keys, labels)
    if len(patients) < k:
        raise DataPrepError(f"{len(patients)} patients cannot fill {k} folds; use fewer folds or more data")
    fold_of_patient = np.empty(len(patients), np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(patients)), patient_labels)):
        fold_of_patient[test] = fold
    return fold_of_patient[codes]


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


def holdout_split(patient_keys, labels: np.ndarray, fractions=(0.6, 0.2, 0.2), seed: int = 0) -> np.ndarray:
    """Seed 003's train/val/test split ('train', 'val', 'test' per image), patient-grouped and
    multi-label stratified: test first, then validation out of the rest."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise DataPrepError(f"split fractions {fractions}; expected three positive numbers summing to 1 (e.g. 60/20/20)")
    patients, patient_labels, codes = _patient_table(patient_keys, labels)
    if len(patients) < 3:
        raise DataPrepError(f"{len(patients)} patient(s) cannot fill a train/val/test split")
    split = np.full(len(patients), "train", dtype=object)
    first = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fractions[2], random_state=seed)
    rest, test = next(first.split(np.zeros(len(patients)), patient_labels))
    split[test] = "test"
    second = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fractions[1] / (1 - fractions[2]),
                                              random_state=seed)
    _, val = next(second.split(np.zeros(len(rest)), patient_labels[rest]))
    split[rest[val]] = "val"
    return split[codes]


def _label_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in ("image_key", "patient_key", "view")]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m data_prep.folds",
                                     description="Patient-grouped multi-label stratified folds for a labels.csv.")
    parser.add_argument("labels_csv")
    parser.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--holdout", metavar="TRAIN/VAL/TEST",
                        help="instead of folds, one split in percent, e.g. 60/20/20 (seed 003)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="CSV to write: image_key, fold (or split)")
    args = parser.parse_args(argv)
    try:
        table = pd.read_csv(args.labels_csv, dtype={"image_key": str, "patient_key": str})
        missing = {"image_key", "patient_key"} - set(table.columns)
        if missing:
            raise DataPrepError(f"{args.labels_csv}: missing column(s) {sorted(missing)}; expected a prepared labels.csv")
        labels = table[_label_columns(table)].to_numpy(np.float32)
        if args.holdout:
            try:
                fractions = tuple(float(v) / 100 for v in args.holdout.split("/"))
            except ValueError as exc:
                raise DataPrepError(f"--holdout {args.holdout!r}; expected three percentages like 60/20/20") from exc
            column = ("split", holdout_split(table["patient_key"], labels, fractions, args.seed))
        else:
            column = ("fold", patient_folds(table["patient_key"], labels, args.k, args.seed))
    except DataPrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pd.DataFrame({"image_key": table["image_key"], column[0]: column[1]}).to_csv(args.out, index=False)
    print(f"wrote {args.out}: {len(table)} images, {table['patient_key'].nunique()} patients")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
