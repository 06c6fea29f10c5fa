"""The layout of a prepared labels.csv: which of its columns are not labels, in the order written.

One definition for every module that writes one (data_prep.build, data_prep.labels) or reads one
(data_prep.folds, data_prep.dataset, data_prep.summary): a column added here is skipped by the fold
code instead of being read as a label (issue 28: `sex` and `age` were). Imports nothing from
data_prep, so every module can import it.
"""
from __future__ import annotations

from collections.abc import Iterable

KEYS = ("image_key", "patient_key")  # keyed pseudonyms of the image and its patient
METADATA = ("view", "sex", "age")  # each film's view, sex (M, F or empty), age (years, "90+", or empty)
SOURCE_SIZE = ("source_height", "source_width")  # each image's own size before resizing: built sets only
NOT_LABELS = (*KEYS, *METADATA, *SOURCE_SIZE)
TEXT = (*KEYS, *METADATA)  # read as text: keys are never numbers, ages include "90+"


def columns(label_names: Iterable[str], source_size: bool = True) -> list[str]:
    """A labels.csv's columns in order: keys, metadata, source size (a built set's), then the labels."""
    return [*KEYS, *METADATA, *(SOURCE_SIZE if source_size else ()), *label_names]


def label_columns(table_columns: Iterable[str]) -> list[str]:
    """The label columns of a labels.csv: every column that is not a key, metadata or a source size."""
    return [c for c in table_columns if c not in NOT_LABELS]
