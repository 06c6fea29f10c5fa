"""The target (a hospital's films, seed 000): a CSV that names each image by one column, and either
`findings` ('|'-separated sub-categories, grouped into categories by a mapping, see data_prep/mappings/)
or 0/1 label columns; optional `patient`, `view`, `sex` and `age` columns.

Each image is named by exactly one of (NAMED_BY):
- `file`: its path relative to `--images` (nested folders and files without a suffix are fine), or,
  where `--images` holds a DICOMDIR, the Referenced File ID it lists (`IMAGES\\IM0001`);
- `sop_instance_uid`: the SOP Instance UID in its header;
- `accession_number`: the Accession Number in the header of every image of a study: the row's labels
  go to every image of the study (each a row of labels.csv, like MIMIC's study labels), so a table
  whose labels belong to one image of a study names that image by `sop_instance_uid`.
UIDs and accession numbers are found by reading the header of every DICOM file under `--images` once
(data_prep.locate.find_by_header); they are pseudonymised like paths and never written or shown.

Where the table has no `patient`, `view`, `sex` or `age` value for a row, the DICOM header's is used
(PatientID; ViewPosition; PatientSex; PatientAge, or the age from PatientBirthDate and the exam's date):
a value in the table wins over the header's.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from data_prep.errors import DataPrepError
from data_prep.labelset import LabelSet, age_years, label_step, read_csv, refuse_duplicates, sex_of
from data_prep.sources.options import Options
from data_prep.sources.kind import SourceKind

NORMAL = "normal"
DEFAULT_TARGET_MAPPING = "seed000_target"
METADATA = ("patient", "view", "sex", "age")  # columns that are not labels
NAMED_BY = {  # a column that names each image: what it holds
    "file": "its path relative to --images, or a DICOMDIR's Referenced File ID",
    "sop_instance_uid": "the SOP Instance UID in its header",
    "accession_number": "the Accession Number of its study, for every image of the study",
}


class TargetOptions(Options):
    kind: Literal["target"] = "target"
    mapping: str = Field(DEFAULT_TARGET_MAPPING, description="finding mapping: a shipped name or a .toml path; "
                                                            "'none': the findings seen are the labels")
    discarded_only: Literal["drop", "normal"] = Field(
        "drop", description="an image whose only findings are discarded classes is dropped, or kept as normal")


def label_table(path: Path, options: TargetOptions = TargetOptions()) -> Path:
    """The file given: a hospital's table has no published name to find it by in a folder."""
    if path.is_dir():
        raise DataPrepError(f"{path} is a folder; a target's label table is your CSV naming each image by one "
                            f"column ({', '.join(NAMED_BY)}) with `findings` or 0/1 label columns: give that file")
    return path


def read_labels(path: Path, options: TargetOptions = TargetOptions()) -> LabelSet:
    return read_target_labels(path, None if options.mapping == "none" else load_mapping(options.mapping),
                              options.discarded_only)


@dataclass(frozen=True)
class TargetMapping:
    """Sub-category -> category, from a TOML file (see data_prep/mappings/)."""

    categories: dict[str, list[str]]
    discard: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [c for c in self.categories if c not in self.discard]

    def lookup(self) -> dict[str, str]:
        table = {}
        for category, subs in self.categories.items():
            for name in [category, *subs]:
                table[_norm(name)] = category
        return table


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def load_mapping(name_or_path: str | Path) -> TargetMapping:
    """A shipped mapping by name (e.g. 'seed000_target') or a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        shipped = resources.files("data_prep.mappings").joinpath(f"{name_or_path}.toml")
        if not shipped.is_file():
            raise DataPrepError(f"no mapping named {name_or_path!r}; shipped: {DEFAULT_TARGET_MAPPING}, or a .toml path")
        text, origin = shipped.read_text(), f"mapping {name_or_path}"
    else:
        if not path.is_file():
            raise DataPrepError(f"mapping file {path} does not exist")
        text, origin = path.read_text(encoding="utf-8"), str(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataPrepError(f"{origin}: not valid TOML: {exc}") from exc
    unknown = set(raw) - {"categories", "discard"}
    if unknown or not isinstance(raw.get("categories"), dict):
        raise DataPrepError(f"{origin}: expected a [categories] table and an optional discard list; "
                            f"unknown keys {sorted(unknown)}")
    discard = tuple(raw.get("discard", []))
    missing = [d for d in discard if d not in raw["categories"]]
    if missing:
        raise DataPrepError(f"{origin}: discard lists {missing}, which are not categories")
    return TargetMapping({k: list(v) for k, v in raw["categories"].items()}, discard)


def read_target_labels(path: Path, mapping: TargetMapping | None = None, discarded_only: str = "drop") -> LabelSet:
    """Target CSV: `file`, `sop_instance_uid` or `accession_number` (NAMED_BY), `findings` ('|'-separated,
    mapped through `mapping`) or 0/1 columns, optional `patient`, `view`, `sex`, `age`. Without a mapping,
    the label names are every finding seen. The frame's `file` holds the naming column's values; stats'
    `images_named_by` names that column where it is not `file`."""
    table = read_csv(path, [])
    named_by = _named_by(path, table)
    if named_by == "file":
        refuse_duplicates(path, table["file"])
    else:
        table[named_by] = _identifiers(path, table[named_by])
    steps = []
    if "findings" in table.columns:
        labels, names, dropped, raw = _map_findings(path, table["findings"], mapping, discarded_only)
        steps += [{"step": "findings as read", "images": len(table), "positives": raw},
                  label_step("grouped into categories", labels, names)]
    else:
        names = mapping.names if mapping else [c for c in table.columns if c not in (*NAMED_BY, *METADATA)]
        labels, dropped = _from_columns(path, table, names), np.zeros(len(table), bool)
        steps.append(label_step("as read", labels, names))
    if dropped.any():
        steps.append(label_step("images whose only findings are discarded, dropped", labels[~dropped], names))
    frame = pd.DataFrame({"csv_row": np.arange(len(table)) + 2, "file": table[named_by],
                          "patient": table.get("patient", ""), "view": table.get("view", ""),
                          "sex": sex_of(table.get("sex")), "age": age_years(table.get("age"))})
    frame[names] = labels
    frame = frame[~dropped].reset_index(drop=True)
    stats = {"rows": len(table), "dropped_only_discarded": int(dropped.sum()),
             "mapping": asdict(mapping) if mapping else None, "steps": steps}
    if named_by != "file":  # only then, so that data sets named by path keep their ids
        stats["images_named_by"] = named_by
    return LabelSet(frame, names, stats)


def _named_by(path: Path, table: pd.DataFrame) -> str:
    """The one column that names each image."""
    given = [c for c in NAMED_BY if c in table.columns]
    if len(given) == 1:
        return given[0]
    what = "; ".join(f"{c}: {meaning}" for c, meaning in NAMED_BY.items())
    if not given:
        raise DataPrepError(f"{path}: missing column(s) ['file']: name each image by one column ({what}); "
                            f"columns are {list(table.columns)}")
    raise DataPrepError(f"{path}: columns {given} each name the images; keep one ({what})")


def _identifiers(path: Path, values: pd.Series) -> pd.Series:
    """UIDs or accession numbers, stripped; an empty or repeated one is refused by row, never shown (an
    identifier must not reach a log)."""
    values = values.str.strip(" \0")
    for problem, rows in (("is empty", values == ""), ("repeats an earlier row's value", values.duplicated())):
        if rows.any():
            shown = [int(i) + 2 for i in np.flatnonzero(rows)][:10]
            raise DataPrepError(f"{path}: column {values.name!r} {problem} at rows {shown} (row 1 is the header); "
                                "each row names one image (or, by accession_number, one study)")
    return values


def _map_findings(path, findings: pd.Series, mapping: TargetMapping | None, discarded_only: str):
    if discarded_only not in ("drop", "normal"):
        raise DataPrepError(f"discarded_only={discarded_only!r}; expected 'drop' or 'normal'")
    parsed = [[n for n in (p.strip() for p in str(v).split("|")) if n] for v in findings]
    if mapping is None:
        seen = sorted({n for row in parsed for n in row if _norm(n) != NORMAL})
        mapping = TargetMapping({n: [] for n in seen})
    lookup, names = mapping.lookup(), mapping.names
    labels = np.zeros((len(parsed), len(names)), np.float32)
    dropped = np.zeros(len(parsed), bool)
    raw: dict[str, int] = {}  # images per finding as written (lower case), before grouping
    column = {n: k for k, n in enumerate(names)}
    for i, row in enumerate(parsed):
        if not row:
            raise DataPrepError(f"{path}: row {i + 2}: empty findings; write 'normal' for an image with none")
        categories = set()
        for name in row:
            if _norm(name) == NORMAL:
                continue
            if _norm(name) not in lookup:
                raise DataPrepError(f"{path}: row {i + 2}: unknown finding {name!r}; expected 'normal' or one of "
                                    f"{sorted(lookup)}")
            categories.add(lookup[_norm(name)])
        for name in {_norm(n) for n in row} - {NORMAL}:
            raw[name] = raw.get(name, 0) + 1
        kept = [c for c in categories if c in column]
        labels[i, [column[c] for c in kept]] = 1
        dropped[i] = bool(categories) and not kept and discarded_only == "drop"
    return labels, names, dropped, dict(sorted(raw.items()))


def _from_columns(path, table: pd.DataFrame, names: list[str]) -> np.ndarray:
    missing = [n for n in names if n not in table.columns]
    if missing or not names:
        raise DataPrepError(f"{path}: label columns {missing or names} missing; columns are {list(table.columns)}")
    values = table[names]
    bad = ~values.isin(["0", "1", ""])
    if bad.any().any():
        i, j = np.argwhere(bad.to_numpy())[0]
        raise DataPrepError(f"{path}: row {i + 2}, column {names[j]!r}: {values.iat[i, j]!r}; expected 0, 1 or empty")
    return values.replace("", np.nan).to_numpy().astype(np.float32)


KIND = SourceKind(
    name="target", title="a hospital's DICOM films", options=TargetOptions, label_table=label_table,
    read_labels=read_labels, key_parts=0,
    table_help=f"your CSV naming each image by one column ({', '.join(NAMED_BY)}) with `findings` or 0/1 label "
               "columns",
    likely_cause="the label table's paths are relative to --images: check that folder and that every archive is "
                 "extracted")
