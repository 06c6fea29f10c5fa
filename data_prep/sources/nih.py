"""NIH ChestX-ray14 labels (`Data_Entry_2017*.csv`): merges, view filter, undersampling, and each
film's sex, age and view.

By default every image and all 14 labels are kept. Seed 003's recipe (`preset = "seed003"`,
`SEED003`): Mass+Nodule -> Nodule, Infiltration+Consolidation+Pneumonia -> Consolidation, AP and
PA only, images with no finding dropped, and the four most frequent labels undersampled.
Everything is deterministic by seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from data_prep.errors import DataPrepError
from data_prep.labelset import LabelSet, age_years, label_step, read_csv, refuse_duplicates, sex_of
from data_prep.sources.options import Options
from data_prep.sources.kind import SourceKind
from data_prep.sources.tables import one_table

NIH_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
              "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")
NO_FINDING = "No Finding"
COLUMNS = ["Image Index", "Finding Labels", "Patient ID", "View Position"]
TABLES = (("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"),)  # the box download's (2020), Kaggle's
SIBLINGS = ("BBox_List_2017.csv", "train_val_list.txt", "test_list.txt")  # shipped beside it; no labels


class NihOptions(Options):
    kind: Literal["nih"] = "nih"
    preset: Literal["none", "seed003"] = Field(
        "none", description="seed003: seed 003's merges, AP/PA only, no 'No Finding', the 4 most frequent labels "
                            "undersampled to 4000; none: every image and label")
    seed: int = Field(0, description="undersampling seed")

    @property
    def recipe(self) -> "NihRecipe":
        return NihRecipe(**{**(SEED003 if self.preset == "seed003" else NihRecipe()).__dict__, "seed": self.seed})


@dataclass(frozen=True)
class NihRecipe:
    """What the reader does: the presets are recipes."""

    merges: dict[str, tuple[str, ...]] = field(default_factory=dict)  # new label -> NIH labels it replaces
    views: tuple[str, ...] | None = None  # keep only these View Positions (None: all)
    drop_no_finding: bool = False
    undersample_top: int = 0  # undersample this many most frequent labels...
    undersample_to: int = 0  # ...to at most this many images each
    seed: int = 0


SEED003 = NihRecipe(
    merges={"Nodule": ("Mass", "Nodule"), "Consolidation": ("Infiltration", "Consolidation", "Pneumonia")},
    views=("AP", "PA"), drop_no_finding=True, undersample_top=4, undersample_to=4000,  # ~20,000 images left
)


def _parse(path: Path, table: pd.DataFrame) -> np.ndarray:
    index = {n: k for k, n in enumerate(NIH_LABELS)}
    labels = np.zeros((len(table), len(NIH_LABELS)), np.float32)
    for i, value in enumerate(table["Finding Labels"]):
        for name in (n.strip() for n in value.split("|")):
            if name == NO_FINDING:
                continue
            if name not in index:
                raise DataPrepError(f"{path}: row {i + 2}: unknown finding {name!r}; expected {NO_FINDING!r} "
                                    f"or one of {list(NIH_LABELS)}")
            labels[i, index[name]] = 1
    return labels


def _merge(labels: pd.DataFrame, merges: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    for new, olds in merges.items():
        unknown = [o for o in olds if o not in NIH_LABELS]
        if unknown:
            raise DataPrepError(f"merge into {new!r}: {unknown} are not NIH labels; expected any of {list(NIH_LABELS)}")
    merged = labels.drop(columns=sorted({o for olds in merges.values() for o in olds}))
    for new, olds in merges.items():
        merged[new] = labels[list(olds)].max(axis=1)
    return merged[sorted(merged.columns)]


def undersample(labels: pd.DataFrame, top: int, to: int, seed: int) -> np.ndarray:
    """Boolean keep-mask: for each of the `top` most frequent labels in turn, drop random
    images carrying it until at most `to` remain. Dropping an image lowers its other labels too."""
    keep = np.ones(len(labels), bool)
    rng = np.random.default_rng(seed)
    for name in labels.sum().sort_values(ascending=False, kind="stable").index[:top]:
        carriers = np.flatnonzero(keep & (labels[name].to_numpy() == 1))
        if len(carriers) > to:
            keep[rng.choice(carriers, size=len(carriers) - to, replace=False)] = False
    return keep


def label_table(path: Path, options: NihOptions = NihOptions()) -> Path:
    """The Data_Entry table: the file given, the one in the folder given, or the one beside a file NIH ships
    with it (the box list, the split lists)."""
    if path.is_dir() or path.name in SIBLINGS:
        return one_table(path if path.is_dir() else path.parent, TABLES, "NIH")
    return path


def read_labels(path: Path, options: NihOptions = NihOptions()) -> LabelSet:
    return read_with_recipe(path, options.recipe)


def read_with_recipe(path: Path, options: NihRecipe = NihRecipe()) -> LabelSet:
    table = read_csv(path, COLUMNS)
    refuse_duplicates(path, table["Image Index"])
    labels = pd.DataFrame(_parse(path, table), columns=list(NIH_LABELS))
    stats = {"rows": len(table), "counts_raw": labels.sum().astype(int).to_dict()}
    steps = [label_step("as read", labels, list(labels.columns))]
    labels = _merge(labels, options.merges) if options.merges else labels
    stats["counts_merged"] = labels.sum().astype(int).to_dict()
    if options.merges:
        steps.append(label_step("labels merged", labels, list(labels.columns)))
    keep = np.ones(len(table), bool)
    if options.views is not None:
        keep &= table["View Position"].isin(options.views).to_numpy()
    if options.drop_no_finding:
        keep &= labels.to_numpy().max(axis=1) > 0
    stats["after_filters"] = int(keep.sum())
    if not keep.all():
        steps.append(label_step("views filtered" + (", No Finding dropped" if options.drop_no_finding else ""),
                                labels[keep], list(labels.columns)))
    if options.undersample_top:
        kept = labels[keep].reset_index(drop=True)
        keep[np.flatnonzero(keep)] = undersample(kept, options.undersample_top, options.undersample_to, options.seed)
        steps.append(label_step(f"{options.undersample_top} most frequent labels undersampled to "
                                f"{options.undersample_to}", labels[keep], list(labels.columns)))
    frame = pd.DataFrame({"csv_row": np.arange(len(table)) + 2, "file": table["Image Index"], "patient": table["Patient ID"],
                          "view": table["View Position"], "sex": sex_of(table.get("Patient Gender")),
                          "age": age_years(table.get("Patient Age"))})
    names = list(labels.columns)
    frame[names] = labels
    frame = frame[keep].reset_index(drop=True)
    stats.update(images=len(frame), counts_final=frame[names].sum().astype(int).to_dict(), steps=steps)
    return LabelSet(frame, names, stats)


OFFICIAL_LISTS = ("train_val_list.txt", "test_list.txt")  # NIH's own split, beside the label table


def official_split(path: Path, options: NihOptions) -> tuple[LabelSet, list[str]]:
    """(labels with an `official` column, test or train; the files the split comes from): NIH's `test_list.txt`
    is the test set, `train_val_list.txt` the rest; an image in neither list is an error (the lists cover
    every image of the release)."""
    label_set = read_labels(path, options)
    frame = label_set.frame
    lists = [_listed(path.parent / name) for name in OFFICIAL_LISTS]
    test = frame["file"].isin(lists[1]).to_numpy()
    neither = ~(test | frame["file"].isin(lists[0]).to_numpy())
    if neither.any():
        rows = [int(r) for r in frame["csv_row"][neither][:3]]
        raise DataPrepError(f"{path}: {int(neither.sum())} image(s) are in neither {OFFICIAL_LISTS[0]} nor "
                            f"{OFFICIAL_LISTS[1]} (rows {rows}); expected NIH's own lists beside the table")
    frame["official"] = np.where(test, "test", "train")
    return label_set, list(OFFICIAL_LISTS)


def _listed(path: Path) -> set[str]:
    if not path.is_file():
        raise DataPrepError(f"{path.parent}: no {path.name}; the official split needs NIH's {OFFICIAL_LISTS[0]} and "
                            f"{OFFICIAL_LISTS[1]} beside the label table (both ship with the data set)")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


KIND = SourceKind(
    name="nih", title="NIH ChestX-ray14, PNG", options=NihOptions, label_table=label_table, read_labels=read_labels,
    table_help="Data_Entry_2017*.csv, or the folder you downloaded", key_parts=1,  # file names are unique
    likely_cause="NIH ships its images in 12 archives (images_001 ... images_012): extract them all under one folder",
    official_split=official_split, official_help=OFFICIAL_LISTS[1], public_paths=True)
