"""The label table as users name it (issue 28): the documented two steps, `python -m data_prep.labels KIND
TABLE` then `python -m data_prep.folds`, on every source kind; `--labels` given the downloaded folder or, for
MIMIC-CXR-JPG, any table of the download; and the same prepared set whichever way the table was named."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import build as build_cli
from data_prep import folds as folds_cli
from data_prep import labels as labels_cli
from data_prep.folds import holdout_split, patient_folds
from data_prep.labelset import file_sha256
from data_prep.sources import read_labels, source_options
from tests.data_prep.test_layouts import _chexpert, _nih, nih_rows  # noqa: F401 - nih_rows is a fixture
from tests.data_prep.test_mimic import write_mimic

LAYOUT = ["image_key", "patient_key", "view", "sex", "age"]  # a labels.csv's columns before its labels


@pytest.fixture(scope="module")
def downloads(tmp_path_factory, nih_rows, phantom_dir) -> Path:  # noqa: F811
    """A folder of downloads as they unpack: NIH (Kaggle's, with its box and split lists), CheXpert (the
    original small zip, and the AIMI release), MIMIC-CXR-JPG (metadata, both labelers' and the split tables),
    and a hospital's target table with sex and age columns (docs/data-sets.md), its films in phantom_dir."""
    root = tmp_path_factory.mktemp("downloads")
    _nih(root / "nih", nih_rows, "kaggle")
    _chexpert(root / "chexpert", "small")
    _chexpert(root / "aimi", "aimi")
    (root / "mimic").mkdir()
    write_mimic(root / "mimic", n_subjects=12)
    target = pd.read_csv(phantom_dir / "labels.csv", dtype=str)
    target["sex"] = np.where(np.arange(len(target)) % 2, "M", "F")
    target["age"] = [str(40 + i % 55) for i in range(len(target))]
    target.to_csv(root / "target.csv", index=False)
    return root


@pytest.fixture(scope="module")
def mimic(downloads) -> Path:
    return downloads / "mimic"


# (kind, how the table is named, the file that must be read, options)
NAMED = [
    ("target", "target.csv", "target.csv", ["--dicom-dir", "DICOM_DIR"]),
    ("nih", "nih/Data_Entry_2017_v2020.csv", "nih/Data_Entry_2017_v2020.csv", ["--preset", "seed003"]),
    ("nih", "nih", "nih/Data_Entry_2017_v2020.csv", ["--preset", "seed003"]),
    ("nih", "nih/BBox_List_2017.csv", "nih/Data_Entry_2017_v2020.csv", []),
    ("chexpert", "chexpert/CheXpert-v1.0-small/train.csv", "chexpert/CheXpert-v1.0-small/train.csv",
     ["--policy", "u_ignore"]),
    ("chexpert", "chexpert", "chexpert/CheXpert-v1.0-small/train.csv", ["--policy", "u_ignore"]),
    ("chexpert", "chexpert/CheXpert-v1.0-small", "chexpert/CheXpert-v1.0-small/train.csv", []),
    ("chexpert", "aimi", "aimi/train_cheXbert.csv", []),
    ("mimic", "mimic/mimic-cxr-2.0.0-metadata.csv.gz", "mimic/mimic-cxr-2.0.0-metadata.csv.gz", ["--policy", "u_ignore"]),
    ("mimic", "mimic", "mimic/mimic-cxr-2.0.0-metadata.csv.gz", ["--policy", "u_ignore"]),
    ("mimic", "mimic/mimic-cxr-2.0.0-chexpert.csv.gz", "mimic/mimic-cxr-2.0.0-metadata.csv.gz", []),
    ("mimic", "mimic/mimic-cxr-2.0.0-split.csv.gz", "mimic/mimic-cxr-2.0.0-metadata.csv.gz", []),
    ("mimic", "mimic/mimic-cxr-2.0.0-negbio.csv.gz", "mimic/mimic-cxr-2.0.0-metadata.csv.gz", ["--labeler", "negbio"]),
]


def _options(kind: str, flags: list[str]):
    values = dict(zip((f.removeprefix("--") for f in flags[::2]), flags[1::2]))
    values.pop("dicom-dir", None)
    return source_options(kind, values)


@pytest.mark.parametrize("kind, named, read, flags", NAMED, ids=[f"{k}-{n}" for k, n, _, _ in NAMED])
def test_labels_then_folds_on_every_source_kind_however_the_table_is_named(tmp_path, downloads, phantom_dir, kind,
                                                                           named, read, flags, capsys):
    flags = [str(phantom_dir) if f == "DICOM_DIR" else f for f in flags]
    labels_csv, folds_csv = tmp_path / "labels.csv", tmp_path / "folds.csv"
    assert labels_cli.main([kind, str(downloads / named), "--out", str(labels_csv), *flags]) == 0
    assert folds_cli.main(["--labels", str(labels_csv), "--folds", "3", "--seed", "0", "--out", str(folds_csv)]) == 0, \
        capsys.readouterr().err
    table = pd.read_csv(labels_csv, dtype={c: str for c in LAYOUT}, keep_default_na=False, na_values={})
    names = read_labels(downloads / read, _options(kind, flags)).names  # as read from the table meant
    assert list(table.columns) == [*LAYOUT, *names]
    values = table[names].replace("", np.nan).to_numpy(np.float32)
    folds = pd.read_csv(folds_csv, dtype={"image_key": str})
    assert folds["image_key"].tolist() == table["image_key"].tolist()
    np.testing.assert_array_equal(folds["fold"], patient_folds(table["patient_key"], values, 3, 0))  # labels only
    assert folds.groupby(table["patient_key"])["fold"].nunique().max() == 1
    if kind == "target":
        assert set(table["sex"]) == {"M", "F"}  # the columns the fold code once read as labels


def test_the_holdout_split_on_a_table_with_sex_and_age(tmp_path, downloads):
    labels_csv, split_csv = tmp_path / "labels.csv", tmp_path / "split.csv"
    assert labels_cli.main(["chexpert", str(downloads / "chexpert"), "--out", str(labels_csv)]) == 0
    assert folds_cli.main(["--labels", str(labels_csv), "--holdout", "60/20/20", "--out", str(split_csv)]) == 0
    table = pd.read_csv(labels_csv, dtype={c: str for c in LAYOUT})
    assert {"F", "M"} <= set(table["sex"])
    expected = holdout_split(table["patient_key"], table[table.columns[len(LAYOUT):]].to_numpy(np.float32), (0.6, 0.2, 0.2), 0)
    assert pd.read_csv(split_csv)["split"].tolist() == expected.tolist()


def test_a_label_column_that_is_not_a_number_is_named(tmp_path, capsys):
    path = tmp_path / "labels.csv"
    path.write_text("image_key,patient_key,view,sex,age,Edema,notes\na,p,PA,M,90+,1,\nb,q,AP,F,41,0,seen twice\n")
    assert folds_cli.main(["--labels", str(path), "--folds", "2", "--out", str(tmp_path / "folds.csv")]) == 2
    assert capsys.readouterr().err == (f"error: {path}: row 3, column 'notes': 'seen twice'; expected 1, 0 or empty "
                                       f"(every column but ['image_key', 'patient_key', 'view', 'sex', 'age', "
                                       f"'source_height', 'source_width'] is a label)\n")


def _copy(download: Path, to: Path, names: list[str]) -> Path:
    to.mkdir()
    for name in names:
        shutil.copy(download / name, to / name)
    return to


META, CHEXPERT, NEGBIO, SPLIT = (f"mimic-cxr-2.0.0-{t}.csv.gz" for t in ("metadata", "chexpert", "negbio", "split"))


@pytest.mark.parametrize("case, expected", [
    ("target folder", "is a folder; a target's label table is your CSV naming each image by one column (file, "
                      "sop_instance_uid, accession_number) with `findings` or 0/1 label columns: give that file"),
    ("nih both tables", "2 NIH label tables (Data_Entry_2017.csv, Data_Entry_2017_v2020.csv); give the one to build "
                        "from as the label table"),
    ("nih no table", "no NIH label table in this folder; expected Data_Entry_2017_v2020.csv or Data_Entry_2017.csv, "
                     "or give the table itself"),
    ("chexpert two copies", "2 CheXpert label tables (CheXpert-v1.0/train.csv, CheXpert-v1.0-small/train.csv)"),
    ("mimic other labeler", f"{NEGBIO} holds the negbio labeler's labels, but the labeler is 'chexpert'; pass "
                            f"--labeler negbio (in a spec: labeler = \"negbio\" under [data.prepare.NAME]) to use "
                            f"them, or give the folder or {META} to use the chexpert labeler's"),
    ("mimic labeler table alone", f"{CHEXPERT} is MIMIC-CXR-JPG's table of the CheXpert labeler's study labels; the "
                                  f"images and their views come from {META} beside it: "),
    ("mimic metadata twice", "2 MIMIC-CXR-JPG metadata label tables (mimic-cxr-2.0.0-metadata.csv, "
                             f"{META})"),
])
def test_a_table_that_cannot_be_found_or_is_not_meant_stops_with_what_to_give(tmp_path, downloads, phantom_dir,
                                                                               capsys, case, expected):
    nih, mimic = downloads / "nih", downloads / "mimic"
    kind, given = {
        "target folder": lambda: ("target", phantom_dir),
        "nih both tables": lambda: ("nih", _copy(nih, tmp_path / "nih", ["Data_Entry_2017_v2020.csv"])),
        "nih no table": lambda: ("nih", _copy(nih, tmp_path / "nih", ["test_list.txt"])),
        "chexpert two copies": lambda: ("chexpert", tmp_path / "chexpert"),
        "mimic other labeler": lambda: ("mimic", mimic / NEGBIO),
        "mimic labeler table alone": lambda: ("mimic", _copy(mimic, tmp_path / "m", [CHEXPERT]) / CHEXPERT),
        "mimic metadata twice": lambda: ("mimic", _copy(mimic, tmp_path / "m", [META, CHEXPERT])),
    }[case]()
    if case == "nih both tables":
        shutil.copy(given / "Data_Entry_2017_v2020.csv", given / "Data_Entry_2017.csv")
    if case == "chexpert two copies":
        _chexpert(given, "small")
        _chexpert(given, "full")
    if case == "mimic metadata twice":
        pd.read_csv(given / META).to_csv(given / "mimic-cxr-2.0.0-metadata.csv", index=False)
    out = tmp_path / "out"
    assert labels_cli.main([kind, "--labels", str(given), "--out", str(out / "labels.csv")]) == 2
    assert build_cli.main([kind, "--images", str(given if given.is_dir() else given.parent), "--labels", str(given),
                           "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") and expected in line for line in err), err
    assert not out.exists()


BUILD = ["--size", "16", "--folds", "2", "--near-duplicates", "off", "--workers", "1"]


def _build(kind: str, images: Path, labels: Path, out: Path, capsys, *flags: str) -> Path:
    assert build_cli.main([kind, "--images", str(images), "--labels", str(labels), "--out", str(out), *BUILD,
                           *flags]) == 0, capsys.readouterr().err
    return Path(capsys.readouterr().out.splitlines()[-1])


def test_mimic_builds_the_same_set_from_the_folder_the_metadata_or_the_labelers_table(tmp_path, mimic, capsys):
    built = {_build("mimic", mimic, mimic / name, tmp_path / "prepared", capsys) for name in ("", META, CHEXPERT, SPLIT)}
    assert len(built) == 1
    chexpert = built.pop()
    manifest = json.loads((chexpert / "manifest.json").read_text())
    assert manifest["inputs"]["labels_csv"] == file_sha256(mimic / META)  # the table hashed is the one read
    assert manifest["label_stats"]["labeler_table_sha256"] == file_sha256(mimic / CHEXPERT)
    negbio = {_build("mimic", mimic, mimic / name, tmp_path / "prepared", capsys, "--labeler", "negbio")
              for name in (NEGBIO, META)}
    assert len(negbio) == 1 and negbio != {chexpert}


def test_nih_builds_the_same_set_from_the_folder_or_its_table(tmp_path, downloads, capsys):
    nih = downloads / "nih"
    assert _build("nih", nih, nih, tmp_path / "prepared", capsys) == \
        _build("nih", nih, nih / "Data_Entry_2017_v2020.csv", tmp_path / "prepared", capsys)


def test_labels_swapped_between_two_studies_in_the_labelers_table_make_another_set(tmp_path, mimic, capsys):
    """The study labels come from the labeler's table, so its bytes are in the content address: two studies'
    labels swapped keep every count the manifest holds, and were reused as the old set."""
    copy = _copy(mimic, tmp_path / "download", [META, CHEXPERT])
    shutil.copytree(mimic / "files", copy / "files")
    before = _build("mimic", copy, copy, tmp_path / "prepared", capsys)
    meta = pd.read_csv(copy / META, dtype=str)
    labels = pd.read_csv(copy / CHEXPERT, dtype=str, keep_default_na=False)
    per_study = meta["study_id"].value_counts()
    differs = labels.iloc[:, 2:].ne(labels.iloc[0, 2:]).any(axis=1)
    a = labels.index[0]
    b = next(i for i in labels.index[1:] if differs[i] and per_study[labels.at[i, "study_id"]] ==
             per_study[labels.at[a, "study_id"]])
    labels.iloc[[a, b], 2:] = labels.iloc[[b, a], 2:].to_numpy()
    labels.to_csv(copy / CHEXPERT, index=False)
    after = _build("mimic", copy, copy, tmp_path / "prepared", capsys)
    assert after != before
    assert json.loads((after / "manifest.json").read_text())["counts"] == \
        json.loads((before / "manifest.json").read_text())["counts"]
