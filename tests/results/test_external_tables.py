"""The report's external-validation table on the handmade sweep's external set, recomputed here with
scikit-learn from the predictions it was written with."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from results.analysis import Analysis
from results.external_tables import external_tables
from results.load import load
from results.query import run_query
from tests.handmade_sweep import EXTERNAL_CELLS, EXTERNAL_LABELS, FOLDS, LABELS, N_PATIENTS, build_sweep

DROP = "Drop, AUC (each model's external - internal), mean +/- sd"


def _macro(score, truth, probs):
    return np.mean([score(truth[~np.isnan(truth[:, k]), k], probs[~np.isnan(truth[:, k]), k])
                    for k in range(truth.shape[1])])


@pytest.fixture
def handmade(engine_url):
    """The handmade sweep on SQLite and on PostgreSQL."""
    return engine_url, build_sweep(engine_url)


def _tables(url, n_boot=200):
    return {t.key: t for t in external_tables(Analysis(load(url), n_boot=n_boot))}


def test_fold_models_drop_is_each_models_external_minus_its_own_test_fold_on_the_same_classes(handmade):
    """Like for like: each fold model's AUC on its own outer test fold and on the external set, both on the classes
    the set judges (scikit-learn), the drop their difference per model, averaged; the columns say mean +/- sd."""
    url, expected = handmade
    table = _tables(url)["external_elsewhere_resnet50"]
    numbers = table.numbers.set_index(["recipe", "model", "tta", "fold", "class_name"])
    fold_of = np.repeat(np.arange(N_PATIENTS) % len(FOLDS), 2)
    judged = [LABELS.index(c) for c in EXTERNAL_LABELS]
    for backbone, recipe in EXTERNAL_CELLS:
        found = expected.external[(backbone, recipe, "none")]
        probs = expected.pooled[(backbone, recipe)]
        internal = [_macro(score, expected.truth[fold_of == f][:, judged], probs[fold_of == f][:, judged])
                    for f in FOLDS for score in (roc_auc_score, average_precision_score)]
        external = [_macro(score, found["truth"], p) for p in found["folds"]
                    for score in (roc_auc_score, average_precision_score)]
        drops = np.subtract(external, internal).reshape(len(FOLDS), 2)
        for f in FOLDS:
            row = numbers.loc[(recipe, "fold", "none", f, "__macro__")]
            assert (row["internal_auc"], row["internal_ap"]) == pytest.approx(internal[2 * f:2 * f + 2])
            assert (row["external_auc"], row["external_ap"]) == pytest.approx(external[2 * f:2 * f + 2])
        mean = numbers.loc[(recipe, "fold models (mean)", "none", pd.NA, "__macro__")]
        assert (mean["auc_drop"], mean["ap_drop"]) == pytest.approx(drops.mean(axis=0).tolist())
        assert mean["auc_drop_sd"] == pytest.approx(drops[:, 0].std(ddof=1))
        shown = table.display[(table.display.Recipe == recipe) & (table.display.Models == "3 fold models")].iloc[0]
        assert shown[DROP] == f"{drops[:, 0].mean():+.3f} +/- {drops[:, 0].std(ddof=1):.3f}"
        hflip = table.display[table.display.Models == "3 fold models + TTA hflip"].iloc[0]
        assert hflip[DROP] == hflip["Internal AUC (own test fold), mean +/- sd over models"] == \
            "not computed (no TTA on the target)"  # the target's predictions had no TTA: not like for like
        ext = [_macro(roc_auc_score, found["truth"], p) for p in expected.external[(backbone, recipe, "hflip")]["folds"]]
        assert numbers.loc[(recipe, "fold models (mean)", "hflip", pd.NA, "__macro__"), "external_auc"] == \
            pytest.approx(np.mean(ext))
    assert not [c for c in table.display.columns if "CI" in c]  # no mean +/- sd under an interval's name
    assert "left out, no counterpart: " + LABELS[2] in table.note and "judges Cardiomegaly (as CARDIOMEGALY)" in table.note


def test_the_fold_ensemble_has_its_external_numbers_and_no_drop(handmade):
    """The target has no internal ensemble (out-of-fold: one model per test image), so no drop is computed."""
    url, expected = handmade
    table = _tables(url)["external_elsewhere_resnet50_ensemble"]
    numbers = table.numbers.set_index(["recipe", "tta", "class_name"])
    for backbone, recipe in EXTERNAL_CELLS:
        for tta in ("none", "hflip"):
            found = expected.external[(backbone, recipe, tta)]
            ensemble = np.mean(found["folds"], axis=0)
            row = numbers.loc[(recipe, tta, "__macro__")]
            assert row["external_auc"] == pytest.approx(_macro(roc_auc_score, found["truth"], ensemble))
            assert row["external_ap"] == pytest.approx(_macro(average_precision_score, found["truth"], ensemble))
            assert row["external_auc_ci_low"] <= row["external_auc"] <= row["external_auc_ci_high"]
            for k, label in enumerate(EXTERNAL_LABELS):
                known = ~np.isnan(found["truth"][:, k])
                assert numbers.loc[(recipe, tta, label), "external_auc"] == pytest.approx(
                    roc_auc_score(found["truth"][known, k], ensemble[known, k]))
    assert list(table.display.columns) == ["Recipe", "Model", "External AP [95% CI]", "External AUC [95% CI]"]
    assert not any("drop" in c or "internal" in c for c in table.numbers.columns)
    assert "Its drop is not computed: the target has no internal ensemble" in table.note
    models = table.display["Model"].tolist()
    assert models.count("fold ensemble") == models.count("fold ensemble + TTA hflip") == len(EXTERNAL_CELLS)


def test_ensemble_rows_are_the_mean_of_the_fold_rows_and_the_view_keeps_them_apart(handmade):
    url, _ = handmade
    rows = run_query(url, "SELECT recipe, model, fold, tta, image_key, class_name, prob FROM external_results "
                          "WHERE backbone = 'resnet50'")
    for _, part in rows.groupby(["recipe", "tta"]):
        folds = part[part.model == "fold"].groupby(["image_key", "class_name"])["prob"].mean()
        ensemble = part[part.model == "ensemble"].set_index(["image_key", "class_name"])["prob"]
        assert part[part.model == "ensemble"]["fold"].isna().all()
        np.testing.assert_allclose(ensemble.loc[folds.index].to_numpy(), folds.to_numpy(), atol=1e-12)


def test_both_sides_of_the_drop_average_only_the_classes_the_external_set_can_judge_and_a_new_set_replaces_rows(
        handmade):
    """An external set with no positive of its second class: the fold model's external macro is its first class
    alone, and so is its internal number on its own test fold; the ensemble's macro too. Recording the name again from another data set drops the
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
    tables = _tables(url, n_boot=0)
    numbers = tables["external_narrow_resnet50"].numbers
    row = numbers[(numbers.model == "fold") & (numbers.class_name == "__macro__")].iloc[0]
    first, fold_0 = LABELS.index(EXTERNAL_LABELS[0]), np.repeat(np.arange(N_PATIENTS) % len(FOLDS), 2) == 0
    assert row["internal_auc"] == pytest.approx(roc_auc_score(expected.truth[fold_0, first],
                                                              expected.pooled[("resnet50", "nih")][fold_0, first]))
    assert row["external_auc"] == pytest.approx(roc_auc_score(truth[:, 0], probs[:, 0]))
    assert row["auc_drop"] == pytest.approx(row["external_auc"] - row["internal_auc"])
    numbers = tables["external_narrow_resnet50_ensemble"].numbers
    assert numbers[numbers.class_name == "__macro__"]["external_auc"].iloc[0] == pytest.approx(
        roc_auc_score(truth[:, 0], probs[:, 0]))
    store.external_set(sweep, "narrow", "phantom_narrow-2", 40, {t: [t] for t in EXTERNAL_LABELS}, [])
    assert run_query(url, "SELECT COUNT(*) FROM external_results WHERE external = 'narrow'").iloc[0, 0] == 0
    assert run_query(url, "SELECT COUNT(*) FROM external_results WHERE external = 'elsewhere'").iloc[0, 0] > 0
    store.engine.dispose()


def test_the_store_names_the_trials_whose_external_predictions_it_holds(handmade):
    """What a resumed sweep compares with its selected trials before predicting an external set again
    (sweeper.evaluate keep_stored): per cell and augmentation, the fold models' trials, and nothing for a cell,
    augmentation or set without predictions."""
    from results.store import ResultsStore

    url, _ = handmade
    store = ResultsStore(url)
    sweep_id = store.sweep_id("handmade")
    (external_id,) = run_query(url, "SELECT id FROM external_sets").id
    for backbone, recipe in EXTERNAL_CELLS:
        cell = {"backbone": backbone, "recipe": recipe, "variant": ""}
        for tta in ("none", "hflip"):
            assert store.external_trial_keys(sweep_id, external_id, cell, tta) == {
                f"{backbone}-{recipe}-{f}-0" for f in FOLDS}
        assert store.external_trial_keys(sweep_id, external_id, cell, "vflip") == set()
        assert store.external_trial_keys(sweep_id, external_id + 1, cell, "none") == set()
    other = {"backbone": "densenet121", "recipe": "scratch", "variant": ""}
    assert (("densenet121", "scratch") not in EXTERNAL_CELLS
            and store.external_trial_keys(sweep_id, external_id, other, "none") == set())
    store.engine.dispose()
