"""A toy scanner's export: `toy.tsv` (tab-separated: picture, subject, Spots, Stripes, part) beside the PNG
films it lists under `scans/`. A label is 1, 0 or ? (uncertain, which follows the uncertainty policy); `part`
(train or test) is the export's own split. The one module a new source kind needs (docs/design.md §5)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from data_prep.errors import DataPrepError
from data_prep.labelset import LabelSet, label_step, read_csv, refuse_duplicates
from data_prep.sources.kind import SourceKind
from data_prep.sources.options import Options, Policy
from data_prep.sources.tables import one_table

LABELS = ("Spots", "Stripes")
UNCERTAIN = {"u_ignore": np.nan, "u_zeros": 0.0, "u_ones": 1.0, "u_mixed": 1.0}  # what "?" becomes
TABLES = (("toy.tsv",),)


class ToyOptions(Options):
    kind: Literal["toy"] = "toy"
    policy: Policy = Field("u_ones", description="what an uncertain (?) label becomes")
    spots_only: bool = Field(False, description="the Spots label only")


def label_table(path: Path, options: ToyOptions = ToyOptions()) -> Path:
    """The file given, or the export folder's toy.tsv."""
    return one_table(path, TABLES, "toy") if path.is_dir() else path


def _values(path: Path, column: pd.Series, policy: str) -> np.ndarray:
    known = {"1": 1.0, "0": 0.0, "?": UNCERTAIN[policy]}
    bad = ~column.str.strip().isin(known)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataPrepError(f"{path}: row {row + 2}, column {column.name!r}: {column.iloc[row]!r}; expected 1, 0 or ?")
    return column.str.strip().map(known).to_numpy(np.float32)


def read_labels(path: Path, options: ToyOptions = ToyOptions()) -> LabelSet:
    table = read_csv(path, ["picture", "subject", *LABELS], sep="\t")
    refuse_duplicates(path, table["picture"])
    names = ["Spots"] if options.spots_only else list(LABELS)
    frame = pd.DataFrame({"csv_row": np.arange(len(table)) + 2, "file": table["picture"],
                          "patient": table["subject"], "view": "", "sex": "", "age": ""})
    for name in names:
        frame[name] = _values(path, table[name], options.policy)
    stats = {"rows": len(table), "policy": options.policy, "steps": [label_step("as read", frame[names], names)]}
    return LabelSet(frame, names, stats)


def official_split(path: Path, options: ToyOptions) -> tuple[LabelSet, list[str]]:
    """The export's own split: its `part` column, in the label table itself (no other file)."""
    label_set = read_labels(path, options)
    part = read_csv(path, ["part"], sep="\t")["part"].str.strip()
    if not part.isin(["train", "test"]).all():
        row = int(np.flatnonzero(~part.isin(["train", "test"]))[0]) + 2
        raise DataPrepError(f"{path}: row {row}, column 'part': {part.iloc[row - 2]!r}; expected train or test")
    label_set.frame["official"] = part.to_numpy()
    return label_set, []


KIND = SourceKind(
    name="toy", title="a toy scanner's PNG export", options=ToyOptions, label_table=label_table,
    read_labels=read_labels, table_help="toy.tsv, or the export folder", key_parts=1,  # file names are unique
    likely_cause="the toy scanner exports its films in batches: copy every batch under one folder",
    official_split=official_split, official_help="toy.tsv's test part")
