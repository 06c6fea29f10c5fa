"""Label CSVs fail loudly with the row; folds keep every patient in one fold."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from data_prep.errors import DataPrepError
from data_prep.folds import holdout_split, inner_split, patient_folds
from data_prep.sources.target import load_mapping, read_target_labels
from tests.conftest import FIXTURES

NIH = FIXTURES / "nih_data_entry_first1500patients.csv.gz"


def _write(tmp_path, text: str, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_findings_become_multi_hot_and_normal_is_all_zero(tmp_path):
    labels = read_target_labels(_write(tmp_path, "file,findings\na.dcm,x|y\nb.dcm,normal\nc.dcm,y\n"))
    assert labels.names == ["x", "y"]
    assert labels.labels.tolist() == [[1, 1], [0, 0], [0, 1]]


def test_seed000_mapping_maps_subcategories_case_insensitively(tmp_path):
    csv = _write(tmp_path, "file,findings\na.dcm,Aortic Arch Calcification|scoliosis\nb.dcm,aortic curvature\n"
                           "c.dcm,normal\n")
    labels = read_target_labels(csv, load_mapping("seed000_target"))
    assert "heart pacemaker placement" not in labels.names and len(labels.names) == 7
    frame = labels.frame.set_index("file")[labels.names]
    assert frame.loc["a.dcm"][lambda r: r == 1].index.tolist() == ["aortic sclerosis/calcification", "spinal lesions"]
    assert frame.loc["b.dcm"][lambda r: r == 1].index.tolist() == ["arterial curvature"]
    assert frame.loc["c.dcm"].sum() == 0


def test_an_image_whose_only_finding_is_discarded_is_dropped_or_kept_as_normal(tmp_path):
    csv = _write(tmp_path, "file,findings\na.dcm,heart pacemaker placement\nb.dcm,heart pacemaker placement|scoliosis\n")
    mapping = load_mapping("seed000_target")
    dropped = read_target_labels(csv, mapping)
    assert dropped.frame["file"].tolist() == ["b.dcm"] and dropped.stats["dropped_only_discarded"] == 1
    kept = read_target_labels(csv, mapping, discarded_only="normal")
    assert kept.frame["file"].tolist() == ["a.dcm", "b.dcm"] and kept.labels[0].sum() == 0


def test_unknown_finding_names_file_row_and_name(tmp_path):
    path = _write(tmp_path, "file,findings\na.dcm,scoliosis\nb.dcm,oops\n")
    with pytest.raises(DataPrepError, match=r"labels.csv: row 3: unknown finding 'oops'"):
        read_target_labels(path, load_mapping("seed000_target"))


def test_duplicate_file_rows_are_named(tmp_path):
    with pytest.raises(DataPrepError, match=r"file 'a.dcm' listed more than once, at rows \[2, 3\]"):
        read_target_labels(_write(tmp_path, "file,findings\na.dcm,x\na.dcm,normal\n"))


@pytest.mark.parametrize("content, message", [
    ("", "empty"), ("name,findings\na,x\n", r"missing column\(s\) \['file'\]"), ("file,findings\n", "no data rows"),
    ("file,x\na.dcm,2\n", "row 2, column 'x': '2'; expected 0, 1 or empty"),
    ("file,findings\na.dcm,\n", "row 2: empty findings; write 'normal'"),
])
def test_bad_csvs_get_a_clear_message(tmp_path, content, message):
    with pytest.raises(DataPrepError, match=message):
        read_target_labels(_write(tmp_path, content))


def test_empty_cells_in_label_columns_are_masked(tmp_path):
    labels = read_target_labels(_write(tmp_path, "file,x,y\na.dcm,1,\nb.dcm,0,1\n"))
    assert np.isnan(labels.labels[0, 1]) and labels.labels[1].tolist() == [0, 1]


def test_non_utf8_csv_is_refused(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("file,findings\nä.dcm,x\n".encode("latin-1"))
    with pytest.raises(DataPrepError, match="not UTF-8"):
        read_target_labels(path)


def _nih_labels():
    table = pd.read_csv(NIH)
    names = sorted({n for v in table["Finding Labels"] for n in v.split("|")} - {"No Finding"})
    labels = np.array([[n in v.split("|") for n in names] for v in table["Finding Labels"]], dtype=np.uint8)
    return table["Patient ID"].astype(str).to_numpy(), labels


def test_patient_folds_on_real_nih_table_never_split_a_patient():
    patients, labels = _nih_labels()
    folds = patient_folds(patients, labels, k=5, seed=0)
    per_patient = pd.Series(folds).groupby(patients).nunique()
    assert (per_patient == 1).all()
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    prevalence = np.array([labels[folds == f].mean(0) for f in range(5)])
    common = labels.mean(0) > 0.05
    assert np.abs(prevalence[:, common] - labels.mean(0)[common]).max() < 0.04  # stratified


def test_row_level_stratification_would_leak_patients_on_the_same_table():
    """Why folds are patient-grouped: image-level folds share patients between train and test."""
    patients, labels = _nih_labels()
    _, test = next(MultilabelStratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(labels, labels))
    train = np.setdiff1d(np.arange(len(labels)), test)
    leaked = np.isin(np.unique(patients[test]), patients[train]).mean()
    assert leaked > 0.2


def test_inner_split_is_patient_grouped_and_inside_the_training_part():
    patients, labels = _nih_labels()
    folds = patient_folds(patients, labels, k=5, seed=0)
    train_part = np.flatnonzero(folds != 0)
    train, val = inner_split(patients, labels, train_part, val_fraction=0.2, seed=0)
    assert set(train) | set(val) == set(train_part) and not set(train) & set(val)
    assert not set(patients[train]) & set(patients[val])
    assert 0.1 < len(val) / len(train_part) < 0.3


def test_too_few_patients_for_the_folds_is_an_error():
    with pytest.raises(DataPrepError, match="2 patients cannot fill 3 folds"):
        patient_folds(["a", "a", "b"], np.array([[1], [0], [1]]), k=3, seed=0)


def test_holdout_split_60_20_20_on_real_nih_table_is_patient_grouped():
    patients, labels = _nih_labels()
    split = holdout_split(patients, labels, (0.6, 0.2, 0.2), seed=0)
    shares = {s: (split == s).mean() for s in ("train", "val", "test")}
    assert shares["train"] == pytest.approx(0.6, abs=0.05) and shares["test"] == pytest.approx(0.2, abs=0.05)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(patients[split == a]) & set(patients[split == b])
    assert (holdout_split(patients, labels, (0.6, 0.2, 0.2), seed=0) == split).all()


def test_folds_cli_writes_folds_and_holdout(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    patients, labels = _nih_labels()
    table = pd.DataFrame(labels, columns=[f"l{k}" for k in range(labels.shape[1])])
    table.insert(0, "patient_key", patients)
    table.insert(0, "image_key", [f"i{n}" for n in range(len(table))])
    table.to_csv(tmp_path / "labels.csv", index=False)
    for extra, column in ((["--k", "3"], "fold"), (["--holdout", "60/20/20"], "split")):
        proc = subprocess.run([sys.executable, "-m", "data_prep.folds", str(tmp_path / "labels.csv"), *extra,
                               "--out", str(tmp_path / "out.csv")], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        out = pd.read_csv(tmp_path / "out.csv")
        assert list(out.columns) == ["image_key", column] and len(out) == len(table)
        assert out.groupby(pd.Series(patients))[column].nunique().max() == 1
