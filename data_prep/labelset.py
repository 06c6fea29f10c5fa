"""One shape for every source's labels, and the CSV helpers every reader shares.

A reader returns a LabelSet: a frame with `csv_row` (the row in the source CSV, header = 1), `file`
(the image's path as the table lists it), `patient` (raw ID, '' if it must come from the DICOM
header), `view` ('' if unknown), `sex` and `age` ('' where the source has none) and one float
column per label (1, 0, or NaN = masked: unknown for this image), plus the label names and the
counts for the manifest. Raw IDs never leave data_prep: the builder writes keyed pseudonyms only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError


@dataclass
class LabelSet:
    frame: pd.DataFrame  # csv_row (in the source CSV, header = 1), file, patient, view, <labels...>
    names: list[str]
    stats: dict = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.frame[self.names].to_numpy(np.float32)


def label_step(step: str, labels, names: list[str]) -> dict:
    """One stage of a reader's label processing (merges, filters, undersampling), for data_prep.summary:
    its images and positives per label."""
    values = np.asarray(labels, dtype=np.float32)
    return {"step": step, "images": int(len(values)),
            "positives": {n: int(np.nansum(values[:, k])) for k, n in enumerate(names)}}


def read_csv(path: Path, required: list[str], **kwargs) -> pd.DataFrame:
    """Read a CSV as text, with errors that name the file and what was expected."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", **kwargs)
    except FileNotFoundError as exc:
        raise DataPrepError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise DataPrepError(f"{path}: not UTF-8 text ({exc})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataPrepError(f"{path}: the file is empty; expected a header with columns {required}") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataPrepError(f"{path}: missing column(s) {missing}; columns are {list(table.columns)}")
    if table.empty:
        raise DataPrepError(f"{path}: no data rows")
    return table


def refuse_duplicates(path: Path, column: pd.Series) -> None:
    duplicated = column.duplicated(keep=False)
    if duplicated.any():
        rows = [int(i) + 2 for i in np.flatnonzero(duplicated)][:10]
        raise DataPrepError(f"{path}: {column.name} {column[duplicated].iloc[0]!r} listed more than once, "
                            f"at rows {rows} (row 1 is the header)")


OLDEST = 89  # HIPAA Safe Harbor: ages above this are one group, "90+"


def age_years(values) -> list[str] | str:
    """Ages as whole years in text, above 89 as "90+", and "" where unknown or not a number."""
    if values is None:
        return ""
    ages = pd.to_numeric(pd.Series(values, dtype=str).str.strip().str.rstrip("Yy"), errors="coerce")
    return ["" if not age >= 0 else "90+" if age > OLDEST else str(int(age)) for age in ages]


AGE_BANDS = ((0, 17, "0-17"), (18, 39, "18-39"), (40, 59, "40-59"), (60, 79, "60-79"), (80, 200, "80+"))


def age_band(years: str) -> str:
    """A prepared age (whole years, or "90+") as its band for subgroup results; "" where unknown."""
    text = str(years).strip()
    if not text or text.casefold() == "nan":
        return ""
    age = 90 if text == "90+" else int(float(text))
    return next(band for low, high, band in AGE_BANDS if low <= age <= high)


SEXES = {"m": "M", "male": "M", "f": "F", "female": "F"}


def sex_of(values) -> list[str] | str:
    """"M", "F", or "" (unknown, other or not given)."""
    if values is None:
        return ""
    return [SEXES.get(str(v).strip().casefold(), "") for v in values]


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read in blocks: what a prepared data set's content address sees of each input."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
