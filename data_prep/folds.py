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
