"""Label tables of the three source kinds, in one shape, and `python -m data_prep.labels`.

Every reader returns a LabelSet: a frame with `csv_row` (the row in the source CSV), `file` (path relative to the image root),
`patient` (raw ID, '' if it must come from the DICOM header), `view` ('' if unknown) and
one float column per label (1, 0, or NaN = masked: unknown for this image), plus the
label names and counts for the manifest. Raw IDs never leave data_prep: the CLI and the
builder write keyed pseudonyms only.
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError

NORMAL = "normal"
DEFAULT_TARGET_MAPPING = "seed000_target"


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
    """Target CSV: `file`, `findings` ('|'-separated, mapped through `mapping`) or 0/1 columns,
    optional `patient`. Without a mapping, the label names are every finding seen."""
    table = read_csv(path, ["file"])
    refuse_duplicates(path, table["file"])
    steps = []
    if "findings" in table.columns:
        labels, names, dropped, raw = _map_findings(path, table["findings"], mapping, discarded_only)
        steps += [{"step": "findings as read", "images": len(table), "positives": raw},
                  label_step("grouped into categories", labels, names)]
    else:
        names = mapping.names if mapping else [c for c in table.columns if c not in ("file", "patient", "view")]
        labels, dropped = _from_columns(path, table, names), np.zeros(len(table), bool)
        steps.append(label_step("as read", labels, names))
    if dropped.any():
        steps.append(label_step("images whose only findings are discarded, dropped", labels[~dropped], names))
    frame = pd.DataFrame({"csv_row": np.arange(len(table)) + 2, "file": table["file"],
                          "patient": table.get("patient", ""), "view": table.get("view", "")})
    frame[names] = labels
    frame = frame[~dropped].reset_index(drop=True)
    stats = {"rows": len(table), "dropped_only_discarded": int(dropped.sum()),
             "mapping": asdict(mapping) if mapping else None, "steps": steps}
    return LabelSet(frame, names, stats)


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


def prepared_labels(label_set: LabelSet, pseudonym) -> pd.DataFrame:
    """The labels.csv of a prepared data set: image_key, patient_key, view, labels (NaN = masked)."""
    frame = label_set.frame
    if (frame["patient"] == "").any():
        row = frame["csv_row"][frame["patient"] == ""].iloc[0]
        raise DataPrepError(f"row {row}: no patient; add a 'patient' column or pass the DICOM folder "
                            f"(--dicom-dir) so the PatientID can be read")
    out = pd.DataFrame({"image_key": [pseudonym("image", f) for f in frame["file"]],
                        "patient_key": [pseudonym("patient", p) for p in frame["patient"]],
                        "view": frame["view"]})
    out[label_set.names] = frame[label_set.names].to_numpy()
    return out


def _patients_from_dicom(label_set: LabelSet, dicom_dir: Path) -> None:
    """Fill missing patients from the DICOM headers (pixels are not read)."""
    import pydicom

    for i in np.flatnonzero(label_set.frame["patient"] == ""):
        path = dicom_dir / label_set.frame.at[i, "file"]
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception as exc:  # pydicom raises many types for unreadable files
            raise DataPrepError(f"{path}: cannot read the PatientID ({type(exc).__name__}: {exc})") from exc
        label_set.frame.at[i, "patient"] = str(ds.get("PatientID", "")).strip()


KINDS = ("target", "nih", "chexpert")


@dataclass(frozen=True)
class SourceOptions:
    """How a source's label table is read; `hashed()` is what the content address sees."""

    kind: str = "target"
    mapping: str | None = DEFAULT_TARGET_MAPPING  # target; None: the findings seen are the labels
    discarded_only: str = "drop"  # target
    nih_preset: str = "seed003"  # nih: "seed003" or "none"
    policy: str = "u_ones"  # chexpert
    blank: str = "negative"  # chexpert
    all_labels: bool = False  # chexpert
    frontal_only: bool = False  # chexpert
    seed: int = 0  # nih undersampling

    FIELDS = {"target": ("mapping", "discarded_only"), "nih": ("nih_preset", "seed"),
              "chexpert": ("policy", "blank", "all_labels", "frontal_only")}

    def hashed(self) -> dict:
        if self.kind not in KINDS:
            raise DataPrepError(f"source kind {self.kind!r}; expected one of {KINDS}")
        return {"kind": self.kind, **{f: getattr(self, f) for f in self.FIELDS[self.kind]}}

    @classmethod
    def from_args(cls, kind: str, args: argparse.Namespace) -> "SourceOptions":
        return cls(kind=kind, mapping=None if args.mapping == "none" else args.mapping,
                   discarded_only=args.discarded_only, nih_preset=args.preset, policy=args.policy,
                   blank=args.blank, all_labels=args.all_labels, frontal_only=args.frontal_only, seed=args.seed)


def read_labels(csv_path: Path, options: SourceOptions) -> LabelSet:
    """The label table of any source kind."""
    from data_prep.chexpert import ALL_LABELS, COMPETITION, ChexpertOptions, read_chexpert_labels
    from data_prep.nih import SEED003, NihOptions, read_nih_labels

    options.hashed()  # validates the kind
    if options.kind == "target":
        mapping = load_mapping(options.mapping) if options.mapping else None
        return read_target_labels(csv_path, mapping, options.discarded_only)
    if options.kind == "nih":
        if options.nih_preset not in ("seed003", "none"):
            raise DataPrepError(f"NIH preset {options.nih_preset!r}; expected 'seed003' or 'none'")
        preset = SEED003 if options.nih_preset == "seed003" else NihOptions()
        return read_nih_labels(csv_path, NihOptions(**{**preset.__dict__, "seed": options.seed}))
    return read_chexpert_labels(csv_path, ChexpertOptions(
        policy=options.policy, labels=ALL_LABELS[1:] if options.all_labels else COMPETITION,
        blank=options.blank, frontal_only=options.frontal_only))


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """Options of every source kind (used by `labels` and `build`)."""
    parser.add_argument("--mapping", default=DEFAULT_TARGET_MAPPING,
                        help=f"target: finding mapping, shipped name or .toml (default {DEFAULT_TARGET_MAPPING}); "
                             "'none': the findings seen are the labels")
    parser.add_argument("--discarded-only", choices=("drop", "normal"), default="drop",
                        help="target: an image whose only findings are discarded classes is dropped (default) "
                             "or kept as normal")
    parser.add_argument("--preset", choices=("seed003", "none"), default="seed003",
                        help="nih: seed 003's merges, AP/PA only, no 'No Finding', top-4 undersampled to 4000 "
                             "(default), or none of these")
    parser.add_argument("--policy", choices=("u_ignore", "u_zeros", "u_ones", "u_mixed"), default="u_ones",
                        help="chexpert: what an uncertain (-1) label becomes (default u_ones)")
    parser.add_argument("--blank", choices=("negative", "mask"), default="negative",
                        help="chexpert: what a blank (unmentioned) label becomes (default negative)")
    parser.add_argument("--all-labels", action="store_true", help="chexpert: all 13 findings, not the 5 competition ones")
    parser.add_argument("--frontal-only", action="store_true", help="chexpert: drop lateral views")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")


def main(argv: list[str] | None = None) -> int:
    from data_prep.pseudonym import Pseudonymizer, load_or_create_key

    parser = argparse.ArgumentParser(prog="python -m data_prep.labels",
                                     description="Write a prepared data set's labels.csv from a source's label table "
                                                 "(no images needed).")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("csv", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="labels.csv to write")
    parser.add_argument("--dicom-dir", type=Path, help="target: read PatientIDs from these DICOM files")
    add_source_options(parser)
    args = parser.parse_args(argv)
    try:
        label_set = read_labels(args.csv, SourceOptions.from_args(args.kind, args))
        if args.kind == "target" and args.dicom_dir:
            _patients_from_dicom(label_set, args.dicom_dir)
        out = prepared_labels(label_set, Pseudonymizer(load_or_create_key()))
    except DataPrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.to_csv(args.out, index=False, float_format="%g")  # masked (NaN) -> empty
    print(f"wrote {args.out}: {len(out)} images, {out['patient_key'].nunique()} patients, labels {label_set.names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
