"""CheXpert labels (`train.csv`): uncertainty policies, blank handling, frontal filter.

Values are 1, 0, -1 (uncertain) and blank (not mentioned). They differ: -1 follows the
policy, blank is negative by default or masked on request. `u_ignore` masks uncertain
labels (NaN: left out of the loss and the metrics), it does not drop images.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError
from data_prep.labels import LabelSet, label_step, read_csv, refuse_duplicates

ALL_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
              "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
              "Fracture", "Support Devices")
COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
POLICIES = ("u_ignore", "u_zeros", "u_ones", "u_mixed")
U_ONES_IN_MIXED = ("Atelectasis", "Edema")
PATIENT = re.compile(r"(patient\d+)")


@dataclass(frozen=True)
class ChexpertOptions:
    policy: str = "u_ones"
    labels: tuple[str, ...] = COMPETITION
    blank: str = "negative"  # or "mask"
    frontal_only: bool = False


def _uncertain_value(policy: str, label: str) -> float:
    if policy == "u_ignore":
        return np.nan
    if policy == "u_mixed":
        return 1.0 if label in U_ONES_IN_MIXED else 0.0
    return 1.0 if policy == "u_ones" else 0.0


def _values(path: Path, table: pd.DataFrame, label: str, options: ChexpertOptions) -> np.ndarray:
    raw = table[label].str.strip()
    known = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": _uncertain_value(options.policy, label),
             "-1": _uncertain_value(options.policy, label), "": 0.0 if options.blank == "negative" else np.nan}
    bad = ~raw.isin(known)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataPrepError(f"{path}: row {row + 2}, column {label!r}: {raw.iloc[row]!r}; expected 1, 0, -1 or blank")
    return raw.map(known).to_numpy(np.float32)


def read_chexpert_labels(path: Path, options: ChexpertOptions = ChexpertOptions()) -> LabelSet:
    if options.policy not in POLICIES:
        raise DataPrepError(f"uncertainty policy {options.policy!r}; expected one of {POLICIES}")
    if options.blank not in ("negative", "mask"):
        raise DataPrepError(f"blank={options.blank!r}; expected 'negative' or 'mask'")
    unknown = [n for n in options.labels if n not in ALL_LABELS]
    if unknown:
        raise DataPrepError(f"unknown CheXpert label(s) {unknown}; expected any of {list(ALL_LABELS)}")
    table = read_csv(path, ["Path", "Frontal/Lateral", "AP/PA", *options.labels])
    refuse_duplicates(path, table["Path"])
    patients = table["Path"].str.extract(PATIENT, expand=False)
    if patients.isna().any():
        row = int(np.flatnonzero(patients.isna())[0]) + 2
        raise DataPrepError(f"{path}: row {row}: no 'patientNNNNN' in Path {table['Path'].iloc[row - 2]!r}")
    frontal = table["Frontal/Lateral"].str.strip() == "Frontal"
    frame = pd.DataFrame({"csv_row": np.arange(len(table)) + 2, "file": table["Path"], "patient": patients,
                          "view": np.where(frontal, table["AP/PA"].str.strip(), "LATERAL")})
    for label in options.labels:
        frame[label] = _values(path, table, label, options)
    keep = frontal.to_numpy() if options.frontal_only else np.ones(len(frame), bool)
    names = list(options.labels)
    steps = [label_step("as read", frame[names], names)]
    frame = frame[keep].reset_index(drop=True)
    if not keep.all():
        steps.append(label_step("lateral views removed", frame[names], names))
    stats = {"rows": len(table), "images": len(frame), "policy": options.policy, "blank": options.blank,
             "masked": {n: int(frame[n].isna().sum()) for n in names}, "steps": steps}
    return LabelSet(frame, names, stats)
