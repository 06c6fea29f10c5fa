"""results.operating_points: thresholds against scikit-learn's roc_curve, rates against hand counts."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_curve

from results.operating_points import RuleError, fit_threshold, rates_at


def _data(seed: int, n: int = 500, decimals: int = 3):
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.25).astype(float)
    probs = np.round(1 / (1 + np.exp(-(1.5 * truth + rng.normal(0, 1, n) - 1))), decimals)  # ties at 3 decimals
    return truth, probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youdens_threshold_reaches_the_best_point_of_scikit_learns_roc_curve(seed):
    truth, probs = _data(seed)
    fpr, tpr, _ = roc_curve(truth, probs)
    rates = rates_at(fit_threshold("youden", truth, probs), truth, probs)
    assert rates.sensitivity - (1 - rates.specificity) == pytest.approx((tpr - fpr).max())


@pytest.mark.parametrize("wanted", [0.5, 0.8, 0.9, 1.0])
def test_the_sensitivity_rule_reaches_it_with_the_fewest_false_positives_scikit_learn_allows(wanted):
    truth, probs = _data(3)
    fpr, tpr, _ = roc_curve(truth, probs)
    rates = rates_at(fit_threshold(f"sensitivity:{wanted}", truth, probs), truth, probs)
    assert rates.sensitivity >= wanted
    assert 1 - rates.specificity == pytest.approx(fpr[tpr >= wanted].min())


def test_rates_are_the_confusion_matrix_and_unknown_labels_are_left_out():
    truth, probs = _data(4)
    truth[::9] = np.nan
    keep = ~np.isnan(truth)
    tn, fp, fn, tp = confusion_matrix(truth[keep], probs[keep] > 0.3).ravel()
    rates = rates_at(0.3, truth, probs)
    assert (rates.sensitivity, rates.specificity) == (tp / (tp + fn), tn / (tn + fp))
    assert (rates.ppv, rates.npv) == (tp / (tp + fp), tn / (tn + fn))
    assert fit_threshold("prevalence", truth, probs) == pytest.approx(truth[keep].mean())


def test_a_threshold_on_a_score_calls_that_score_positive_and_bad_rules_are_named():
    truth, probs = np.array([0, 0, 1, 1.0]), np.array([0.1, 0.4, 0.4, 0.8])
    assert rates_at(fit_threshold("sensitivity:1", truth, probs), truth, probs).sensitivity == 1.0
    assert np.isnan(fit_threshold("youden", np.zeros(4), probs))
    with pytest.raises(RuleError, match="expected one of prevalence, youden, sensitivity:S"):
        fit_threshold("f1", truth, probs)
    with pytest.raises(RuleError, match="a share in"):
        fit_threshold("sensitivity:90", truth, probs)


@pytest.mark.parametrize("seed, wanted", [(5, 0.7), (6, 0.85), (7, 0.95)])
def test_the_sensitivity_rule_picks_the_highest_threshold_that_reaches_it(seed, wanted):
    """Among every score as a cut (positive when >= it), the highest reaching the wanted sensitivity: a
    lower one would call more negatives positive on new images for nothing."""
    truth, probs = _data(seed, decimals=2)
    threshold = fit_threshold(f"sensitivity:{wanted}", truth, probs)
    reached = [c for c in np.unique(probs) if (probs[truth == 1] >= c).mean() >= wanted]
    assert rates_at(threshold, truth, probs).sensitivity >= wanted
    assert not (probs > threshold).sum() - (probs >= max(reached)).sum()  # the same images called positive


def _exact_youden(truth, probs) -> dict:
    """{every score as a cut (positive when >= it): Youden's J = tp/P - fp/N as an exact fraction}."""
    positives, negatives = int((truth == 1).sum()), int((truth == 0).sum())
    return {c: Fraction(int(((probs >= c) & (truth == 1)).sum()), positives)
            - Fraction(int(((probs >= c) & (truth == 0)).sum()), negatives) for c in np.unique(probs)}


def _seed_9():
    """60 images at two decimals whose two best cuts tie exactly; in doubles the lower one is ahead by 1e-16."""
    rng = np.random.default_rng(9)
    truth = (rng.random(60) < 0.3).astype(float)
    return truth, np.round(1 / (1 + np.exp(-(truth + rng.normal(0, 1, 60) - 1))), 2)


@pytest.mark.parametrize("truth, probs", [
    (np.array([1, 1, 1, 0, 0, 0.0]), np.array([0.9, 0.8, 0.4, 0.5, 0.3, 0.2])),  # J: 2/3 - 0 and 1 - 1/3
    _seed_9()])
def test_youden_breaks_exact_ties_by_the_highest_cut_not_by_rounding_noise(truth, probs):
    """J compared in fractions: among the cuts with the largest, the highest (fewest called positive), as the
    report's note says; the same images are called positive as by `>=` that cut."""
    j = _exact_youden(truth, probs)
    best = max(j.values())
    highest = max(c for c, v in j.items() if v == best)
    assert sum(v == best for v in j.values()) > 1  # a real tie
    threshold = fit_threshold("youden", truth, probs)
    assert ((probs > threshold) == (probs >= highest)).all()
    lower = probs[probs < highest].max()
    assert threshold == pytest.approx((highest + lower) / 2)  # halfway to the next lower score


def test_where_no_cut_beats_chance_youden_calls_nothing_positive():
    """Positives scored below every negative: J is at most 0, tied by calling nothing and calling everything
    positive; the highest cut wins, so the fold's test images are all called negative."""
    truth, probs = np.array([1, 1, 0, 0.0]), np.array([0.1, 0.2, 0.8, 0.9])
    threshold = fit_threshold("youden", truth, probs)
    assert threshold == np.inf
    rates = rates_at(threshold, np.array([1, 0.0]), np.array([0.99, 0.01]))
    assert (rates.sensitivity, rates.specificity) == (0.0, 1.0)
