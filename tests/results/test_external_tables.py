"""The report's external-validation table on the handmade sweep's external set, recomputed here with
scikit-learn from the predictions it was written with."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from results.analysis import Analysis
from results.external_tables import external_tables
from results.load import load
from results.query import run_query
from tests.handmade_sweep import EXTERNAL_CELLS, EXTERNAL_LABELS, LABELS, build_sweep


def _macro(score, truth, probs):
    return np.mean([score(truth[~np.isnan(truth[:, k]), k], probs[~np.isnan(truth[:, k]), k])
                    for k in range(truth.shape[1])])


@pytest.fixture
def handmade(engine_url):
    """The handmade sweep on SQLite and on PostgreSQL."""
    return engine_url, build_sweep(engine_url)


def test_external_rows_are_sklearns_numbers_per_model_and_tta_and_internal_uses_the_judged_classes_only(handmade):
    url, expected = handmade
    (table,) = [t for t in external_tables(Analysis(load(url), n_boot=200)) if t.key == "external_elsewhere_resnet50"]
    numbers = table.numbers[table.numbers.class_name == "__macro__"].set_index(["recipe", "model", "tta"])
    per_class = table.numbers[table.numbers.class_name != "__macro__"].set_index(["recipe", "tta", "class_name"])
    judged = [LABELS.index(c) for c in EXTERNAL_LABELS]
    for backbone, recipe in EXTERNAL_CELLS:
        internal = _macro(roc_auc_score, expected.truth[:, judged], expected.pooled[(backbone, recipe)][:, judged])
        for tta in ("none", "hflip"):
            found = expected.external[(backbone, recipe, tta)]
            per_fold = [_macro(roc_auc_score, found["truth"], p) for p in found["folds"]]
            ensemble = np.mean(found["folds"], axis=0)
            assert numbers.loc[(recipe, "fold", tta), "external_auc"] == pytest.approx(np.mean(per_fold))
            assert numbers.loc[(recipe, "fold", tta), "external_auc_sd"] == pytest.approx(np.std(per_fold, ddof=1))
            row = numbers.loc[(recipe, "ensemble", tta)]
            assert row["external_auc"] == pytest.approx(_macro(roc_auc_score, found["truth"], ensemble))
            assert row["external_ap"] == pytest.approx(_macro(average_precision_score, found["truth"], ensemble))
            assert row["internal_auc"] == pytest.approx(internal)
            assert row["auc_drop"] == pytest.approx(row["external_auc"] - internal)
            for k, label in enumerate(EXTERNAL_LABELS):
                known = ~np.isnan(found["truth"][:, k])
                assert per_class.loc[(recipe, tta, label), "external_auc"] == pytest.approx(
                    roc_auc_score(found["truth"][known, k], ensemble[known, k]))
    models = table.display["Model"].tolist()
    assert models.count("fold ensemble") == models.count("fold ensemble + TTA hflip") == len(EXTERNAL_CELLS)
    assert "left out, no counterpart: " + LABELS[2] in table.note and "judges Cardiomegaly (as CARDIOMEGALY)" in table.note


def test_ensemble_rows_are_the_mean_of_the_fold_rows_and_the_view_keeps_them_apart(handmade):
    url, _ = handmade
    rows = run_query(url, "SELECT recipe, model, fold, tta, image_key, class_name, prob FROM external_results "
                          "WHERE backbone = 'resnet50'")
    for (recipe, tta), part in rows.groupby(["recipe", "tta"]):
        folds = part[part.model == "fold"].groupby(["image_key", "class_name"])["prob"].mean()
        ensemble = part[part.model == "ensemble"].set_index(["image_key", "class_name"])["prob"]
        assert part[part.model == "ensemble"]["fold"].isna().all()
        np.testing.assert_allclose(ensemble.loc[folds.index].to_numpy(), folds.to_numpy(), atol=1e-12)


def test_both_sides_of_the_drop_average_only_the_classes_the_external_set_can_judge_and_a_new_set_replaces_rows(
        handmade):
    """An external set with no positive of its second class: the ensemble's macro is its first class alone, and
    so is the internal number it is compared with. Recording the name again from another data set drops the
    rows that described the old one."""
    from results.store import ResultsStore

    url, expected = handmade
    store = ResultsStore(url)
    sweep = store.sweep_id("handmade")
    truth = np.zeros((40, 2))
    truth[::4, 0] = 1
    probs = np.clip(truth * 0.3 + np.linspace(0, 0.6, 40)[:, None], 0, 1)
    keys = {"image_keys": [f"n{i}" for i in range(40)], "patient_keys": [f"q{i}" for i in range(40)], "labels": truth}
    external = store.external_set(sweep, "narrow", "phantom_narrow-1", 40, {t: [t] for t in EXTERNAL_LABELS}, [])
    store.external_predictions(sweep, external, {"backbone": "resnet50", "recipe": "nih", "variant": ""}, "none",
                               [{"model": "fold", "fold": 0, **keys, "probs": probs},
                                {"model": "ensemble", **keys, "probs": probs}], EXTERNAL_LABELS)
    (table,) = [t for t in external_tables(Analysis(load(url), n_boot=0)) if t.key == "external_narrow_resnet50"]
    row = table.numbers[(table.numbers.model == "ensemble") & (table.numbers.class_name == "__macro__")].iloc[0]
    first = LABELS.index(EXTERNAL_LABELS[0])
    assert row["internal_auc"] == pytest.approx(roc_auc_score(expected.truth[:, first],
                                                              expected.pooled[("resnet50", "nih")][:, first]))
    assert row["external_auc"] == pytest.approx(roc_auc_score(truth[:, 0], probs[:, 0]))
    store.external_set(sweep, "narrow", "phantom_narrow-2", 40, {t: [t] for t in EXTERNAL_LABELS}, [])
    assert run_query(url, "SELECT COUNT(*) FROM external_results WHERE external = 'narrow'").iloc[0, 0] == 0
    assert run_query(url, "SELECT COUNT(*) FROM external_results WHERE external = 'elsewhere'").iloc[0, 0] > 0
    store.engine.dispose()
