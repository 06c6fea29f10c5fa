"""Prepared data sets: layout, content addressing, quarantine, and no identifiers."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest

from data_prep.build import build
from data_prep.settings import BuildSettings
from data_prep.dataset import PreparedDataset
from data_prep.errors import DataPrepError
from tests.conftest import TEST_KEY
from tests.helpers import fit_config

QUIET = {"key": TEST_KEY, "log": lambda *_: None}


def test_layout_matches_the_contract(prepared_dir, phantom_dir):
    images = np.load(prepared_dir / "images.npy", mmap_mode="r")
    labels = pd.read_csv(prepared_dir / "labels.csv")
    folds = pd.read_csv(prepared_dir / "folds.csv")
    manifest = json.loads((prepared_dir / "manifest.json").read_text())
    source = pd.read_csv(phantom_dir / "labels.csv")
    only_pacemaker = (source["findings"] == "heart pacemaker placement").sum()
    assert manifest["label_stats"]["dropped_only_discarded"] == only_pacemaker
    assert images.dtype == np.uint8 and images.shape == (len(source) - only_pacemaker, 32, 32)
    assert list(labels.columns[:7]) == ["image_key", "patient_key", "view", "sex", "age", "source_height", "source_width"]
    assert list(labels.columns[7:]) == manifest["label_names"]
    kept = source[source["findings"] != "heart pacemaker placement"]["file"]
    headers = [pydicom.dcmread(phantom_dir / f, stop_before_pixels=True) for f in kept]
    assert sorted(zip(labels["source_height"], labels["source_width"])) == sorted((h.Rows, h.Columns) for h in headers)
    assert folds["image_key"].tolist() == labels["image_key"].tolist()
    assert set(folds["fold"]) == {0, 1, 2}
    assert manifest["size"] == 32 and set(manifest["inputs"]) == {"labels_csv", "images"}
    positives = {n: int(source["findings"].str.contains(n, regex=False).sum()) for n in manifest["label_names"]}
    assert manifest["counts"]["positives"] == positives


def test_same_inputs_and_parameters_reuse_the_same_directory(prepared_dir, phantom_dir):
    again = build(phantom_dir, phantom_dir / "labels.csv", prepared_dir.parent, BuildSettings(size=32, folds=3), **QUIET)
    assert again == prepared_dir
    other = build(phantom_dir, phantom_dir / "labels.csv", prepared_dir.parent, BuildSettings(size=24, folds=3), **QUIET)
    assert other != prepared_dir and PreparedDataset(other).images.shape[1:] == (24, 24)


def test_a_corrupt_file_is_quarantined_and_the_build_goes_on(phantom_dir, tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(phantom_dir, copy)
    table = pd.read_csv(copy / "labels.csv")
    table.loc[table.index[-2:], "findings"] = "heart pacemaker placement"  # discarded-only: dropped by the mapping
    table = pd.concat([table[table["findings"] == "heart pacemaker placement"], table]).drop_duplicates("file")
    table.to_csv(copy / "labels.csv", index=False)  # dropped rows first: csv_row must still be the CSV's row
    dropped = int((table["findings"] == "heart pacemaker placement").sum())
    victim = copy / table["file"].iloc[dropped + 3]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(victim)
    out = build(copy, copy / "labels.csv", tmp_path / "prep", BuildSettings(size=32, folds=3), **QUIET)
    rejected = pd.read_csv(out / "rejected.csv")
    assert dropped >= 1
    assert rejected["csv_row"].tolist() == [dropped + 5] and "PixelData holds 100 bytes" in rejected["reason"][0]
    assert PreparedDataset(out).images.shape[0] == len(table) - dropped - 1


def test_no_identifier_from_the_dicom_headers_or_paths_reaches_the_output(prepared_dir, phantom_dir):
    """Top-level, nested-sequence and private-tag identifiers, dates, UIDs and file names."""
    planted = set()
    for path in (phantom_dir / "images").glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        request = ds.RequestAttributesSequence[0]
        private = ds.private_block(0x0029, "PHANTOM PRIVATE")[0x10].value
        planted |= {str(ds.PatientID), str(ds.PatientName), ds.PatientBirthDate, ds.AccessionNumber,
                    ds.StudyInstanceUID, ds.SOPInstanceUID, ds.StudyDate, str(ds.InstitutionName),
                    str(ds.ReferringPhysicianName), request.RequestedProcedureID, private, path.name}
    for output in prepared_dir.iterdir():
        text = output.read_bytes().decode("latin-1")
        found = [p for p in planted if p in text]
        assert not found, f"{output.name} contains {found[:3]}"


def test_build_cli_builds_a_target_and_refuses_a_bad_mapping(phantom_dir, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    args = [sys.executable, "-m", "data_prep.build", "target", "--dicom-dir", str(phantom_dir), "--labels",
            str(phantom_dir / "labels.csv"), "--out", str(tmp_path), "--size", "32", "--folds", "3"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    dataset = PreparedDataset(proc.stdout.strip().splitlines()[-1])
    assert len(dataset.label_names) == 7 and dataset.manifest["params"]["source"]["mapping"] == "seed000_target"
    bad = subprocess.run(args + ["--mapping", str(tmp_path / "nope.toml")], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "mapping file" in bad.stderr and "does not exist" in bad.stderr


def test_parallel_decoding_gives_the_same_data_set_as_serial(tmp_path):
    from data_prep.decode import PARALLEL_MIN_IMAGES
    from phantom.generate import make_phantom_set

    raw = tmp_path / "raw"
    make_phantom_set(raw, n_patients=40, image_px=48, prevalence=0.3, seed=5)
    assert len(pd.read_csv(raw / "labels.csv")) >= PARALLEL_MIN_IMAGES  # so the process pool is used
    serial = build(raw, raw / "labels.csv", tmp_path / "a", BuildSettings(size=32, folds=3, workers=1), **QUIET)
    parallel = build(raw, raw / "labels.csv", tmp_path / "b", BuildSettings(size=32, folds=3, workers=2), **QUIET)
    assert serial.name == parallel.name  # the worker count is not part of the content address
    for name in ("images.npy", "labels.csv", "folds.csv", "rejected.csv"):
        assert (serial / name).read_bytes() == (parallel / name).read_bytes(), name


def test_an_interrupted_build_resumes_where_it_stopped(phantom_dir, tmp_path, monkeypatch):
    import data_prep.build as builder
    import data_prep.decode as decoding

    clean = build(phantom_dir, phantom_dir / "labels.csv", tmp_path / "clean", BuildSettings(size=32, folds=3), **QUIET)
    real, calls = decoding.decode_and_resize, []

    def interrupted_at_20(path, *args):
        calls.append(path)
        if len(calls) == 20:
            raise KeyboardInterrupt  # Ctrl-C, or a killed job, mid-build
        return real(path, *args)

    monkeypatch.setattr(builder, "JOURNAL_EVERY", 8)
    monkeypatch.setattr(decoding, "decode_and_resize", interrupted_at_20)
    params = BuildSettings(size=32, folds=3, workers=1)
    with pytest.raises(KeyboardInterrupt):
        build(phantom_dir, phantom_dir / "labels.csv", tmp_path / "out", params, **QUIET)
    assert not (tmp_path / "out" / clean.name).exists()  # nothing half-built is visible
    calls.clear()
    monkeypatch.setattr(decoding, "decode_and_resize", lambda path, *args: calls.append(path) or real(path, *args))
    logs = []
    resumed = build(phantom_dir, phantom_dir / "labels.csv", tmp_path / "out", params, key=TEST_KEY, log=logs.append)
    counts = json.loads((clean / "manifest.json").read_text())["counts"]
    assert len(calls) == counts["images"] + counts["rejected"] - 16  # two journal batches of 8 were done before the interruption
    assert any("resuming an interrupted build at image 17" in line for line in logs)
    for name in ("images.npy", "labels.csv", "folds.csv", "rejected.csv"):
        assert (resumed / name).read_bytes() == (clean / name).read_bytes(), name
    assert not list((tmp_path / "out").glob(".*.partial"))


def test_exact_pixel_duplicates_are_removed_and_listed(phantom_dir, tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(phantom_dir, copy)
    table = pd.read_csv(copy / "labels.csv")
    shutil.copy(copy / table["file"][0], copy / "images" / "copy_of_first.dcm")  # the same file filed twice
    extra = pd.DataFrame({"file": ["images/copy_of_first.dcm"], "findings": [table["findings"][0]]})
    pd.concat([table, extra]).to_csv(copy / "labels.csv", index=False)
    out = build(copy, copy / "labels.csv", tmp_path / "prep", BuildSettings(size=32, folds=3), **QUIET)
    duplicates = pd.read_csv(out / "duplicates.csv")
    labels = pd.read_csv(out / "labels.csv")
    assert duplicates["csv_row"].tolist() == [len(table) + 2] and duplicates["kind"].tolist() == ["exact"]
    assert duplicates["duplicate_of"][0] == labels["image_key"][0]
    assert json.loads((out / "manifest.json").read_text())["counts"]["duplicates"] == 1


def test_16_bit_output_keeps_the_8_bit_image_and_trains(phantom_dir, tmp_path):
    from trainables.fit import fit

    eight = PreparedDataset(build(phantom_dir, phantom_dir / "labels.csv", tmp_path, BuildSettings(size=32, folds=3), **QUIET))
    sixteen = PreparedDataset(build(phantom_dir, phantom_dir / "labels.csv", tmp_path,
                                    BuildSettings(size=32, folds=3, bits=16), **QUIET))
    assert sixteen.images.dtype == np.uint16 and sixteen.root != eight.root
    assert np.abs(sixteen.images / 65535.0 - eight.images / 255.0).max() <= 0.5 / 255 + 1e-6
    import torch

    from trainables.feed import ImageFeed

    order = np.arange(len(eight.images))  # what the model is fed: the same films, whatever the stored depth
    fed = [torch.cat([b for b, _ in ImageFeed(d.images, torch.device("cpu")).batches(order, 16)]) for d in (eight, sixteen)]
    assert fed[1].dtype == torch.float32 and float((fed[1] - fed[0]).abs().max()) <= 0.5 / 255 + 1e-6
    final = fit(fit_config(sixteen.root, epochs=1), report=lambda m, s: None)
    assert np.isfinite(final["train_loss"]) and np.isfinite(final["val_auc"])


def _nih_with_copies(tmp_path):
    from data_prep.sources import NihOptions
    from phantom.generate import make_phantom_set

    raw = tmp_path / "raw"
    table = pd.read_csv(make_phantom_set(raw, "nih", n_patients=40, image_px=128, prevalence=0.3, seed=4,
                                         images_per_patient=(1, 4), refiled=0.3))
    return raw, table, NihOptions()


def test_near_duplicate_films_are_removed_and_listed_and_follow_up_films_are_kept(tmp_path):
    raw, table, source = _nih_with_copies(tmp_path)
    copies = table[table["Follow-up #"] >= 100]
    assert len(copies) >= 5 and (table.groupby("Patient ID").size() > 2).sum() >= 5  # many follow-ups too
    out = build(raw / "images", raw / "Data_Entry_2017.csv", tmp_path / "prep",
                BuildSettings(size=64, folds=3, source=source), **QUIET)
    duplicates = pd.read_csv(out / "duplicates.csv")
    assert sorted(duplicates["csv_row"]) == sorted(copies.index + 2)  # exactly the re-exports, no follow-up
    assert (duplicates["kind"] == "near").all() and (duplicates["similarity"] >= 0.9).all()
    assert duplicates["same_patient"].all() and duplicates["same_labels"].all()
    labels = pd.read_csv(out / "labels.csv")
    assert len(labels) == len(table) - len(copies) == len(np.load(out / "images.npy", mmap_mode="r"))
    assert set(duplicates["duplicate_of"]) <= set(labels["image_key"])
    kept_all = build(raw / "images", raw / "Data_Entry_2017.csv", tmp_path / "prep",
                     BuildSettings(size=64, folds=3, source=source, near_duplicates="off"), **QUIET)
    assert len(pd.read_csv(kept_all / "labels.csv")) == len(table)


def test_a_film_filed_again_under_another_patient_is_flagged(tmp_path):
    from PIL import Image

    raw, table, source = _nih_with_copies(tmp_path)
    table = table[table["Follow-up #"] < 100].reset_index(drop=True)
    first = Image.open(raw / "images" / table["Image Index"][0])
    first.resize((100, 100), Image.LANCZOS).save(raw / "images" / "refiled.png")  # another matrix size
    extra = table.iloc[[0]].assign(**{"Image Index": "refiled.png", "Patient ID": 999, "Finding Labels": "Hernia"})
    pd.concat([table, extra]).to_csv(raw / "Data_Entry_2017.csv", index=False)
    out = build(raw / "images", raw / "Data_Entry_2017.csv", tmp_path / "prep", BuildSettings(size=64, folds=3, source=source),
                **QUIET)
    duplicates = pd.read_csv(out / "duplicates.csv")
    assert duplicates["csv_row"].tolist() == [len(table) + 2]
    assert not duplicates["same_patient"][0] and not duplicates["same_labels"][0]
    assert duplicates["duplicate_of"][0] == pd.read_csv(out / "labels.csv")["image_key"][0]


def test_a_holdout_build_has_one_patient_grouped_60_20_20_split(phantom_dir, prepared_dir, tmp_path):
    out = build(phantom_dir, phantom_dir / "labels.csv", tmp_path,
                BuildSettings(size=32, folds=3, seed=0, holdout="60/20/20", workers=1), key=TEST_KEY, log=lambda *_: None)
    data = PreparedDataset(out)
    assert data.is_holdout and data.num_folds == 1 and data.dataset_id != PreparedDataset(prepared_dir).dataset_id
    split = data.split(0, val_fraction=0.5)  # val_fraction does not apply: the split is the data set's
    parts = {name: set(data.patient_keys[getattr(split, name)]) for name in ("train", "val", "test")}
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"]) and not (parts["val"] & parts["test"])
    n_patients = len(set(data.patient_keys))
    assert len(parts["train"]) / n_patients == pytest.approx(0.6, abs=0.1)
    assert len(parts["test"]) / n_patients == pytest.approx(0.2, abs=0.1)
    assert len(split.train) + len(split.val) + len(split.test) == len(data.labels)
    with pytest.raises(DataPrepError, match="outer fold 1 does not exist"):
        data.split(1)
