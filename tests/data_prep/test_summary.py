"""Data-set summaries: every count equals what the data set's own tables (and the raw label table) say."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from data_prep import summary as summary_cli
from data_prep.build import build
from data_prep.settings import BuildSettings
from data_prep.sources import NihOptions
from data_prep.sources.nih import SEED003
from data_prep.sources.nih import read_with_recipe as read_nih_labels
from phantom.generate import make_phantom_set
from data_prep.summary import summarise
from tests.conftest import TEST_KEY


@pytest.fixture(scope="module")
def nih_set(tmp_path_factory):
    """A phantom NIH source built with seed 003's merges and filters, one of its PNGs corrupt."""
    raw = tmp_path_factory.mktemp("nih_raw")
    table = make_phantom_set(raw, kind="nih", n_patients=30, image_px=64, prevalence="real", seed=1)
    rows = pd.read_csv(table)
    kept = rows[rows["View Position"].isin(["AP", "PA"]) & (rows["Finding Labels"] != "No Finding")]
    victim = raw / "images" / kept["Image Index"].iloc[2]
    victim.write_bytes(victim.read_bytes()[:200])
    built = build(raw / "images", table, tmp_path_factory.mktemp("nih_prep"),
                  BuildSettings(size=32, folds=2, source=NihOptions(preset="seed003")),
                  key=TEST_KEY, name="nih_phantom", log=lambda *_: None)
    return raw, table, built


def test_the_summary_counts_equal_the_data_sets_own_tables(nih_set):
    raw, table, built = nih_set
    s = summarise(built)
    names = s.labels["label"].tolist()
    labels = pd.read_csv(built / "labels.csv")
    folds = pd.read_csv(built / "folds.csv")
    assert s.overview["images"] == len(labels) and s.overview["patients"] == labels["patient_key"].nunique()
    assert s.labels.set_index("label")["positives"].to_dict() == labels[names].sum().astype(int).to_dict()
    both = labels[names].fillna(0).to_numpy()
    np.testing.assert_array_equal(s.cooccurrence.to_numpy(), both.T @ both)
    prevalence = labels[names].groupby(folds["fold"]).mean()
    np.testing.assert_allclose(s.folds.set_index("fold")[names].to_numpy(), prevalence.to_numpy())
    assert s.folds["images"].tolist() == folds["fold"].value_counts().sort_index().tolist()
    assert s.rejected.to_dict("records") == [{"reason": "not a readable image", "files": 1}]
    assert s.sizes["images"].sum() == len(labels) and s.views.set_index("view")["images"].to_dict() == \
        labels["view"].value_counts().to_dict()

    source = pd.read_csv(table)
    findings = source["Finding Labels"].str.split("|")
    steps = s.steps
    assert steps.loc["as read", "images"] == len(source)
    assert steps.loc["as read", "Mass"] == findings.map(lambda f: "Mass" in f).sum()  # before the merge
    assert steps.loc["labels merged", "Nodule"] == findings.map(lambda f: bool({"Mass", "Nodule"} & set(f))).sum()
    kept = source["View Position"].isin(["AP", "PA"]) & (source["Finding Labels"] != "No Finding")
    assert steps.loc["views filtered, No Finding dropped", "images"] == kept.sum()
    built_row = steps.loc["built (rejected files and duplicates removed)"]
    assert built_row["images"] == len(labels) and built_row[names].astype(int).to_dict() == \
        labels[names].sum().astype(int).to_dict()


def test_undersampling_is_a_step_whose_counts_are_the_labels_kept(tmp_path):
    table = make_phantom_set(tmp_path, kind="nih", n_patients=40, image_px=32, prevalence="real", seed=4)
    options = replace(SEED003, undersample_top=2, undersample_to=3)
    read = read_nih_labels(table, options)
    steps = {s["step"]: s for s in read.stats["steps"]}
    after = steps["2 most frequent labels undersampled to 3"]
    before = steps["views filtered, No Finding dropped"]
    assert after["positives"] == read.frame[read.names].sum().astype(int).to_dict() and after["images"] == len(read.frame)
    top = sorted(before["positives"], key=lambda n: -before["positives"][n])[:2]
    assert all(before["positives"][n] > 3 for n in top) and {after["positives"][n] for n in top} <= {0, 1, 2, 3}


def test_the_summary_cli_writes_markdown_and_figures_and_refuses_a_folder_that_is_not_a_data_set(nih_set, tmp_path,
                                                                                                 capsys):
    _, _, built = nih_set
    assert summary_cli.main([str(built), "--out", str(tmp_path / "s")]) == 0
    markdown = (tmp_path / "s" / "summary.md").read_text()
    assert markdown == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "## Label counts at each step" in markdown and "| not a readable image | 1 |" in markdown
    assert sorted(p.name for p in (tmp_path / "s" / "figures").iterdir()) == [
        "cooccurrence.png", "label_distribution.png", "sizes_and_views.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in (tmp_path / "s" / "figures").iterdir())
    assert summary_cli.main([str(tmp_path), "--out", str(tmp_path / "t")]) == 2
    assert "is not a prepared data set" in capsys.readouterr().err
