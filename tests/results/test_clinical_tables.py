"""The report's operating-point and calibration tables on the handmade sweep, recomputed here with
scikit-learn from the predictions the sweep was written with (tests/handmade_sweep.py)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, confusion_matrix, recall_score, roc_curve

from results import stats
from results.analysis import Analysis
from results.calibration import calibration_score, expected_calibration_error, fit_temperature
from results.clinical_tables import Clinical
from results.load import load
from results.operating_points import rate_score
from results.report import build
from results.report import main as report_main
from results.schema import MACRO
from tests.handmade_sweep import FOLDS, LABELS, build_sweep

CELL = ("resnet50", "nih", "")


@pytest.fixture
def handmade(engine_url):
    """The handmade sweep on SQLite and on PostgreSQL."""
    url = engine_url
    expected = build_sweep(url)
    return url, expected, Clinical(Analysis(load(url), n_boot=200), calibrate=True)


def _fold_of(expected):
    return np.repeat(np.arange(len(expected.patients) // 2) % len(FOLDS), 2)


def _youden_threshold(truth, probs) -> float:
    """scikit-learn's best ROC point (positive when prob >= its cut), as the documented `prob > threshold`:
    halfway from the cut to the next lower validation score."""
    keep = ~np.isnan(truth)
    fpr, tpr, cuts = roc_curve(truth[keep], probs[keep])
    cut = cuts[np.argmax(tpr - fpr)]
    return (cut + probs[keep][probs[keep] < cut].max()) / 2

def test_youdens_operating_point_is_fitted_per_fold_on_validation_and_scored_on_the_pooled_test_folds(handmade):
    url, expected, clinical = handmade
    truth, probs, fold_of = expected.truth, expected.pooled[CELL[:2]], _fold_of(expected)
    said = np.zeros(truth.shape, bool)
    for fold, (val_rows, val_probs) in zip(FOLDS, expected.validation[CELL[:2]]):
        rows = fold_of == fold
        for k in range(len(LABELS)):
            said[rows, k] = probs[rows, k] > _youden_threshold(truth[val_rows, k], val_probs[:, k])
    rates = {"sensitivity": [], "specificity": [], "ppv": [], "npv": []}
    for k in range(len(LABELS)):
        keep = ~np.isnan(truth[:, k])
        tn, fp, fn, tp = confusion_matrix(truth[keep, k], said[keep, k]).ravel()
        for name, value in (("sensitivity", tp / (tp + fn)), ("specificity", tn / (tn + fp)),
                            ("ppv", tp / (tp + fp)), ("npv", tn / (tn + fn))):
            rates[name].append(value)
    table = clinical.operating_points(CELL)
    youden = table[table.rule == "youden"].set_index(["quantity", "class_name"])
    for name, values in rates.items():
        assert youden.loc[(name, MACRO), "estimate"] == pytest.approx(np.mean(values))
        assert [youden.loc[(name, label), "estimate"] for label in LABELS] == pytest.approx(values)
        low, high = youden.loc[(name, MACRO), ["ci_low", "ci_high"]]
        assert low <= np.mean(values) <= high


def test_calibration_is_scikit_learns_brier_and_the_ece_per_class_and_temperature_is_a_logistic_fit(handmade):
    url, expected, clinical = handmade
    truth, probs = expected.truth, expected.pooled[CELL[:2]]
    table = clinical.calibration(CELL).set_index(["probabilities", "quantity", "class_name"])
    for k, label in enumerate(LABELS):
        keep = ~np.isnan(truth[:, k])
        assert table.loc[("raw", "brier", label), "estimate"] == pytest.approx(
            brier_score_loss(truth[keep, k], probs[keep, k]))
        assert table.loc[("raw", "ece", label), "estimate"] == pytest.approx(
            expected_calibration_error(truth[:, k], probs[:, k]))
    # temperature per fold: a logistic regression on the validation logits without intercept has slope 1/T
    for fold, (val_rows, val_probs) in zip(FOLDS, expected.validation[CELL[:2]]):
        y, p = truth[val_rows].ravel(), val_probs.ravel()
        keep = ~np.isnan(y)
        logit = np.log(p[keep] / (1 - p[keep]))[:, None]
        slope = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10).fit(logit, y[keep]).coef_[0, 0]
        assert clinical.temperatures(CELL)[fold] == pytest.approx(1 / slope, rel=1e-3)
    assert ("temperature-scaled", "brier", MACRO) in table.index


def test_a_temperature_recovers_how_overconfident_the_probabilities_were():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (4000, 2))
    truth = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    assert fit_temperature(truth, 1 / (1 + np.exp(-2.5 * z))) == pytest.approx(2.5, rel=0.1)
    assert np.isnan(fit_temperature(np.full(3, np.nan), np.full(3, 0.5)))


def test_resampled_rates_and_brier_are_scikit_learns_with_the_same_patient_weights():
    rng = np.random.default_rng(2)
    n, classes = 90, 2
    truth = (rng.random((n, classes)) < 0.3).astype(float)
    truth[::11, 1] = np.nan
    probs = np.clip(0.5 * truth + rng.random((n, classes)) * 0.6, 0, 1)
    thresholds = np.full((n, classes), 0.45)
    patients = np.repeat(np.arange(n // 3), 3)
    got = stats.column_intervals(rate_score(np.nan_to_num(truth, nan=np.nan), probs, thresholds), patients, 60, seed=3)
    brier_got = stats.column_intervals(calibration_score(truth, probs), patients, 60, seed=3)
    (weights,) = list(stats.patient_weights(patients, 60, seed=3))
    for k in range(classes):
        keep = ~np.isnan(truth[:, k])
        sens = [recall_score(truth[keep, k], probs[keep, k] > 0.45, sample_weight=w[keep]) for w in weights]
        spec = [recall_score(1 - truth[keep, k], probs[keep, k] <= 0.45, sample_weight=w[keep]) for w in weights]
        brier = [brier_score_loss(truth[keep, k], probs[keep, k], sample_weight=w[keep]) for w in weights]
        for (_, low, high), values in ((got["sensitivity"], sens), (got["specificity"], spec),
                                              (brier_got["brier"], brier)):
            assert (low[k], high[k]) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))
        assert got["sensitivity"][0][k] == pytest.approx(recall_score(truth[keep, k], probs[keep, k] > 0.45))


def test_the_report_has_both_sections_and_the_cli_names_a_bad_rule(handmade, capsys):
    url, _, _ = handmade
    built = build(url, n_boot=50, figures=False, rules=("youden", "sensitivity:0.8"), calibrate=True)
    sections = {heading: tables for heading, tables, _ in built.sections}
    (first, *_) = sections["Operating points"]
    assert set(first.display["Threshold rule (fitted on inner validation)"]) == {"youden", "sensitivity:0.8"}
    assert {"Sensitivity", "Specificity", "PPV", "NPV"} <= set(first.display.columns)
    assert any(v.startswith("temperature-scaled (T per fold: ") for v in sections["Calibration"][0].display["Probabilities"])
    assert report_main(["--db", url, "--threshold", "sensitivity:2"]) == 2
    assert "the sensitivity must be a share in (0, 1]" in capsys.readouterr().err


def test_a_cell_with_a_fold_that_kept_no_validation_predictions_gets_no_operating_points(handmade):
    """As for trials from before schema 8 in a sweep resumed across it: its numbers would cover only some
    folds, so it has none, while the other cells keep theirs."""
    from sqlalchemy import create_engine, text

    url, _, _ = handmade
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM test_predictions WHERE split = 'val' AND trial_id IN (SELECT trial_id FROM "
                          "selected_trials WHERE backbone = 'resnet50' AND recipe = 'nih' AND fold = 1)"))
    engine.dispose()
    clinical = Clinical(Analysis(load(url), n_boot=0), calibrate=True)
    assert clinical.operating_points(CELL).empty and not clinical.operating_points(("resnet50", "scratch", "")).empty
    assert set(clinical.calibration(CELL).probabilities) == {"raw"}
