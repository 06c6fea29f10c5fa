"""The report's subgroup table on the handmade sweep, recomputed here with scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from data_prep.labelset import age_band
from results.analysis import Analysis
from results.load import load
from results.subgroup_tables import LOWEST, subgroup_tables
from tests.handmade_sweep import LABELS, build_sweep


@pytest.fixture
def analysis(engine_url):
    """The handmade sweep on SQLite and on PostgreSQL."""
    expected = build_sweep(engine_url)
    return Analysis(load(engine_url), n_boot=50), expected


NAMES = {"sex": "Sex", "age_band": "Age", "view": "View"}


def _grouping(truth, probs, labels, minimum):
    """({group: classes large enough there}, the classes shared by the groups with any, {group: scikit-learn's
    macro AUC on the shared classes})."""
    large = {}
    for value in sorted(set(labels) - {""}):
        rows = labels == value
        large[value] = {k for k in range(truth.shape[1])
                        if (truth[rows, k] == 1).sum() >= minimum[0] and (truth[rows, k] == 0).sum() >= minimum[1]}
    shared = sorted(set.intersection(*[c for c in large.values() if c])) if any(large.values()) else []
    auc = {}
    for value, classes in large.items():
        rows = labels == value
        if classes and shared:
            scores = []
            for k in shared:
                known = rows & ~np.isnan(truth[:, k])
                scores.append(roc_auc_score(truth[known, k], probs[known, k]))
            auc[value] = np.mean(scores)
    return large, shared, auc


def test_a_groupings_groups_are_compared_on_the_same_classes_and_its_lowest_is_named(analysis):
    """At 9 positives and 9 negatives men lack Effusion, which women have: both are compared on the other two, and
    the lowest group is the minimum within the grouping, each recomputed with scikit-learn."""
    found, expected = analysis
    (table,) = [t for t in subgroup_tables(found, minimum=(9, 9)) if t.key == "subgroups_resnet50"]
    numbers = table.numbers.set_index(["recipe", "attribute", "group"])
    probs, truth = expected.pooled[("resnet50", "nih")], expected.truth
    lowest = table.display.set_index("Recipe").loc["nih", LOWEST].split("; ")
    for attribute, labels in expected.groups.items():
        large, shared, auc = _grouping(truth, probs, labels, (9, 9))
        for value in large:
            got = numbers.loc[("nih", attribute, value)]
            assert got["images"] == (labels == value).sum() and got["large_classes"] == len(large[value])
            assert got["classes"] == len(shared) and got["compared_classes"] == ";".join(LABELS[k] for k in shared)
            assert got["auc"] == pytest.approx(auc[value])
            assert got["auc_ci_low"] <= got["auc"] <= got["auc_ci_high"]
        worst = min(auc, key=auc.get)
        assert f"{NAMES[attribute]}: {worst} ({auc[worst]:.3f} of {len(auc)} groups, on {len(shared)}/3 classes)" \
            in lowest
    large, shared, _ = _grouping(truth, probs, expected.groups["sex"], (9, 9))
    assert large["F"] != large["M"] and len(shared) == 2  # the case the rule is for
    assert "every group of its grouping" in table.note and "groupings are not compared" in table.note


def test_a_group_too_small_is_left_out_and_a_grouping_with_fewer_than_two_is_not_compared(analysis):
    """At 11 and 11 the 80+ band and PA films have no class large enough: too small, and their groupings have
    no lowest group; men have Nodule only, so both sexes are compared on it."""
    found, expected = analysis
    (table,) = [t for t in subgroup_tables(found, minimum=(11, 11)) if t.key == "subgroups_resnet50"]
    row = table.display.set_index("Recipe").loc["nih"]
    assert row["Age: 80+"] == f"too small ({(expected.groups['age_band'] == '80+').sum()} images)"
    assert row["View: PA"].startswith("too small (")
    assert "Age: none (fewer than two groups large enough)" in row[LOWEST]
    assert "View: none (fewer than two groups large enough)" in row[LOWEST]
    numbers = table.numbers.set_index(["recipe", "attribute", "group"])
    assert numbers.loc[("nih", "sex", "F"), "compared_classes"] == numbers.loc[("nih", "sex", "M"),
                                                                               "compared_classes"] == "Nodule"


def test_a_grouping_with_one_known_group_is_left_out_not_shown_as_a_subgroup(engine_url):
    """Every film PA: 'View: PA' would be the whole test set, and the lowest group the overall AUC."""
    from results.store import ResultsStore

    build_sweep(engine_url)
    store = ResultsStore(engine_url)
    sweep = store.sweep_id("handmade")
    store.image_groups(sweep, [{"image_key": f"img{i:04d}", "sex": "F" if i // 2 % 2 else "M", "age_band": "",
                                "view": "PA"} for i in range(72)])
    store.engine.dispose()
    (table,) = [t for t in subgroup_tables(Analysis(load(engine_url), n_boot=0), minimum=(5, 5))
                if t.key == "subgroups_resnet50"]
    assert [c for c in table.display.columns if c.startswith(("View", "Age"))] == []
    assert set(table.numbers["attribute"]) == {"sex"}
    assert "Left out: View (one known group, PA: the whole test set less unknowns)." in table.note
    assert all(text.startswith("Sex: ") and ";" not in text for text in table.display[LOWEST])


def test_subgroups_below_the_minimum_are_shown_as_too_small_not_as_numbers(analysis):
    found, _ = analysis
    (table,) = [t for t in subgroup_tables(found) if t.key == "subgroups_densenet121"]  # 30 and 30: none qualifies
    cells = table.display.drop(columns=["Recipe", LOWEST]).to_numpy().ravel()
    assert all(c.startswith("too small (") for c in cells)
    assert all("none (fewer than two groups large enough)" in c for c in table.display[LOWEST])


@pytest.mark.parametrize("years, band", [("0", "0-17"), ("17", "0-17"), ("18", "18-39"), ("59", "40-59"),
                                         ("79", "60-79"), ("80", "80+"), ("90+", "80+"), ("", "")])
def test_age_bands(years, band):
    assert age_band(years) == band
