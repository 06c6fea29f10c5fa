"""The report's subgroup table on the handmade sweep, recomputed here with scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from data_prep.labelset import age_band
from results.analysis import Analysis
from results.load import load
from results.subgroup_tables import subgroup_tables
from tests.handmade_sweep import build_sweep


@pytest.fixture
def analysis(engine_url):
    """The handmade sweep on SQLite and on PostgreSQL."""
    expected = build_sweep(engine_url)
    return Analysis(load(engine_url), n_boot=100), expected


def test_auc_per_subgroup_is_sklearns_on_the_classes_large_enough_there_and_the_worst_group_is_named(analysis):
    found, expected = analysis
    (table,) = [t for t in subgroup_tables(found, minimum=(5, 5)) if t.key == "subgroups_resnet50"]
    numbers = table.numbers.set_index(["recipe", "attribute", "group"])
    probs, truth = expected.pooled[("resnet50", "nih")], expected.truth
    for attribute, groups in expected.groups.items():
        for value in sorted(set(groups) - {""}):
            rows = groups == value
            scores = []
            for k in range(truth.shape[1]):
                y, p = truth[rows, k], probs[rows, k]
                known = ~np.isnan(y)
                if (y[known] == 1).sum() >= 5 and (y[known] == 0).sum() >= 5:
                    scores.append(roc_auc_score(y[known], p[known]))
            got = numbers.loc[("nih", attribute, value)]
            assert got["images"] == rows.sum() and got["classes"] == len(scores)
            assert got["auc"] == pytest.approx(np.mean(scores)) and got["auc_ci_low"] <= got["auc"] <= got["auc_ci_high"]
    row = table.display.set_index("Recipe").loc["nih"]
    shown = numbers.loc["nih"]
    worst = shown["auc"].idxmin()
    assert row["Worst group"] == f"{ {'sex': 'Sex', 'age_band': 'Age', 'view': 'View'}[worst[0]]}: {worst[1]} " \
                                 f"({shown['auc'].min():.3f})"


def test_subgroups_below_the_minimum_are_shown_as_too_small_not_as_numbers(analysis):
    found, _ = analysis
    (table,) = [t for t in subgroup_tables(found) if t.key == "subgroups_densenet121"]  # 30 and 30: none qualifies
    cells = table.display.drop(columns=["Recipe", "Worst group"]).to_numpy().ravel()
    assert all(c.startswith("too small (") for c in cells)
    assert set(table.display["Worst group"]) == {"none large enough"}


@pytest.mark.parametrize("years, band", [("0", "0-17"), ("17", "0-17"), ("18", "18-39"), ("59", "40-59"),
                                         ("79", "60-79"), ("80", "80+"), ("90+", "80+"), ("", "")])
def test_age_bands(years, band):
    assert age_band(years) == band
