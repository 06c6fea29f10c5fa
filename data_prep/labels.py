"""`python -m data_prep.labels KIND CSV --out labels.csv`: a prepared data set's labels.csv from a source's
label table alone (no images), with keyed pseudonyms; raw IDs never leave data_prep."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError
from data_prep.labelset import LabelSet
from data_prep.sources import KINDS, add_cli_options, kind_help, label_table, options_from_args, read_labels, table_help
from data_prep.table_layout import METADATA, columns
from vocab.errors import exits_on_error


def prepared_labels(label_set: LabelSet, pseudonym) -> pd.DataFrame:
    """The labels.csv of a prepared data set (data_prep.table_layout, without the source size: no image is
    read): keys, metadata, labels (NaN = masked)."""
    frame = label_set.frame
    if (frame["patient"] == "").any():
        row = frame["csv_row"][frame["patient"] == ""].iloc[0]
        raise DataPrepError(f"row {row}: no patient; add a 'patient' column or pass the DICOM folder "
                            f"(--dicom-dir) so the PatientID can be read")
    out = pd.DataFrame({"image_key": [pseudonym("image", f) for f in frame["file"]],
                        "patient_key": [pseudonym("patient", p) for p in frame["patient"]],
                        **{column: frame[column] for column in METADATA}})
    out[label_set.names] = frame[label_set.names].to_numpy()
    return out[columns(label_set.names, source_size=False)]


def _patients_from_dicom(label_set: LabelSet, dicom_dir: Path) -> None:
    """Fill missing patients from the DICOM headers (pixels are not read)."""
    import pydicom

    named_by = label_set.stats.get("images_named_by", "file")
    if named_by != "file":
        raise DataPrepError(f"--dicom-dir reads PatientIDs from the paths in a 'file' column; this table names its "
                            f"images by {named_by!r}: build it with python -m data_prep.build, which finds them by "
                            f"their headers")

    for i in np.flatnonzero(label_set.frame["patient"] == ""):
        path = dicom_dir / label_set.frame.at[i, "file"]
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception as exc:  # pydicom raises many types for unreadable files
            raise DataPrepError(f"{path}: cannot read the PatientID ({type(exc).__name__}: {exc})") from exc
        label_set.frame.at[i, "patient"] = str(ds.get("PatientID", "")).strip()


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    from data_prep.pseudonym import Pseudonymizer, load_or_create_key

    parser = argparse.ArgumentParser(prog="python -m data_prep.labels",
                                     description="Write a prepared data set's labels.csv from a source's label table "
                                                 "(no images needed).")
    parser.add_argument("kind", choices=KINDS, help=kind_help())
    parser.add_argument("csv", type=Path,
                        help=f"the source's label table, as data_prep.build's --labels: {table_help()}")
    parser.add_argument("--out", type=Path, required=True, help="labels.csv to write")
    parser.add_argument("--dicom-dir", type=Path, help="target: read PatientIDs from these DICOM files")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")
    add_cli_options(parser)
    args = parser.parse_args(argv)
    options = options_from_args(args.kind, args, parser, seed=args.seed)
    table = label_table(args.csv, options)
    label_set = read_labels(table, options)
    if args.kind == "target" and args.dicom_dir:
        _patients_from_dicom(label_set, args.dicom_dir)
    out = prepared_labels(label_set, Pseudonymizer(load_or_create_key()))
    out.to_csv(args.out, index=False, float_format="%g")  # masked (NaN) -> empty
    print(f"wrote {args.out} from {table}: {len(out)} images, {out['patient_key'].nunique()} patients, "
          f"labels {label_set.names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
