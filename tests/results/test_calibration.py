"""results.calibration: Brier score against scikit-learn, expected calibration error on cases worked by hand."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from results.calibration import brier, expected_calibration_error, reliability_bins


def test_the_brier_score_is_scikit_learns_with_unknown_labels_left_out():
    truth = np.array([1, 0, np.nan, 1, 0, 0])
    probs = np.array([0.9, 0.2, 0.99, 0.4, 0.1, 0.7])
    keep = ~np.isnan(truth)
    assert brier(truth, probs) == pytest.approx(brier_score_loss(truth[keep], probs[keep]))
    assert brier(truth, probs) == pytest.approx((0.01 + 0.04 + 0.36 + 0.01 + 0.49) / 5)


def test_expected_calibration_error_worked_by_hand():
    # Two equal-mass bins of 4: {0.1, 0.1, 0.2, 0.2} with 1 positive -> |0.25 - 0.15| = 0.10;
    # {0.6, 0.7, 0.8, 0.9} with 2 positives -> |0.5 - 0.75| = 0.25. ECE = 0.5 * 0.10 + 0.5 * 0.25 = 0.175
    probs = np.array([0.9, 0.1, 0.6, 0.2, 0.8, 0.1, 0.7, 0.2])
    truth = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    assert expected_calibration_error(truth, probs, bins=2) == pytest.approx(0.175)
    assert [(b.images, b.observed_frequency) for b in reliability_bins(truth, probs, bins=2)] == [(4, 0.25), (4, 0.5)]


def test_a_calibrated_model_has_a_small_error_and_an_overconfident_one_a_large_one():
    rng = np.random.default_rng(0)
    probs = rng.random(20_000) * 0.5  # rare findings: most probabilities low
    truth = (rng.random(20_000) < probs).astype(float)  # outcomes drawn at exactly those probabilities
    assert expected_calibration_error(truth, probs) < 0.01
    assert expected_calibration_error(truth, np.clip(probs * 2, 0, 1)) > 0.2  # twice as sure as it should be


def test_equal_mass_bins_agree_with_scikit_learns_quantile_curve_when_there_are_no_ties():
    rng = np.random.default_rng(1)
    probs = rng.random(1000)
    truth = (rng.random(1000) < probs).astype(float)
    observed, predicted = calibration_curve(truth, probs, n_bins=10, strategy="quantile")
    bins = reliability_bins(truth, probs)
    assert [b.images for b in bins] == [100] * 10
    assert [b.observed_frequency for b in bins] == pytest.approx(observed)
    assert [b.mean_probability for b in bins] == pytest.approx(predicted)
