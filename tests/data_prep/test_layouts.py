"""Public data sets as people download them: tiny copies laid out exactly as their distributions
unpack (NIH's real label rows; CheXpert's rows in its documented format), built from the folder the
user has, with no renaming; and a folder missing most of its images stops instead of building a
smaller data set."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_prep.build import build, main as build_main
from data_prep.settings import BuildSettings
from data_prep.dataset import PreparedDataset
from data_prep.errors import DataPrepError
from data_prep.sources import ChexpertOptions, NihOptions
from data_prep.locate import locate
from data_prep.summary import summarise
from sweeper.datasets import raw_images
from sweeper.dry_run import dry_run
from sweeper.spec import parse_spec
from tests.conftest import REPO, TEST_KEY

NIH_TABLE = REPO.parent / "shared" / "data" / "nih_data_entry_2017_v2020.csv.gz"
N_NIH = 300


def _film(path: Path, seed: int) -> None:
    """A small grey film (noise, so no two are duplicates) in the format the path's suffix says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 20), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)


@pytest.fixture(scope="module")
def nih_rows() -> pd.DataFrame:
    if not NIH_TABLE.is_file():
        pytest.skip(f"the real NIH label table is not at {NIH_TABLE}")
    with gzip.open(NIH_TABLE, "rt") as handle:
        return pd.read_csv(handle, nrows=N_NIH)


def _nih(root: Path, rows: pd.DataFrame, layout: str) -> Path:
    """NIH as its box download unpacks (`images/` beside the table) or as Kaggle's (12 `images_0NN/images`
    folders, and the list and box files at the top)."""
    table = root / "Data_Entry_2017_v2020.csv"
    root.mkdir(parents=True)
    rows.to_csv(table, index=False)
    for i, name in enumerate(rows["Image Index"]):
        folder = root / "images" if layout == "box" else root / f"images_{i * 12 // len(rows) + 1:03d}" / "images"
        _film(folder / name, i)
    if layout == "kaggle":
        (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
        (root / "train_val_list.txt").write_text("\n".join(rows["Image Index"][:240]) + "\n")
        (root / "test_list.txt").write_text("\n".join(rows["Image Index"][240:]) + "\n")
    return table


NIH_ALL = BuildSettings(size=16, folds=3, near_duplicates="off", workers=1,
                      source=NihOptions())


@pytest.mark.parametrize("layout", ["box", "kaggle"])
def test_nih_builds_from_the_downloaded_folder_in_either_layout(tmp_path, nih_rows, layout):
    root = tmp_path / "download"
    table = _nih(root, nih_rows, layout)
    out = build(root, table, tmp_path / "prepared", NIH_ALL, name="nih", key=TEST_KEY, log=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["images"] == N_NIH and manifest["counts"]["missing"] == 0
    assert manifest["counts"]["patients"] == nih_rows["Patient ID"].nunique()


def test_one_of_nih_kaggles_folders_stops_with_what_was_searched_and_the_likely_cause(tmp_path, nih_rows, capsys):
    root = tmp_path / "download"
    table = _nih(root, nih_rows, "kaggle")
    first = root / "images_001" / "images"
    code = build_main(["nih", "--images", str(first), "--labels", str(table), "--out", str(tmp_path / "prepared"),
                       "--size", "16", "--folds", "3", "--preset", "none", "--near-duplicates", "off"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"275 of 300 images listed in {table} were not found under {first}" in err
    assert "image files found in 1 folder(s): ." in err
    missing = nih_rows["Image Index"][25:28].tolist()
    assert f"for example {missing[0]} (row 27), {missing[1]} (row 28), {missing[2]} (row 29)" in err
    assert "images_001 ... images_012" in err and "--allow-missing" in err
    assert not list((tmp_path / "prepared").glob(".*partial*")) and not list((tmp_path / "prepared").glob("nih-*"))


def test_allow_missing_builds_the_images_found_and_records_how_many_were_not(tmp_path, nih_rows):
    root = tmp_path / "download"
    table = _nih(root, nih_rows, "kaggle")
    params = NIH_ALL.model_copy(update={"allow_missing": True})
    out = build(root / "images_001" / "images", table, tmp_path / "prepared", params, name="nih", key=TEST_KEY,
                log=lambda *_: None)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["images"] == 25 and counts["missing"] == 275 and counts["rejected"] == 275
    assert set(pd.read_csv(out / "rejected.csv")["reason"]) == {"file not found"}
    assert summarise(out).overview["listed but not found (of the rejected)"] == 275


def test_a_missing_image_within_the_tolerance_is_quarantined_and_the_rest_built(tmp_path, nih_rows):
    root = tmp_path / "download"
    table = _nih(root, nih_rows, "kaggle")
    next(root.glob("images_0*/images/*.png")).unlink()  # 1 of 300: below 1%
    out = build(root, table, tmp_path / "prepared", NIH_ALL, name="nih", key=TEST_KEY, log=lambda *_: None)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["images"] == N_NIH - 1 and counts["missing"] == 1


# CheXpert: the Path column as each distribution writes it, and where its images are
CHEXPERT_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                   "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                   "Fracture", "Support Devices"]


def _chexpert_rows(prefix: str, n_patients: int = 12, part: str = "train", first: int = 1) -> pd.DataFrame:
    """Rows as CheXpert's train.csv (or valid.csv) has them: Path, Sex, Age, Frontal/Lateral, AP/PA and the 14
    labels with 1.0, 0.0, -1.0 or blank; two studies for some patients, a lateral view for some studies."""
    rng = np.random.default_rng(first)
    rows = []
    for p in range(first, first + n_patients):
        for study in range(1, 2 + p % 2):
            views = [("view1_frontal.jpg", "Frontal", "AP" if p % 3 else "PA")] + (
                [("view2_lateral.jpg", "Lateral", "")] if (p + study) % 2 else [])
            for view, frontal, appa in views:
                labels = rng.choice(["1.0", "0.0", "-1.0", ""], size=len(CHEXPERT_LABELS), p=[0.2, 0.3, 0.1, 0.4])
                rows.append({"Path": f"{prefix}/{part}/patient{p:05d}/study{study}/{view}",
                             "Sex": "Female" if p % 2 else "Male", "Age": 40 + p, "Frontal/Lateral": frontal,
                             "AP/PA": appa, **dict(zip(CHEXPERT_LABELS, labels))})
    return pd.DataFrame(rows)


def _chexpert(root: Path, layout: str) -> Path:
    """CheXpert as each distribution unpacks: the original zips (`CheXpert-v1.0-small/` or `CheXpert-v1.0/`
    holding train.csv and train/), Kaggle's copy (train.csv and train/ at the top, Path still starting with
    CheXpert-v1.0-small/) and the Stanford AIMI release (train_cheXbert.csv at the top, patients spread over
    batch folders, valid.csv in the first batch's folder)."""
    prefix = "CheXpert-v1.0" if layout in ("full", "aimi") else "CheXpert-v1.0-small"
    rows, valid = _chexpert_rows(prefix), _chexpert_rows(prefix, n_patients=4, part="valid", first=64541)
    top = {"small": root / prefix, "full": root / prefix, "kaggle": root, "aimi": root}[layout]
    top.mkdir(parents=True)
    valid_folder = root / "CheXpert-v1.0 batch 1 (validate & csv)" if layout == "aimi" else top
    for i, path in enumerate([*rows["Path"], *valid["Path"]]):
        tail = Path(path).relative_to(prefix)  # train/patientNNNNN/studyN/viewN_x.jpg (or valid/...)
        if layout == "aimi" and tail.parts[0] == "train":
            batch = 2 + int(tail.parts[1][-5:]) * 3 // 13  # patients spread over batches 2..4
            tail = Path(f"CheXpert-v1.0 batch {batch} (train {batch - 1})", *tail.parts[1:])
        _film((valid_folder if tail.parts[0] == "valid" else top) / tail, i)
    if layout == "aimi":
        table = root / "train_cheXbert.csv"
        rows.to_csv(root / "train_visualCheXbert.csv", index=False)
    else:
        table = top / "train.csv"
    valid.to_csv(valid_folder / "valid.csv", index=False)
    rows.to_csv(table, index=False)
    return table


CHEXPERT = BuildSettings(size=16, folds=3, near_duplicates="off", workers=1, source=ChexpertOptions())


@pytest.mark.parametrize("layout", ["small", "full", "kaggle", "aimi"])
def test_chexpert_builds_from_the_downloaded_folder_in_every_layout(tmp_path, layout):
    root = tmp_path / "download"
    table = _chexpert(root, layout)
    listed = len(pd.read_csv(table))
    out = build(root, table, tmp_path / "prepared", CHEXPERT, name="chexpert", key=TEST_KEY, log=lambda *_: None)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["images"] == listed and counts["missing"] == 0 and counts["patients"] == 12


def test_chexpert_builds_when_given_the_folder_its_paths_start_with(tmp_path):
    table = _chexpert(tmp_path / "download", "small")
    out = build(table.parent, table, tmp_path / "prepared", CHEXPERT, name="chexpert", key=TEST_KEY,
                log=lambda *_: None)
    assert json.loads((out / "manifest.json").read_text())["counts"]["missing"] == 0


def test_two_copies_under_one_root_resolve_to_the_copy_the_path_names(tmp_path):
    """Both original zips unpacked side by side: the same patient/study/view under each."""
    small = _chexpert(tmp_path / "download", "small")
    _chexpert(tmp_path / "download", "full")
    files = pd.read_csv(small)["Path"].tolist()
    found = locate("chexpert", tmp_path / "download", files)
    assert found.paths == [tmp_path / "download" / f for f in files]


SPEC = """
name = "layouts"
[data]
target = "phantom"
size = 16
[data.sources]
nih = ""
chexpert = ""
[data.prepare.nih]
near_duplicates = "off"
[data.prepare.chexpert]
near_duplicates = "off"
[grid]
backbone = ["resnet18"]
recipe = ["nih", "chexpert"]
[recipes.nih]
sources = ["nih"]
[recipes.chexpert]
sources = ["chexpert"]
"""


def test_a_sweep_finds_each_layout_from_the_folder_and_its_dry_run_counts_what_is_there(tmp_path, nih_rows):
    spec = parse_spec(SPEC)
    nih, chexpert = tmp_path / "nih", tmp_path / "chexpert"
    _nih(nih, nih_rows, "kaggle")
    aimi = _chexpert(chexpert, "aimi")
    assert raw_images(spec, "nih", "nih", str(nih), check=True)[:2] == (N_NIH, N_NIH)
    assert raw_images(spec, "chexpert", "chexpert", str(chexpert), check=True)[:2] == (len(pd.read_csv(aimi)),) * 2
    for number in range(1, 12):  # the first 11 archives not extracted
        for png in (nih / f"images_{number:03d}" / "images").glob("*.png"):
            png.unlink()
    with pytest.raises(DataPrepError, match="275 of 300 images listed"):
        raw_images(spec, "nih", "nih", str(nih), check=True)
    plan = dry_run(spec, {"nih": f"nih:{nih}", "chexpert": f"chexpert:{chexpert}"})
    assert plan["data"]["nih"]["images"] == 25
    assert "found of 300 listed" in plan["data"]["nih"]["images_from"]
    assert "a real run stops: more than 1% missing" in plan["data"]["nih"]["images_from"]


def test_nih_sex_age_and_view_reach_labels_csv_and_ages_above_89_are_90_plus(tmp_path, nih_rows):
    from data_prep.sources.nih import read_labels

    with gzip.open(NIH_TABLE, "rt") as handle:
        full = pd.read_csv(handle)
    rows = pd.concat([full[full["Patient Age"] > 89], full.head(20)]).drop_duplicates("Image Index")
    rows.to_csv(tmp_path / "Data_Entry_2017_v2020.csv", index=False)
    read = read_labels(tmp_path / "Data_Entry_2017_v2020.csv", NihOptions()).frame
    ages = rows["Patient Age"].to_numpy()
    assert read["age"].tolist() == ["90+" if a > 89 else str(a) for a in ages] and (ages > 89).sum() == 64
    assert read["sex"].tolist() == rows["Patient Gender"].tolist()
    root = tmp_path / "download"
    out = build(root, _nih(root, nih_rows, "box"), tmp_path / "prepared", NIH_ALL, name="nih", key=TEST_KEY,
                log=lambda *_: None)
    labels = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)
    assert labels["sex"].tolist() == nih_rows["Patient Gender"].tolist()
    assert labels["age"].tolist() == ["90+" if a > 89 else str(a) for a in nih_rows["Patient Age"]]
    assert labels["view"].tolist() == nih_rows["View Position"].tolist()


@pytest.mark.parametrize("layout", ["small", "kaggle", "aimi"])
def test_chexperts_official_split_tests_on_its_valid_csv(tmp_path, layout):
    root = tmp_path / "download"
    table = _chexpert(root, layout)
    params = CHEXPERT.model_copy(update={"split": "official"})
    out = build(root, table, tmp_path / "prepared", params, name="chexpert", key=TEST_KEY, log=lambda *_: None)
    data = PreparedDataset(out)
    valid = pd.read_csv(next(root.rglob("valid.csv")))
    assert data.split_name == "official" and data.num_folds == 1
    assert (data.folds == 0).sum() == len(valid) and (data.folds == -1).sum() == len(pd.read_csv(table))
    split = data.split(0)
    assert len(split.test) == len(valid) and not set(data.patient_keys[split.test]) & set(data.patient_keys[split.train])
    assert set(data.manifest["label_stats"]["official_split"]) == {table.name, str(next(root.rglob("valid.csv"))
                                                                                   .relative_to(table.parent))}


def test_nihs_official_split_tests_on_test_list_and_counts_patients_on_both_sides(tmp_path, nih_rows):
    root = tmp_path / "download"
    table = _nih(root, nih_rows, "kaggle")
    params = NIH_ALL.model_copy(update={"split": "official"})
    data = PreparedDataset(build(root, table, tmp_path / "prepared", params, name="nih", key=TEST_KEY,
                                 log=lambda *_: None))
    assert (data.folds == 0).sum() == 60 and (data.folds == -1).sum() == 240  # test_list.txt: the last 60 rows
    straddling = set(nih_rows["Patient ID"][:240]) & set(nih_rows["Patient ID"][240:])
    assert data.manifest["counts"]["test_patients_also_in_training"] == len(straddling)
    (root / "test_list.txt").unlink()
    with pytest.raises(DataPrepError, match="no test_list.txt; the official split needs NIH's train_val_list.txt"):
        build(root, table, tmp_path / "prepared", params, name="nih", key=TEST_KEY, log=lambda *_: None)


def test_a_target_has_no_official_split(tmp_path, phantom_dir):
    params = BuildSettings(size=16, folds=2, near_duplicates="off", workers=1, split="official")
    with pytest.raises(DataPrepError, match="target sources have no official split"):
        build(phantom_dir, phantom_dir / "labels.csv", tmp_path, params, key=TEST_KEY, log=lambda *_: None)


OFFICIAL_SPEC = """
name = "official"
[data]
target = ""
size = 16
split = "official"
[data.prepare.target]
near_duplicates = "off"
[grid]
backbone = ["resnet18"]
recipe = ["scratch"]
[recipes.scratch]
"""


def test_a_spec_with_the_official_split_builds_its_target_so_and_refuses_a_set_built_otherwise(tmp_path, nih_rows):
    from sweeper.datasets import ensure_datasets
    from sweeper.spec import SpecError

    root = tmp_path / "nih"
    _nih(root, nih_rows, "kaggle")
    spec = parse_spec(OFFICIAL_SPEC)
    assert spec.folds == [0]
    paths = ensure_datasets(spec, tmp_path / "home", log=lambda *_: None, given={"target": f"nih:{root}"})
    assert PreparedDataset(paths["target"]).split_name == "official"
    random = build(root, root / "Data_Entry_2017_v2020.csv", tmp_path / "other", NIH_ALL, key=TEST_KEY,
                   log=lambda *_: None)
    with pytest.raises(SpecError, match="built with the random split but data.split is 'official'; build it with "
                                        "python -m data_prep.build ... --split official"):
        ensure_datasets(spec, tmp_path / "home", log=lambda *_: None, given={"target": str(random)})
    with pytest.raises(SpecError, match="split = 'official' and holdout exclude each other"):
        parse_spec(OFFICIAL_SPEC.replace('split = "official"', 'split = "official"\nholdout = [60, 20, 20]'))
