"""MIMIC-CXR-JPG as PhysioNet ships it: a tiny copy with the metadata, labeler and split tables in their
documented columns (gzipped, as downloaded) and films at files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg; built
as a data set and used as a sweep's source, in a co-trained pretraining stage beside CheXpert."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from data_prep.build import build
from data_prep.settings import BuildSettings
from data_prep.errors import DataPrepError
from data_prep.sources import MimicOptions
from data_prep.sources.chexpert import ALL_LABELS
from data_prep.sources.mimic import read_labels
from sweeper.datasets import ensure_datasets
from sweeper.spec import parse_spec
from tests.conftest import TEST_KEY
from tests.helpers import fit_config

LABELER_COLUMNS = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                   "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
                   "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]
VIEWS = ("PA", "LATERAL", "AP", "LL")


def write_mimic(root: Path, n_subjects: int = 10, seed: int = 0) -> Path:
    """The download's folder: the three tables (.csv.gz) and the films; returns the metadata table. One study
    (the last) has no labeler row, as a few of MIMIC's do."""
    rng = np.random.default_rng(seed)
    meta, studies, split = [], [], []
    for s in range(n_subjects):
        subject = str(10000032 + 7919 * s)
        for k in range(1 + s % 2):
            study = str(50414267 + 104729 * (2 * s + k))
            values = rng.choice(["1.0", "0.0", "-1.0", ""], size=len(LABELER_COLUMNS) - 2, p=[0.25, 0.25, 0.1, 0.4])
            studies.append([subject, study, *values])
            for v in range(1 + (s + k) % 3):
                dicom = "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, 5))
                meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                             "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": VIEWS[v],
                             "Rows": 3056, "Columns": 2544, "StudyDate": 21800506, "StudyTime": 213014.531,
                             "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                             "ViewCodeSequence_CodeMeaning": "postero-anterior", "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
                split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                              "split": "test" if s == 0 else "validate" if s == 1 else "train"})
                path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(path), rng.integers(0, 256, (24, 20), dtype=np.uint8))
    labels = pd.DataFrame(studies[:-1], columns=LABELER_COLUMNS)
    labels.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    negbio = labels.copy()
    negbio["Cardiomegaly"] = "1.0"  # another labeler, other labels
    negbio.to_csv(root / "mimic-cxr-2.0.0-negbio.csv.gz", index=False)
    pd.DataFrame(split).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    pd.DataFrame(meta).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    return root / "mimic-cxr-2.0.0-metadata.csv.gz"


@pytest.fixture(scope="module")
def mimic(tmp_path_factory) -> Path:
    return write_mimic(tmp_path_factory.mktemp("mimic-cxr-jpg"))


def test_each_image_gets_its_studys_labels_under_the_uncertainty_policy(mimic):
    meta = pd.read_csv(mimic, dtype=str)
    chexpert = pd.read_csv(mimic.parent / "mimic-cxr-2.0.0-chexpert.csv.gz", dtype=str, keep_default_na=False)
    read = read_labels(mimic, MimicOptions(policy="u_ignore", all_labels=True))
    assert len(read.frame) == len(meta) and read.names == list(ALL_LABELS[1:])
    assert read.frame["patient"].tolist() == meta["subject_id"].tolist()
    assert read.frame["file"][0] == f"files/p{meta.subject_id[0][:2]}/p{meta.subject_id[0]}/s{meta.study_id[0]}/" \
                                    f"{meta.dicom_id[0]}.jpg"
    by_study = chexpert.set_index("study_id")
    expected = {"1.0": 1.0, "0.0": 0.0, "-1.0": np.nan, "": 0.0}
    for i, study in enumerate(meta["study_id"]):
        want = [expected[by_study.at[study, n]] if study in by_study.index else 0.0 for n in read.names]
        np.testing.assert_array_equal(read.frame.loc[i, read.names].to_numpy(float), want)
    assert read.stats["studies_without_labels"] == 1
    assert set(read.frame["sex"]) == {""} and set(read.frame["age"]) == {""}  # not in MIMIC-CXR-JPG's tables


def test_the_labeler_and_the_view_filter_are_options(mimic):
    negbio = read_labels(mimic, MimicOptions(labeler="negbio"))
    chexpert = read_labels(mimic, MimicOptions())
    studies = pd.read_csv(mimic.parent / "mimic-cxr-2.0.0-negbio.csv.gz", dtype=str)["study_id"]
    labelled = pd.read_csv(mimic, dtype=str)["study_id"].isin(studies).to_numpy()
    assert negbio.frame["Cardiomegaly"][labelled].eq(1).all() and not chexpert.frame["Cardiomegaly"].eq(1).all()
    frontal = read_labels(mimic, MimicOptions(frontal_only=True))
    assert set(frontal.frame["view"]) == {"PA", "AP"} and len(frontal.frame) < len(chexpert.frame)


def test_a_missing_labeler_table_is_named(mimic, tmp_path):
    alone = tmp_path / mimic.name
    alone.write_bytes(mimic.read_bytes())
    with pytest.raises(DataPrepError, match="no mimic-cxr-2.0.0-chexpert.csv or mimic-cxr-2.0.0-chexpert.csv.gz"):
        read_labels(alone, MimicOptions())


def test_mimic_builds_from_the_downloaded_folder(mimic, tmp_path):
    params = BuildSettings(size=16, folds=2, near_duplicates="off", workers=1, source=MimicOptions())
    out = build(mimic.parent, mimic, tmp_path, params, name="mimic", key=TEST_KEY, log=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    meta = pd.read_csv(mimic, dtype=str)
    assert manifest["counts"]["images"] == len(meta) and manifest["counts"]["patients"] == meta["subject_id"].nunique()
    labels = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)
    assert sorted(labels["view"]) == sorted(meta["ViewPosition"])
    text = (out / "labels.csv").read_text() + (out / "manifest.json").read_text()
    assert not any(value in text for value in [*meta["subject_id"], *meta["study_id"], *meta["dicom_id"], "21800506"])


SPEC = """
name = "mimic"
[data]
size = 32
folds = 3
chexpert_policy = "u_ignore"
[data.sources]
mimic = ""
chexpert = "phantom:chexpert"
[data.phantom]
n_patients = 16
image_px = 48
[data.prepare.mimic]
labeler = "chexpert"
near_duplicates = "off"
[grid]
backbone = ["resnet18"]
recipe = ["cotrained"]
[recipes.cotrained]
strategy = "co_trained"
sources = ["mimic", "chexpert"]
pretrain_epochs = 1
"""


def test_mimic_is_a_sweep_source_and_co_trains_beside_chexpert(mimic, prepared_dir, tmp_path):
    from trainables.fit import fit

    paths = ensure_datasets(parse_spec(SPEC), tmp_path / "home", log=lambda *_: None,
                            given={"target": str(prepared_dir), "mimic": f"mimic:{mimic.parent}"})
    assert json.loads((paths["mimic"] / "manifest.json").read_text())["params"]["source"] == {
        "kind": "mimic", "labeler": "chexpert", "policy": "u_ignore", "blank": "negative", "all_labels": False,
        "frontal_only": False}
    reports = []
    cfg = fit_config(prepared_dir, epochs=1, strategy="co_trained", pretrain_dirs=(str(paths["mimic"]), str(paths["chexpert"])),
                    pretrain_epochs=1, pretrain_cache=str(tmp_path / "stages"))
    fit(cfg, report=lambda m, s: reports.append((m, copy.deepcopy(s))), log=lambda *_: None)
    assert reports[-1][0]["completed"]
    (path,) = (tmp_path / "stages").glob("*co_trained*.pt")
    stage = torch.load(path, weights_only=True)["stage"]
    assert stage["strategy"] == "co_trained" and list(stage["sources"]) == [str(paths["mimic"]), str(paths["chexpert"])]


def test_mimics_official_split_tests_on_its_split_files_test_images(mimic, tmp_path):
    from data_prep.dataset import PreparedDataset

    params = BuildSettings(size=16, folds=2, near_duplicates="off", workers=1, source=MimicOptions(), split="official")
    data = PreparedDataset(build(mimic.parent, mimic, tmp_path, params, name="mimic", key=TEST_KEY, log=lambda *_: None))
    split = pd.read_csv(mimic.parent / "mimic-cxr-2.0.0-split.csv.gz")
    assert data.split_name == "official" and (data.folds == 0).sum() == (split["split"] == "test").sum()
    assert data.manifest["counts"]["test_patients_also_in_training"] == 0


def test_a_split_file_that_lists_an_image_twice_is_named(mimic, tmp_path):
    from data_prep.sources.mimic import official_split

    for table in mimic.parent.glob("*.csv.gz"):
        (tmp_path / table.name).write_bytes(table.read_bytes())
    split = pd.read_csv(tmp_path / "mimic-cxr-2.0.0-split.csv.gz")
    pd.concat([split, split.head(1)]).to_csv(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    with pytest.raises(DataPrepError, match="mimic-cxr-2.0.0-split.csv.gz: dicom_id .* listed more than once"):
        official_split(tmp_path / mimic.name, MimicOptions())
