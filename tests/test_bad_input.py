"""Every kind of bad input the issue names, through the commands a user runs: each stops with exit 2 and
one line naming the file, row or key and what was expected; or, for a bad image among good ones, the
image is quarantined with its reason and the rest of the data set is still built (nothing lost).

The function-level cases live beside their modules (test_spec_and_cli, test_labels_and_folds,
test_dicom, test_raster_and_source_builds, test_build, test_results); a fold with no positives for a
class is a metric, not an error: NaN with the reason, the other classes scored
(test_losses_and_metrics). This file is the inventory through the commands."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_prep import build as build_cli
from data_prep import labels as labels_cli
from data_prep.dataset import PreparedDataset
from phantom.generate import IMAGE_ROOTS, make_phantom_set
from results import query as query_cli
from results.store import ResultsStore
from sweeper import evaluate as evaluate_cli
from sweeper import rerun as rerun_cli
from sweeper import run as sweep_cli
from sweeper import weights as weights_cli

SPEC = """
name = "bad"
[data]
target = "phantom"
size = 32
folds = 2
[grid]
backbone = ["resnet18"]
recipe = ["scratch"]
[recipes.scratch]
"""

CASES: dict[str, callable] = {}


def case(function):
    CASES[function.__name__] = function
    return function


def _spec(tmp_path: Path, text: str) -> tuple:
    path = tmp_path / "my_spec.toml"
    path.write_text(text)
    return sweep_cli.main, ["--spec", str(path), "--home", str(tmp_path / "home")], [str(path)]


@case
def spec_unknown_key(tmp_path):
    main, argv, named = _spec(tmp_path, SPEC + "[train]\nepochz = 3\n")
    return main, argv, named + ["train.epochz: unknown key"]


@case
def spec_wrong_type(tmp_path):
    main, argv, named = _spec(tmp_path, SPEC + '[train]\nepochs = "many"\n')
    return main, argv, named + ["train.epochs", "integer"]


@case
def spec_empty_grid(tmp_path):
    main, argv, named = _spec(tmp_path, SPEC.replace('backbone = ["resnet18"]', "backbone = []"))
    return main, argv, named + ["grid.backbone", "at least 1 item"]


@case
def spec_unknown_backbone(tmp_path):
    main, argv, named = _spec(tmp_path, SPEC.replace('"resnet18"', '"resnet51"'))
    return main, argv, named + ["unknown backbone(s) ['resnet51']"]


@case
def spec_source_without_a_path(tmp_path):
    text = SPEC.replace("[grid]", 'sources = { nih = "" }\n[grid]').replace("[recipes.scratch]",
                                                                        '[recipes.scratch]\nsources = ["nih"]')
    main, argv, _ = _spec(tmp_path, text)
    return main, argv + ["--db", f"sqlite:///{tmp_path}/r.db"], ["data set 'nih': pass --data nih=PATH",
                                                                  "CXR_SWEEP_DATA_NIH"]


def _target_build(tmp_path: Path, csv_bytes: bytes) -> tuple:
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    (raw / "labels.csv").write_bytes(csv_bytes)
    return build_cli.main, ["target", "--images", str(raw), "--labels", str(raw / "labels.csv"), "--out",
                            str(tmp_path / "prep"), "--size", "32", "--folds", "2", "--workers", "1"], [
        str(raw / "labels.csv")]


@case
def labels_missing_column(tmp_path):
    main, argv, named = _target_build(tmp_path, b"name,findings\na.dcm,scoliosis\n")
    return main, argv, named + ["missing column(s) ['file']"]


@case
def labels_unknown_label(tmp_path):
    main, argv, named = _target_build(tmp_path, b"file,findings\na.dcm,scoliosis\nb.dcm,oops\n")
    return main, argv, named + ["row 3: unknown finding 'oops'"]


@case
def labels_duplicate_image_rows(tmp_path):
    main, argv, named = _target_build(tmp_path, b"file,findings\na.dcm,scoliosis\na.dcm,normal\n")
    return main, argv, named + ["'a.dcm' listed more than once, at rows [2, 3]"]


@case
def labels_not_utf8(tmp_path):
    main, argv, named = _target_build(tmp_path, "file,findings\nä.dcm,scoliosis\n".encode("latin-1"))
    return main, argv, named + ["not UTF-8"]


@case
def labels_empty_file(tmp_path):
    main, argv, named = _target_build(tmp_path, b"")
    return main, argv, named + ["empty"]


@case
def images_every_one_rejected(tmp_path):
    main, argv, named = _target_build(tmp_path, b"file,findings\na.dcm,scoliosis\nb.dcm,normal\n")
    (tmp_path / "raw" / "a.dcm").write_bytes(b"junk")
    (tmp_path / "raw" / "b.dcm").write_bytes(b"")
    return main, argv, ["every image was rejected (2) from", "row 2: not a readable DICOM", "2 x not a readable"]


@case
def images_most_not_found(tmp_path):
    main, argv, named = _target_build(tmp_path, b"file,findings\na.dcm,scoliosis\nb.dcm,normal\n")
    return main, argv, [f"2 of 2 images listed in {tmp_path / 'raw' / 'labels.csv'} were not found under {tmp_path / 'raw'}",
                        "the images of label-table rows 2, 3", "--allow-missing"]  # rows, not file names


@case
def images_folder_missing(tmp_path):
    main, argv, named = _target_build(tmp_path, b"file,findings\na.dcm,scoliosis\n")
    argv[argv.index("--images") + 1] = str(tmp_path / "nowhere")
    return main, argv, [f"image folder {tmp_path / 'nowhere'} does not exist"]


@case
def db_url_cannot_be_opened(tmp_path):
    return query_cli.main, ["SELECT 1", "--db", f"sqlite:///{tmp_path}/missing/r.db"], [
        f"{tmp_path}/missing", "does not exist"]


@case
def db_url_not_a_url(tmp_path):
    return query_cli.main, ["SELECT 1", "--db", "results.db"], ["results.db", "not a SQLAlchemy URL"]


@case
def db_of_a_newer_schema(tmp_path):
    url = f"sqlite:///{tmp_path}/newer.db"
    store = ResultsStore(url)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE schema_meta SET value = '99' WHERE key = 'schema_version'")
    store.engine.dispose()
    main, argv, _ = _spec(tmp_path, SPEC)
    return main, argv + ["--db", url], [f"{tmp_path}/newer.db", "schema version 99"]


def _labels(tmp_path: Path, key: bytes | None) -> tuple:
    """data_prep.labels on a good target table, with the pseudonym key file holding `key` (None: a folder)."""
    import os

    key_file = tmp_path / "pseudonym.key"  # the test's own: a freed tmp_path's name is given out again
    key_file.mkdir() if key is None else key_file.write_bytes(key)
    os.environ["CXR_SWEEP_PSEUDONYM_KEY_FILE"] = str(key_file)  # the autouse fixture restores it after the test
    (tmp_path / "labels.csv").write_text("file,findings,patient\na.dcm,scoliosis,p1\n")
    return labels_cli.main, ["target", "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o.csv")], [
        f"pseudonym key file {key_file}"]


@case
def pseudonym_key_too_short(tmp_path):
    main, argv, named = _labels(tmp_path, b"0123456789")
    return main, argv, named + ["holds 10 characters; expected a text file of at least 32 characters"]


@case
def pseudonym_key_not_a_file(tmp_path):
    main, argv, named = _labels(tmp_path, None)
    return main, argv, named + ["cannot be created or read (Is a directory)"]


@case
def rerun_without_naming_the_trial(tmp_path):
    return rerun_cli.main, ["--cell", "resnet50/imagenet"], ["name the trial: --trial TRIAL_KEY, or --cell CELL with --fold N"]


@case
def evaluate_a_mapping_for_no_external_set(tmp_path):
    return evaluate_cli.main, ["--external", f"nih={tmp_path}", "--mapping", "chexpert=m.toml"], [
        "--mapping names ['chexpert'], which no --external names"]


@case
def weights_of_an_unknown_backbone(tmp_path):
    return weights_cli.main, ["--backbone", "resnet51", "--check"], ["Unknown model resnet51"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_stops_with_one_line_naming_where_and_what(name, tmp_path, capsys):
    main, argv, expected = CASES[name](tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert not (tmp_path / "home" / "ray").exists()  # stopped before any Ray work


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if how == "truncate" else b"this is not an image")


@pytest.mark.parametrize("kind, how", [("target", "truncate"), ("target", "junk"), ("target", "missing"),
                                       ("nih", "truncate"), ("nih", "junk"), ("chexpert", "truncate"),
                                       ("chexpert", "junk")])
def test_a_bad_image_is_quarantined_with_its_row_and_reason_and_the_rest_is_built(kind, how, tmp_path, capsys):
    """Corrupt DICOM (target), PNG (NIH) and JPG (CheXpert), and a listed file that is not there."""
    raw = tmp_path / "raw"
    table = make_phantom_set(raw, kind=kind, n_patients=8, image_px=48, prevalence=0.3, seed=4)
    rows = pd.read_csv(table)
    column = rows.columns[0]  # the image path column of each format
    victim = raw / IMAGE_ROOTS[kind] / rows[column].iloc[3]
    if how == "missing":
        victim.unlink()
    else:
        _corrupt(victim, how)
    extra = {"nih": ["--preset", "none"], "chexpert": ["--policy", "u_ignore"]}.get(kind, [])
    extra += ["--allow-missing"] if how == "missing" else []  # 1 of a small set's films is more than 1%
    assert build_cli.main([kind, "--images", str(raw / IMAGE_ROOTS[kind]), "--labels", str(table), "--out",
                           str(tmp_path / "prep"), "--size", "32", "--folds", "2", "--workers", "1", *extra]) == 0
    data = PreparedDataset(capsys.readouterr().out.strip().splitlines()[-1])
    rejected = pd.read_csv(data.root / "rejected.csv")
    assert rejected["csv_row"].tolist() == [5]  # the table's row 5 (its header is row 1)
    reason = rejected["reason"].iloc[0]
    assert {"missing": "file not found", "junk": "not", "truncate": ""}[how] in reason and reason
    assert data.images.shape[0] == len(rows) - 1 and np.isfinite(data.images).all()
    assert data.manifest["counts"]["missing"] == (how == "missing")

