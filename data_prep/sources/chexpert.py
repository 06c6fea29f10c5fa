"""CheXpert labels (`train.csv`; the Stanford AIMI release's `train_cheXbert.csv`): uncertainty
policies, blank handling, frontal filter, and each film's sex, age and view.

Values are 1, 0, -1 (uncertain) and blank (not mentioned). They differ: -1 follows the
policy, blank is negative by default or masked on request. `u_ignore` masks uncertain
labels (NaN: left out of the loss and the metrics), it does not drop images. MIMIC-CXR's
labeler tables use the same values and labels (data_prep.sources.mimic).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from data_prep.errors import DataPrepError
from data_prep.labelset import LabelSet, age_years, label_step, read_csv, refuse_duplicates, sex_of
from data_prep.sources.options import Blank, Options, Policy
from data_prep.sources.kind import SourceKind
from data_prep.sources.tables import one_table

ALL_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
              "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
              "Fracture", "Support Devices")
COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
U_ONES_IN_MIXED = ("Atelectasis", "Edema")
PATIENT = re.compile(r"(patient\d+)")
# In a downloaded folder: the original zips' train.csv (at the top in Kaggle's copy, else in the zip's
# CheXpert-v1.0(-small)/ folder); failing that, the Stanford AIMI release's CheXbert labels. Other tables
# there (valid.csv, train_visualCheXbert.csv) are label tables too, used when named.
TABLES = (("train.csv", "CheXpert-v1.0*/train.csv"), ("train_cheXbert.csv", "CheXpert-v1.0*/train_cheXbert.csv"))


class ChexpertOptions(Options):
    kind: Literal["chexpert"] = "chexpert"
    policy: Policy = Field("u_ones", description="what an uncertain (-1) label becomes")
    blank: Blank = Field("negative", description="what a blank (unmentioned) label becomes")
    all_labels: bool = Field(False, description="all 13 findings, not the 5 competition ones")
    frontal_only: bool = Field(False, description="drop lateral views")

    @property
    def labels(self) -> tuple[str, ...]:
        return ALL_LABELS[1:] if self.all_labels else COMPETITION


UNCERTAIN_AS = {  # policy -> what an uncertain (-1) label becomes, by label: one entry per options.Policy
    "u_ignore": lambda label: np.nan,  # masked: left out of loss and metrics
    "u_zeros": lambda label: 0.0,
    "u_ones": lambda label: 1.0,
    "u_mixed": lambda label: 1.0 if label in U_ONES_IN_MIXED else 0.0,
}


def _uncertain_value(policy: str, label: str) -> float:
    return UNCERTAIN_AS[policy](label)


def label_values(path: Path, table: pd.DataFrame, label: str, policy: str, blank: str) -> np.ndarray:
    """One label column as floats: 1, 0, the policy's value for -1, and 0 or NaN (masked) for blank."""
    raw = table[label].str.strip()
    known = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": _uncertain_value(policy, label),
             "-1": _uncertain_value(policy, label), "": 0.0 if blank == "negative" else np.nan}
    bad = ~raw.isin(known)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataPrepError(f"{path}: row {row + 2}, column {label!r}: {raw.iloc[row]!r}; expected 1, 0, -1 or blank")
    return raw.map(known).to_numpy(np.float32)


def label_table(path: Path, options: ChexpertOptions = ChexpertOptions()) -> Path:
    """The file given, or the downloaded folder's training table (TABLES)."""
    return one_table(path, TABLES, "CheXpert") if path.is_dir() else path


def read_labels(path: Path, options: ChexpertOptions = ChexpertOptions()) -> LabelSet:
    table = read_csv(path, ["Path", "Frontal/Lateral", "AP/PA", *options.labels])
    refuse_duplicates(path, table["Path"])
    patients = table["Path"].str.extract(PATIENT, expand=False)
    if patients.isna().any():
        row = int(np.flatnonzero(patients.isna())[0]) + 2
        raise DataPrepError(f"{path}: row {row}: no 'patientNNNNN' in Path {table['Path'].iloc[row - 2]!r}")
    frontal = table["Frontal/Lateral"].str.strip() == "Frontal"
    frame = pd.DataFrame({"csv_row": np.arange(len(table)) + 2, "file": table["Path"], "patient": patients,
                          "view": np.where(frontal, table["AP/PA"].str.strip(), "LATERAL"),
                          "sex": sex_of(table.get("Sex")), "age": age_years(table.get("Age"))})
    names = list(options.labels)
    for label in names:
        frame[label] = label_values(path, table, label, options.policy, options.blank)
    keep = frontal.to_numpy() if options.frontal_only else np.ones(len(frame), bool)
    steps = [label_step("as read", frame[names], names)]
    frame = frame[keep].reset_index(drop=True)
    if not keep.all():
        steps.append(label_step("lateral views removed", frame[names], names))
    stats = {"rows": len(table), "images": len(frame), "policy": options.policy, "blank": options.blank,
             "masked": {n: int(frame[n].isna().sum()) for n in names}, "steps": steps}
    return LabelSet(frame, names, stats)


def official_split(path: Path, options: ChexpertOptions) -> tuple[LabelSet, list[str]]:
    """The training table's rows and CheXpert's `valid.csv` (the radiologists' labels) as the test set: the
    file beside the table, or in a folder beside it (the Stanford AIMI release keeps it in its batch-1
    folder). The returned set has an `official` column: test or train."""
    found = [path.parent / "valid.csv"] if (path.parent / "valid.csv").is_file() else sorted(path.parent.glob("*/valid.csv"))
    if len(found) != 1:
        raise DataPrepError(f"{path.parent}: {'no' if not found else len(found)} valid.csv beside {path.name} or in a "
                            f"folder beside it; CheXpert's official split tests on its valid.csv")
    train, test = read_labels(path, options), read_labels(found[0], options)
    frame = pd.concat([train.frame.assign(official="train"), test.frame.assign(official="test")], ignore_index=True)
    stats = {**train.stats, "official_test_rows": test.stats["rows"]}
    return LabelSet(frame, train.names, stats), [path.name, str(found[0].relative_to(path.parent))]


KIND = SourceKind(
    name="chexpert", title="CheXpert, JPG", options=ChexpertOptions, label_table=label_table, read_labels=read_labels,
    table_help="train.csv (or the AIMI release's train_cheXbert.csv), or the folder you downloaded",
    key_parts=3,  # patient/study/file: the file names repeat across patients
    likely_cause="CheXpert's images come in several archives or batch folders: extract them all under one folder",
    official_split=official_split, official_help="valid.csv", public_paths=True)
