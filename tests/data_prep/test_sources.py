"""NIH (on the real table) and CheXpert label readers, and the labels command line."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from data_prep.sources.chexpert import ChexpertOptions
from data_prep.sources.chexpert import read_labels as read_chexpert_labels
from data_prep.errors import DataPrepError
from data_prep.sources.nih import NIH_LABELS, SEED003, NihRecipe
from data_prep.sources.nih import read_with_recipe as read_nih_labels
from tests.conftest import FIXTURES, REPO

NIH = FIXTURES / "nih_data_entry_first1500patients.csv.gz"


@pytest.fixture(scope="module")
def nih_table():
    return pd.read_csv(NIH)


def _count(table, name):
    return int(table["Finding Labels"].str.split("|").apply(lambda names: name in names).sum())


def test_no_options_keep_every_image_and_the_14_labels(nih_table):
    labels = read_nih_labels(NIH)
    assert labels.names == sorted(NIH_LABELS) and len(labels.frame) == len(nih_table)
    for name in NIH_LABELS:
        assert labels.stats["counts_raw"][name] == _count(nih_table, name)
    no_finding = (nih_table["Finding Labels"] == "No Finding").to_numpy()
    assert labels.labels[no_finding].sum() == 0


def test_seed003_merges_are_unions_of_the_merged_labels(nih_table):
    labels = read_nih_labels(NIH, replace(SEED003, drop_no_finding=False, undersample_top=0, views=None))
    assert len(labels.names) == 11 and "Mass" not in labels.names and "Pneumonia" not in labels.names
    findings = nih_table["Finding Labels"].str.split("|")
    expected = findings.apply(lambda n: bool({"Infiltration", "Consolidation", "Pneumonia"} & set(n))).sum()
    assert labels.stats["counts_merged"]["Consolidation"] == expected
    assert labels.stats["counts_merged"]["Nodule"] == findings.apply(lambda n: bool({"Mass", "Nodule"} & set(n))).sum()


def test_view_filter_and_no_finding_drop(nih_table):
    labels = read_nih_labels(NIH, NihRecipe(views=("PA",), drop_no_finding=True))
    expected = ((nih_table["View Position"] == "PA") & (nih_table["Finding Labels"] != "No Finding")).sum()
    assert len(labels.frame) == expected and set(labels.frame["view"]) == {"PA"}
    assert (labels.labels.max(axis=1) == 1).all()


def test_undersampling_caps_the_top_labels_and_is_deterministic_by_seed():
    options = replace(SEED003, undersample_to=300)
    first, again = read_nih_labels(NIH, options), read_nih_labels(NIH, options)
    other = read_nih_labels(NIH, replace(options, seed=1))
    merged = first.stats["counts_merged"]
    top4 = sorted(merged, key=merged.get, reverse=True)[:4]
    assert all(first.stats["counts_final"][n] <= 300 for n in top4)
    assert first.stats["counts_final"][top4[-1]] == 300  # the last one processed is cut exactly
    assert first.frame["file"].tolist() == again.frame["file"].tolist()
    assert first.frame["file"].tolist() != other.frame["file"].tolist()
    assert first.stats["images"] < first.stats["after_filters"]


def test_seed003_on_the_full_real_table_leaves_about_20000_images():
    full = REPO.parent / "shared" / "data" / "nih_data_entry_2017_v2020.csv.gz"
    if not full.is_file():
        pytest.skip("the full NIH table is in ../shared/data only")
    labels = read_nih_labels(full, SEED003)
    assert labels.stats["after_filters"] == 51759  # images with a finding after the merges, AP/PA
    assert 19_000 < labels.stats["images"] < 21_000 and len(labels.names) == 11


def test_unknown_nih_finding_is_named_with_its_row(tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("Image Index,Finding Labels,Patient ID,View Position\na.png,Cardiomegaly,1,PA\nb.png,Cardio,2,PA\n")
    with pytest.raises(DataPrepError, match="row 3: unknown finding 'Cardio'"):
        read_nih_labels(path)


CHEXPERT = """Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices
CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0
CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,-1.0,,,,,,1.0,
"""


@pytest.fixture
def chexpert_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(CHEXPERT)
    return path


@pytest.mark.parametrize("policy, atelectasis, cardiomegaly", [
    ("u_ones", 1.0, 1.0), ("u_zeros", 0.0, 0.0), ("u_mixed", 1.0, 0.0), ("u_ignore", np.nan, np.nan),
])
def test_uncertainty_policies(chexpert_csv, policy, atelectasis, cardiomegaly):
    labels = read_chexpert_labels(chexpert_csv, ChexpertOptions(policy=policy))
    row = labels.frame.iloc[1]
    np.testing.assert_equal([row["Atelectasis"], row["Cardiomegaly"]], [atelectasis, cardiomegaly])


def test_blank_is_negative_by_default_and_masked_on_request(chexpert_csv):
    default = read_chexpert_labels(chexpert_csv, ChexpertOptions(policy="u_ignore"))
    masked = read_chexpert_labels(chexpert_csv, ChexpertOptions(policy="u_ignore", blank="mask"))
    assert default.frame.iloc[0]["Edema"] == 0.0 and np.isnan(masked.frame.iloc[0]["Edema"])
    assert default.stats["masked"]["Edema"] == 1  # the -1, not the blanks


def test_patients_views_and_frontal_filter(chexpert_csv):
    labels = read_chexpert_labels(chexpert_csv)
    assert labels.frame["patient"].tolist() == ["patient00001", "patient00002", "patient00002"]
    assert labels.frame["view"].tolist() == ["AP", "AP", "LATERAL"]
    assert len(read_chexpert_labels(chexpert_csv, ChexpertOptions(frontal_only=True)).frame) == 2
    assert len(read_chexpert_labels(chexpert_csv, ChexpertOptions(all_labels=True)).names) == 13


def test_chexpert_sex_and_age_are_read_and_an_unknown_sex_is_blank(chexpert_csv):
    frame = read_chexpert_labels(chexpert_csv).frame
    assert frame["sex"].tolist() == ["F", "F", "F"] and frame["age"].tolist() == ["68", "87", "83"]
    chexpert_csv.write_text(CHEXPERT.replace("Female,68", "Unknown,0").replace("Female,87", "Male,91"))
    frame = read_chexpert_labels(chexpert_csv).frame
    assert frame["sex"].tolist() == ["", "M", "F"] and frame["age"].tolist() == ["0", "90+", "83"]


def test_bad_chexpert_value_is_named(chexpert_csv):
    chexpert_csv.write_text(CHEXPERT.replace(",-1.0,1.0,,", ",2.0,1.0,,", 1))
    with pytest.raises(DataPrepError, match=r"row 3, column 'Cardiomegaly': '2.0'; expected 1, 0, -1 or blank"):
        read_chexpert_labels(chexpert_csv)


def test_labels_cli_writes_pseudonymous_prepared_labels(chexpert_csv, tmp_path, private_key_file):
    out = tmp_path / "labels.csv"
    proc = subprocess.run([sys.executable, "-m", "data_prep.labels", "chexpert", str(chexpert_csv), "--policy",
                           "u_ignore", "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(table.columns[:3]) == ["image_key", "patient_key", "view"] and len(table) == 3
    assert table["patient_key"].nunique() == 2 and "patient0000" not in out.read_text()
    assert table.loc[1, "Atelectasis"] == ""  # U-Ignore: masked, written empty
