"""Folds and the holdout split balance image-level prevalence, not only patient-level (issue 17):
patients with many films must not tip a label's share of images in a fold."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_prep.folds import holdout_split, patient_folds
from tests.conftest import FIXTURES, REPO

FULL_NIH = REPO.parent / "shared" / "data" / "nih_data_entry_2017_v2020.csv.gz"


def _relative_deviation(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per group and label: |prevalence in the group - overall| / overall (masked values left out)."""
    overall = np.nanmean(values, axis=0)
    return np.array([np.abs(np.nanmean(values[groups == g], axis=0) - overall) / overall for g in np.unique(groups)])


def _patient_level(patients: np.ndarray, labels: np.ndarray, groups: np.ndarray):
    table = pd.DataFrame(np.nan_to_num(labels)).assign(patient=patients, group=groups).groupby("patient").max()
    return table.drop(columns="group").to_numpy(), table["group"].to_numpy()


def _check(patients, labels, groups, fractions, min_positives, image_tol, size_tol):
    assert (pd.Series(groups).groupby(patients).nunique() == 1).all()  # no patient in two groups
    names = np.unique(groups)
    sizes = np.array([(groups == g).sum() for g in names])
    expected = np.asarray(fractions) * len(groups)
    assert np.abs(sizes - expected).max() / expected.min() < size_tol, sizes
    common = np.nansum(labels, axis=0) >= min_positives
    image = _relative_deviation(labels, groups)[:, common]
    assert image.max() < image_tol, dict(zip(names, image.max(axis=1).round(4)))
    patient = _relative_deviation(*_patient_level(patients, labels, groups))[:, common]
    assert patient.max() < image_tol, dict(zip(names, patient.max(axis=1).round(4)))


def _nih_table(path) -> tuple[np.ndarray, np.ndarray]:
    """(patient per image, 0/1 per image and label) of an NIH Data_Entry table: every image and all 14
    labels, as the NIH reader keeps them with preset none."""
    table = pd.read_csv(path, usecols=["Finding Labels", "Patient ID"])
    labels = table["Finding Labels"].str.get_dummies("|").drop(columns="No Finding", errors="ignore")
    return table["Patient ID"].astype(str).to_numpy(), labels.sort_index(axis=1).to_numpy(np.float32)


@pytest.fixture(scope="module")
def full_nih():
    if not FULL_NIH.is_file():
        pytest.skip(f"the full NIH table ({FULL_NIH.name}) is in ../shared/data only; not found at {FULL_NIH}")
    patients, labels = _nih_table(FULL_NIH)
    assert labels.shape == (112_120, 14) and len(set(patients)) == 30_805
    return patients, labels


def test_folds_on_the_full_nih_table_keep_image_level_prevalence_within_5_percent(full_nih):
    """Was: up to 13% (Edema 12.6% with seed 0, 19.8% over seeds 0-4) while patient-level stayed at 0.4%."""
    patients, labels = full_nih
    folds = patient_folds(patients, labels, k=5, seed=0)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    _check(patients, labels, folds, [0.2] * 5, min_positives=1000, image_tol=0.05, size_tol=0.01)


def test_holdout_split_on_the_full_nih_table_keeps_image_level_prevalence_within_5_percent(full_nih):
    patients, labels = full_nih
    split = holdout_split(patients, labels, (0.6, 0.2, 0.2), seed=0)
    fractions = {"test": 0.2, "train": 0.6, "val": 0.2}  # np.unique order
    _check(patients, labels, split, list(fractions.values()), min_positives=1000, image_tol=0.05, size_tol=0.01)


def test_folds_on_the_1500_patient_fixture_are_image_level_balanced():
    """The CI-independent check: a smaller table is lumpier, but far from the 45-67% of patient-level
    stratification (labels with at least 200 positive films)."""
    patients, labels = _nih_table(FIXTURES / "nih_data_entry_first1500patients.csv.gz")
    folds = patient_folds(patients, labels, k=5, seed=0)
    _check(patients, labels, folds, [0.2] * 5, min_positives=200, image_tol=0.2, size_tol=0.02)


def _many_films_table(seed=1, n_patients=15000):
    """Patients with 1 to ~40 films whose findings go together; label 1 masked (NaN) for a third of patients."""
    rng = np.random.default_rng(seed)
    keys = np.repeat(np.arange(n_patients), rng.geometric(0.25, n_patients))
    tendency = rng.random(n_patients)[keys, None] * 2
    labels = (rng.random((len(keys), 4)) < np.array([0.1, 0.3, 0.02, 0.5]) * tendency).astype(np.float32)
    labels[keys % 3 == 0, 1] = np.nan
    return keys.astype(str), labels


def test_masked_labels_are_balanced_over_the_images_where_they_are_known():
    patients, labels = _many_films_table()
    folds = patient_folds(patients, labels, k=5, seed=0)
    _check(patients, labels, folds, [0.2] * 5, min_positives=1000, image_tol=0.02, size_tol=0.01)
    known = np.array([(~np.isnan(labels[folds == f, 1])).sum() for f in range(5)])
    assert np.abs(known / known.mean() - 1).max() < 0.01


def test_folds_and_holdout_are_deterministic_by_seed():
    patients, labels = _many_films_table(n_patients=3000)
    first = patient_folds(patients, labels, k=5, seed=3)
    assert (patient_folds(patients, labels, k=5, seed=3) == first).all()
    assert (patient_folds(patients, labels, k=5, seed=4) != first).any()
    split = holdout_split(patients, labels, (0.6, 0.2, 0.2), seed=3)
    assert (holdout_split(patients, labels, (0.6, 0.2, 0.2), seed=3) == split).all()
    assert (holdout_split(patients, labels, (0.6, 0.2, 0.2), seed=4) != split).any()


@pytest.mark.parametrize("k", [2, 3, 5])
def test_every_fold_gets_a_patient_even_with_as_many_patients_as_folds(k):
    patients = np.array(["a"] * 5 + [f"p{n}" for n in range(k - 1)])
    folds = patient_folds(patients, np.zeros((len(patients), 1)), k=k, seed=0)
    assert sorted(np.unique(folds)) == list(range(k))


def test_holdout_of_three_patients_puts_one_in_each_part():
    split = holdout_split(["a", "b", "c"], np.zeros((3, 2)), (0.6, 0.2, 0.2), seed=0)
    assert sorted(split) == ["test", "train", "val"]
