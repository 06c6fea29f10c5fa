"""Read a target label CSV (`file` plus `findings` of '|'-separated names, or 0/1 columns)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError

NORMAL = "normal"


def read_label_csv(path: Path, label_names: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Return (table with `file`, optional `patient`, one 0/1 column per label; label names).

    With `findings`, label names are `label_names` or, if None, every name seen (sorted).
    A name outside `label_names`, a missing column or a duplicate file stops with the row.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataPrepError(f"{path}: not UTF-8 text ({exc})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataPrepError(f"{path}: the file is empty; expected a header with a 'file' column") from exc
    if "file" not in table.columns:
        raise DataPrepError(f"{path}: no 'file' column; columns are {list(table.columns)}")
    if table.empty:
        raise DataPrepError(f"{path}: no data rows")
    duplicated = table["file"].duplicated(keep=False)
    if duplicated.any():
        rows = [int(i) + 2 for i in np.flatnonzero(duplicated)][:10]
        raise DataPrepError(f"{path}: file listed more than once at rows {rows} (row 1 is the header)")
    if "findings" in table.columns:
        labels, names = _from_findings(path, table["findings"], label_names)
    else:
        names = label_names or [c for c in table.columns if c not in ("file", "patient")]
        labels = _from_columns(path, table, names)
    out = table[["file"] + (["patient"] if "patient" in table.columns else [])].copy()
    for k, name in enumerate(names):
        out[name] = labels[:, k]
    return out, names


def _from_findings(path, findings: pd.Series, label_names):
    parsed = [[n.strip() for n in str(v).split("|") if n.strip()] for v in findings]
    names = list(label_names) if label_names else sorted({n for row in parsed for n in row} - {NORMAL})
    index = {n: k for k, n in enumerate(names)}
    labels = np.zeros((len(parsed), len(names)), np.uint8)
    for i, row in enumerate(parsed):
        for name in row:
            if name == NORMAL:
                continue
            if name not in index:
                raise DataPrepError(f"{path}: row {i + 2}: unknown finding {name!r}; expected one of {names + [NORMAL]}")
            labels[i, index[name]] = 1
    return labels, names


def _from_columns(path, table: pd.DataFrame, names: list[str]) -> np.ndarray:
    missing = [n for n in names if n not in table.columns]
    if missing or not names:
        raise DataPrepError(f"{path}: label columns {missing or names} missing; columns are {list(table.columns)}")
    values = table[names]
    bad = ~values.isin(["0", "1"])
    if bad.any().any():
        i, j = np.argwhere(bad.to_numpy())[0]
        raise DataPrepError(f"{path}: row {i + 2}, column {names[j]!r}: {values.iat[i, j]!r}; expected 0 or 1")
    return values.to_numpy().astype(np.uint8)
