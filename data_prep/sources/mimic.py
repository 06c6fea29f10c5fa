"""MIMIC-CXR-JPG as PhysioNet ships it: `mimic-cxr-2.0.0-metadata.csv(.gz)` (one row per image:
dicom_id, subject_id, study_id, ViewPosition, ...), a labeler's table per study
(`mimic-cxr-2.0.0-chexpert.csv(.gz)` or `-negbio.csv(.gz)`: subject_id, study_id and CheXpert's 14
labels as 1, 0, -1 or blank), `mimic-cxr-2.0.0-split.csv(.gz)`, and images at
`files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg`.

The metadata table is the label table the reader reads (it lists the images); the labeler's table
lies beside it. A build may be given the downloaded folder or any of the tables instead (`label_table`).
Patient = subject_id. Labels are per study, so every image of a study gets its study's labels,
with CheXpert's uncertainty and blank policies; a study the labeler has no row for has every
label blank. No date, time or other header value leaves this module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from data_prep.errors import DataPrepError
from data_prep.labelset import LabelSet, file_sha256, label_step, read_csv, refuse_duplicates
from data_prep.sources.chexpert import ChexpertOptions, label_values
from data_prep.sources.kind import SourceKind
from data_prep.sources.tables import one_table

PREFIX = "mimic-cxr-2.0.0-"
TABLES = ((f"{PREFIX}metadata.csv", f"{PREFIX}metadata.csv.gz"),)
SIBLINGS = {"chexpert": "the CheXpert labeler's study labels", "negbio": "the NegBio labeler's study labels",
            "split": "the official split"}  # PhysioNet's other tables, beside the metadata
FRONTAL = ("PA", "AP")


class MimicOptions(ChexpertOptions):
    kind: Literal["mimic"] = "mimic"  # type: ignore[assignment]
    labeler: Literal["chexpert", "negbio"] = Field("chexpert", description="whose study labels to use")
    frontal_only: bool = Field(False, description="keep PA and AP views only")


def companion(metadata: Path, what: str) -> Path:
    """`mimic-cxr-2.0.0-WHAT.csv` or `.csv.gz` beside the metadata table."""
    for name in (f"{PREFIX}{what}.csv", f"{PREFIX}{what}.csv.gz"):
        if (metadata.parent / name).is_file():
            return metadata.parent / name
    raise DataPrepError(f"{metadata.parent}: no {PREFIX}{what}.csv or {PREFIX}{what}.csv.gz beside {metadata.name}; "
                        f"MIMIC-CXR-JPG ships it in the same folder")


def label_table(path: Path, options: MimicOptions = MimicOptions()) -> Path:
    """The metadata table: the file given, the one in the folder given, or the one beside another table of
    the download. A labeler's table that is not the one `options.labeler` names stops with the flag to pass:
    it would otherwise be silently replaced by the other labeler's labels."""
    if path.is_dir():
        return one_table(path, TABLES, "MIMIC-CXR-JPG metadata")
    sibling = next((what for what in SIBLINGS if path.name in (f"{PREFIX}{what}.csv", f"{PREFIX}{what}.csv.gz")),
                   None)
    if sibling is None:
        return path
    if sibling in ("chexpert", "negbio") and sibling != options.labeler:
        raise DataPrepError(f"{path} holds the {sibling} labeler's labels, but the labeler is {options.labeler!r}; "
                            f"pass --labeler {sibling} (in a spec: labeler = \"{sibling}\" under "
                            f"[data.prepare.NAME]) to use them, or give the folder or {PREFIX}metadata.csv.gz to use "
                            f"the {options.labeler} labeler's")
    try:
        return one_table(path.parent, TABLES, "MIMIC-CXR-JPG metadata")
    except DataPrepError as exc:
        raise DataPrepError(f"{path} is MIMIC-CXR-JPG's table of {SIBLINGS[sibling]}; the images and their views "
                            f"come from {PREFIX}metadata.csv.gz beside it: {exc}") from None


def image_path(subject: str, study: str, dicom_id: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg"


def read_labels(path: Path, options: MimicOptions = MimicOptions()) -> LabelSet:
    meta = read_csv(path, ["dicom_id", "subject_id", "study_id", "ViewPosition"])
    refuse_duplicates(path, meta["dicom_id"])
    studies_path = companion(path, options.labeler)
    names = list(options.labels)
    studies = read_csv(studies_path, ["subject_id", "study_id", *names])
    refuse_duplicates(studies_path, studies["study_id"])
    values = pd.DataFrame({n: label_values(studies_path, studies, n, options.policy, options.blank) for n in names})
    values["study_id"] = studies["study_id"].to_numpy()
    joined = meta[["dicom_id", "subject_id", "study_id", "ViewPosition"]].merge(values, on="study_id", how="left")
    unlabelled = joined[names[0]].isna() & ~joined["study_id"].isin(studies["study_id"])
    blank = 0.0 if options.blank == "negative" else np.nan  # a study with no labeler row: every label blank
    joined.loc[unlabelled, names] = blank
    frame = pd.DataFrame({"csv_row": np.arange(len(meta)) + 2,
                          "file": [image_path(*row) for row in zip(meta["subject_id"], meta["study_id"],
                                                                     meta["dicom_id"])],
                          "patient": meta["subject_id"].to_numpy(), "view": meta["ViewPosition"].str.strip().to_numpy(),
                          "sex": "", "age": ""})
    frame[names] = joined[names].to_numpy(np.float32)
    steps = [label_step("as read (study labels on each image)", frame[names], names)]
    keep = frame["view"].isin(FRONTAL).to_numpy() if options.frontal_only else np.ones(len(frame), bool)
    frame = frame[keep].reset_index(drop=True)
    if not keep.all():
        steps.append(label_step("views other than PA and AP removed", frame[names], names))
    stats = {"rows": len(meta), "images": len(frame), "labeler": options.labeler, "policy": options.policy,
             "labeler_table_sha256": file_sha256(studies_path),  # the labels' source, in the content address
             "blank": options.blank, "studies_without_labels": int(meta.loc[unlabelled.to_numpy(), "study_id"].nunique()),
             "masked": {n: int(frame[n].isna().sum()) for n in names}, "steps": steps}
    return LabelSet(frame, names, stats)


def official_split(path: Path, options: MimicOptions) -> tuple[LabelSet, list[str]]:
    """(labels with an `official` column, test or train; the files the split comes from): the images
    `mimic-cxr-2.0.0-split.csv` puts in `test`; its `train` and `validate` images are the rest."""
    label_set = read_labels(path, options)
    frame = label_set.frame
    split_path = companion(path, "split")
    table = read_csv(split_path, ["dicom_id", "split"])
    refuse_duplicates(split_path, table["dicom_id"])  # else reindex below fails with pandas' own error
    split = table.set_index("dicom_id")["split"].str.strip()
    dicom_ids = frame["file"].str.rsplit("/", n=1).str[-1].str.removesuffix(".jpg")
    found = split.reindex(dicom_ids)
    if found.isna().any():
        rows = [int(r) for r in frame["csv_row"][found.isna().to_numpy()][:3]]
        raise DataPrepError(f"{split_path}: {int(found.isna().sum())} image(s) of {path.name} are not in it "
                            f"(rows {rows}); expected every dicom_id with train, validate or test")
    frame["official"] = np.where(found == "test", "test", "train")
    return label_set, [split_path.name]


KIND = SourceKind(
    name="mimic", title="MIMIC-CXR-JPG", options=MimicOptions, label_table=label_table, read_labels=read_labels,
    table_help=f"{PREFIX}metadata.csv(.gz) or any table beside it, or the folder you downloaded",
    key_parts=1,  # DICOM ids are unique
    likely_cause="MIMIC-CXR-JPG's files/p10 ... files/p19 folders: download them all under one folder",
    official_split=official_split, official_help=f"the test rows of {PREFIX}split.csv", public_paths=True)
