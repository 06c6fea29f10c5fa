"""results.delong (Sun and Xu's fast DeLong) against DeLong et al. 1988 computed directly here, pair by pair,
and its AUCs against scikit-learn's."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from results.delong import delong_test, macro_delong_test, midranks


def _delong_1988(truth, a, b):
    """DeLong, DeLong and Clarke-Pearson (1988) as written: the kernel over every (positive, negative) pair."""
    positive, negative = truth == 1, truth == 0
    means, v10, v01 = [], [], []
    for scores in (a, b):
        x, y = scores[positive], scores[negative]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        means.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s = np.cov(np.array(v10)) / positive.sum() + np.cov(np.array(v01)) / negative.sum()
    se = np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    z = (means[0] - means[1]) / se
    return means, se, z, 2 * norm.sf(abs(z))


@pytest.mark.parametrize("seed, n, decimals", [(0, 40, 1), (1, 300, 2), (2, 1000, 6), (3, 25, 0)])
def test_fast_delong_equals_the_pairwise_definition_ties_included(seed, n, decimals):
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.3).astype(float)
    truth[:2] = [0, 1]
    a = np.round(truth * 0.8 + rng.normal(0, 0.6, n), decimals)  # rounding makes ties, within and across classes
    b = np.round(0.6 * a + truth * 0.3 + rng.normal(0, 0.5, n), decimals)  # correlated with a, as two recipes are
    got = delong_test(truth, a, b)
    (auc_a, auc_b), se, z, p = _delong_1988(truth, a, b)
    assert got.auc_a == pytest.approx(roc_auc_score(truth, a), abs=1e-12) == pytest.approx(auc_a, abs=1e-12)
    assert got.auc_b == pytest.approx(auc_b, abs=1e-12) and got.diff == pytest.approx(auc_a - auc_b, abs=1e-12)
    assert got.se == pytest.approx(se, rel=1e-9) and got.z == pytest.approx(z, rel=1e-9)
    assert got.p == pytest.approx(p, rel=1e-7)


def test_unknown_labels_are_left_out_and_a_class_without_negatives_has_no_test():
    rng = np.random.default_rng(4)
    truth = (rng.random(200) < 0.4).astype(float)
    a, b = truth + rng.normal(0, 1, 200), rng.normal(0, 1, 200)
    with_unknown = truth.copy()
    with_unknown[::7] = np.nan
    keep = ~np.isnan(with_unknown)
    assert delong_test(with_unknown, a, b) == delong_test(truth[keep], a[keep], b[keep])
    assert np.isnan(delong_test(np.ones(10), a[:10], b[:10]).p)
    same = delong_test(truth, a, a)
    assert same.diff == 0 and same.p == 1.0  # one model against itself: no difference, nothing to test


def test_a_clearly_better_model_is_significant_and_a_coin_is_not():
    rng = np.random.default_rng(5)
    truth = (rng.random(600) < 0.3).astype(float)
    good, coin = truth * 1.5 + rng.normal(0, 1, 600), rng.random(600)
    assert delong_test(truth, good, coin).p < 1e-6
    other_coin = rng.random(600)
    assert delong_test(truth, coin, other_coin).p > 0.01


def test_midranks_give_ties_the_mean_of_their_ranks():
    assert midranks(np.array([0.3, 0.1, 0.3, 0.2, 0.3])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_macro_clustered_form_is_delongs_test_for_one_class_and_one_image_per_patient(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random(200) < 0.3).astype(float)
    a = np.round(truth + rng.normal(0, 0.8, 200), 2)
    b = np.round(0.5 * a + truth * 0.4 + rng.normal(0, 0.6, 200), 2)
    got = macro_delong_test(truth[:, None], a[:, None], b[:, None], patients=np.arange(200))
    (auc_a, auc_b), se, z, p = _delong_1988(truth, a, b)
    assert got.diff == pytest.approx(auc_a - auc_b, abs=1e-12)
    assert (got.se, got.z, got.p) == pytest.approx((se, z, p), rel=1e-9)


def test_the_macro_clustered_variance_agrees_with_the_patient_bootstrap_and_clustering_widens_it():
    """Three classes, four films per patient that share the patient's findings and each model's patient-level
    error: the DeLong standard error of the macro difference is near the patient-clustered bootstrap's sd,
    and larger than if the films were independent."""
    from results.stats import paired_bootstrap

    rng = np.random.default_rng(5)
    patients = np.repeat(np.arange(150), 4)
    findings = rng.random((150, 3)) < 0.3
    truth = findings[patients].astype(float)
    truth[rng.random(truth.shape) < 0.05] = np.nan
    # each model errs on a patient's films alike (a patient-level effect of its own), so paired differences
    # are correlated within a patient
    a = np.nan_to_num(truth) * 1.0 + rng.normal(0, 0.8, (150, 3))[patients] + rng.normal(0, 0.3, truth.shape)
    b = np.nan_to_num(truth) * 0.8 + rng.normal(0, 0.8, (150, 3))[patients] + rng.normal(0, 0.3, truth.shape)
    clustered = macro_delong_test(truth, a, b, patients)
    independent = macro_delong_test(truth, a, b)
    boot = paired_bootstrap("auc", truth, a, b, patients, n_boot=2000, seed=1)
    sd = (boot.high - boot.low) / (2 * 1.96)
    assert clustered.diff == pytest.approx(boot.difference, abs=1e-12)
    assert clustered.se == pytest.approx(sd, rel=0.15)
    assert clustered.se > 1.3 * independent.se
