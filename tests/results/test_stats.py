"""results.stats: point estimates as scikit-learn gives them, a bootstrap that resamples patients
(not images), paired comparisons, threshold metrics by hand, and undefined classes left out."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from results import stats

SKLEARN = {"auc": roc_auc_score, "ap": average_precision_score}
NAN = np.nan


def random_cell(n_images: int, n_classes: int = 3, seed: int = 0, unknown: float = 0.1):
    """Informative probabilities rounded to 0.05 (so many are tied) and ~10% unknown labels."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n_images, n_classes)) < 0.3).astype(float)
    probs = np.round(np.clip(0.35 * truth + 0.65 * rng.random(truth.shape), 0, 1) * 20) / 20
    truth[rng.random(truth.shape) < unknown] = NAN
    return truth, probs


def width(interval: stats.Interval) -> float:
    return interval.high - interval.low


def sklearn_macro(metric: str, truth: np.ndarray, probs: np.ndarray) -> float:
    values = []
    for k in range(truth.shape[1]):
        known = ~np.isnan(truth[:, k])
        values.append(SKLEARN[metric](truth[known, k], probs[known, k]))
    return float(np.mean(values))


# --- point estimates -------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["auc", "ap"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_point_estimate_equals_scikit_learn(metric, seed):
    truth, probs = random_cell(150, 4, seed)
    assert len(np.unique(probs)) < 25  # ties on purpose
    assert stats.point_estimate(metric, truth, probs) == pytest.approx(sklearn_macro(metric, truth, probs), abs=1e-12)


def test_weighted_metric_with_unit_weights_is_the_point_estimate():
    truth, probs = random_cell(120, 3, seed=4)
    thresholds = np.full_like(probs, 0.5)
    for metric in stats.METRICS:
        weighted = stats.weighted_metric(metric, truth, probs, np.ones(len(truth)), thresholds)
        assert weighted[0] == pytest.approx(stats.point_estimate(metric, truth, probs, thresholds), abs=1e-12)


# --- weighted AUC and AP against scikit-learn's sample_weight --------------------------------------

def weight_rows(n: int, seed: int) -> np.ndarray:
    """Unit weights, bootstrap-like counts (many zeros), fractional weights with zeros, a tie group
    whose images all weigh 0."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.0, n).astype(float)
    fractional = rng.random(n) * (rng.random(n) < 0.7)
    return np.stack([np.ones(n), counts, fractional, np.r_[np.zeros(5), np.ones(n - 5)]])


@pytest.mark.parametrize("seed", range(5))
def test_weighted_auc_ap_equal_scikit_learn_with_sample_weight(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random(80) < 0.4).astype(float)
    scores = rng.integers(0, 12, 80) / 12  # ties within and across the classes
    scores[:5] = 2.0  # the top tie group, all of it at weight 0 in the last row
    weights = weight_rows(80, seed)
    auc, ap = stats.weighted_auc_ap(truth, scores, weights)
    for r, w in enumerate(weights):
        assert auc[r] == pytest.approx(roc_auc_score(truth, scores, sample_weight=w), abs=1e-12)
        assert ap[r] == pytest.approx(average_precision_score(truth, scores, sample_weight=w), abs=1e-12)


def test_weighted_auc_ap_leave_unknown_labels_out():
    truth, probs = random_cell(90, 1, seed=5, unknown=0.3)
    truth, scores = truth[:, 0], probs[:, 0]
    known = ~np.isnan(truth)
    w = np.random.default_rng(5).poisson(1.0, len(truth)).astype(float)
    auc, ap = stats.weighted_auc_ap(truth, scores, w[None])
    assert auc[0] == pytest.approx(roc_auc_score(truth[known], scores[known], sample_weight=w[known]), abs=1e-12)
    assert ap[0] == pytest.approx(average_precision_score(truth[known], scores[known], sample_weight=w[known]),
                                  abs=1e-12)


def test_weighted_auc_ap_are_nan_where_a_resample_has_no_positive_weight():
    truth, scores = np.array([1.0, 0, 0, 1]), np.array([0.9, 0.2, 0.4, 0.7])
    auc, ap = stats.weighted_auc_ap(truth, scores, np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 1, 1.0]]))
    assert np.isnan(auc[:2]).all() and np.isnan(ap[:2]).all()
    assert (auc[2], ap[2]) == (1.0, 1.0)


# --- threshold metrics by hand ---------------------------------------------------------------------

# 3 images x 2 classes; image 2's second label is unknown; image 3 came from a fold model with other
# thresholds. Decisions (prob > threshold): [[1, 1], [0, -], [1, 0]] against truth [[1, 0], [0, -], [1, 1]]:
# right: yes, no | yes | yes, no  -> 3 of 5 known entries right; only image 2 wholly right;
# class 1 misses none of its 2 positives, class 2 misses its 1 positive.
HAND_TRUTH = np.array([[1, 0], [0, NAN], [1, 1]])
HAND_PROBS = np.array([[0.8, 0.6], [0.3, 0.9], [0.4, 0.7]])
HAND_THRESHOLDS = np.array([[0.5, 0.5], [0.5, 0.5], [0.3, 0.8]])


@pytest.mark.parametrize("metric, expected", [
    ("binary_acc", 3 / 5),
    ("hamming", 2 / 5),
    ("exact_match", 1 / 3),
    ("fnr", (0 / 2 + 1 / 1) / 2),
])
def test_threshold_metrics_on_a_hand_computed_example(metric, expected):
    assert stats.point_estimate(metric, HAND_TRUTH, HAND_PROBS, HAND_THRESHOLDS) == pytest.approx(expected)


@pytest.mark.parametrize("metric, expected", [("binary_acc", 2 / 3), ("exact_match", 2 / 3), ("fnr", 1.0)])
def test_a_probability_equal_to_its_threshold_is_a_negative_decision(metric, expected):
    truth, probs = np.array([[1.0], [0.0], [0.0]]), np.full((3, 1), 0.5)  # ">=" would give 1/3, 1/3, 0
    assert stats.point_estimate(metric, truth, probs, np.full((3, 1), 0.5)) == pytest.approx(expected)


def test_an_entry_without_a_threshold_is_left_out_of_threshold_metrics():
    thresholds = HAND_THRESHOLDS.copy()
    thresholds[0, 1] = NAN  # image 1's wrong second decision no longer counts
    assert stats.point_estimate("binary_acc", HAND_TRUTH, HAND_PROBS, thresholds) == pytest.approx(3 / 4)


def test_fitted_threshold_metrics_without_thresholds_raise_naming_the_metric():
    with pytest.raises(ValueError, match="hamming"):
        stats.point_estimate("hamming", HAND_TRUTH, HAND_PROBS)
    with pytest.raises(ValueError, match="hamming"):
        stats.cluster_bootstrap("hamming", HAND_TRUTH, HAND_PROBS, np.array(["a", "b", "c"]))


@pytest.mark.parametrize("metric", ["binary_acc", "exact_match", "fnr", "hamming_05"])
def test_a_metric_declared_at_one_half_decides_at_one_half_unless_given_other_thresholds(metric):
    at_half = stats.point_estimate(metric, HAND_TRUTH, HAND_PROBS, np.full_like(HAND_PROBS, 0.5))
    assert stats.point_estimate(metric, HAND_TRUTH, HAND_PROBS) == at_half


# --- undefined classes -----------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["auc", "ap", "fnr"])
def test_a_class_without_positives_is_left_out_of_the_macro_mean(metric):
    truth, probs = random_cell(100, 3, seed=6)
    thresholds = np.full_like(probs, 0.5)
    with_empty = truth.copy()
    with_empty[:, 1] = np.where(np.isnan(truth[:, 1]), NAN, 0.0)
    kept = [0, 2]
    assert stats.point_estimate(metric, with_empty, probs, thresholds) == pytest.approx(
        stats.point_estimate(metric, truth[:, kept], probs[:, kept], thresholds[:, kept]))


@pytest.mark.filterwarnings("error")  # no division or scikit-learn warning either
@pytest.mark.parametrize("metric", stats.METRICS)
def test_all_classes_undefined_gives_nan_without_an_exception(metric):
    truth, probs = np.full((6, 2), NAN), np.linspace(0, 1, 12).reshape(6, 2)
    if metric in ("auc", "ap", "fnr"):
        truth = np.zeros((6, 2))  # labels known, but no positives
    interval = stats.cluster_bootstrap(metric, truth, probs, np.arange(6), np.full_like(probs, 0.5), n_boot=50)
    assert np.isnan([interval.estimate, interval.low, interval.high]).all()
    assert interval.n_valid == 0


def test_resamples_without_a_class_use_the_other_classes():
    truth = np.array([[1, 1], [0, 0], [1, 0], [0, 1], [0, 0]], dtype=float)
    probs = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.4], [0.1, 0.7], [0.3, 0.2]])
    without_second = np.array([[0, 1, 1, 0, 1.0]])  # the second class's positives are images 1 and 4
    only_first = stats.point_estimate("auc", truth[[1, 2, 4], :1], probs[[1, 2, 4], :1])
    assert stats.weighted_metric("auc", truth, probs, without_second)[0] == pytest.approx(only_first)


def test_n_valid_counts_the_resamples_where_the_macro_metric_is_defined():
    truth = np.zeros((40, 1))
    truth[0] = 1  # one positive patient: missing from about (1 - 1/40)^40 ~ 36% of resamples
    interval = stats.cluster_bootstrap("auc", truth, np.linspace(1, 0, 40)[:, None], np.arange(40), n_boot=400)
    assert 0.5 * 400 < interval.n_valid < 0.8 * 400


# --- the cluster bootstrap -------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["auc", "ap", "binary_acc", "fnr"])
def test_two_identical_images_per_patient_give_the_one_image_interval(metric):
    truth, probs = random_cell(200, 3, seed=7)
    patients = np.array([f"patient-{i:03d}" for i in range(200)])
    twice = lambda a: np.repeat(a, 2, axis=0)  # noqa: E731
    thresholds = np.full_like(probs, 0.5)
    once = stats.cluster_bootstrap(metric, truth, probs, patients, thresholds, n_boot=300)
    doubled = stats.cluster_bootstrap(metric, twice(truth), twice(probs), twice(patients), twice(thresholds),
                                      n_boot=300)
    assert (doubled.estimate, doubled.low, doubled.high) == pytest.approx((once.estimate, once.low, once.high))


def correlated_within_patients(n_patients: int, per_patient: int, seed: int = 0):
    """Each patient's images share the label and nearly the same probability."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n_patients, 2)) < 0.4).astype(float)
    probs = np.clip(0.25 * truth + 0.75 * rng.random(truth.shape), 0, 1)
    truth, probs = np.repeat(truth, per_patient, axis=0), np.repeat(probs, per_patient, axis=0)
    probs = probs + rng.normal(0, 1e-3, probs.shape)
    return truth, probs, np.repeat(np.arange(n_patients), per_patient)


@pytest.mark.parametrize("metric", ["auc", "ap"])
def test_clustering_widens_the_interval_when_images_of_a_patient_agree(metric):
    truth, probs, patients = correlated_within_patients(80, 8)
    clustered = stats.cluster_bootstrap(metric, truth, probs, patients, n_boot=400)
    by_image = stats.cluster_bootstrap(metric, truth, probs, np.arange(len(truth)), n_boot=400)
    assert width(clustered) > 2 * width(by_image)  # ~sqrt(8) expected


@pytest.mark.parametrize("metric", stats.METRICS)
def test_the_interval_contains_the_estimate_and_narrows_with_more_patients(metric):
    intervals = []
    for n_patients in (60, 600):
        truth, probs = random_cell(2 * n_patients, 3, seed=8)
        patients = np.repeat(np.arange(n_patients), 2)
        intervals.append(stats.cluster_bootstrap(metric, truth, probs, patients, np.full_like(probs, 0.5),
                                                 n_boot=300))
    for interval in intervals:
        assert interval.low <= interval.estimate <= interval.high
        assert interval.n_valid == interval.n_boot == 300
    assert width(intervals[1]) < 0.6 * width(intervals[0])  # ~1/sqrt(10) expected


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    truth, probs = random_cell(100, 2, seed=9)
    patients = np.arange(100) // 2
    first, again, other = (stats.cluster_bootstrap("auc", truth, probs, patients, n_boot=200, seed=s)
                           for s in (1, 1, 2))
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)


# --- the paired bootstrap --------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["auc", "ap", "hamming"])
def test_identical_predictions_differ_by_zero_with_p_one(metric):
    truth, probs = random_cell(100, 3, seed=10)
    thresholds = np.full_like(probs, 0.5)
    result = stats.paired_bootstrap(metric, truth, probs, probs.copy(), np.arange(100) // 2, thresholds,
                                    thresholds, n_boot=200)
    assert (result.difference, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def informative_and_noise(seed: int = 11):
    truth, probs = random_cell(300, 3, seed=seed)
    noise = np.random.default_rng(seed).random(probs.shape)
    return truth, probs, noise, np.arange(300) // 3


@pytest.mark.parametrize("metric", ["auc", "ap"])
def test_a_clearly_better_model_wins_with_a_small_p_value(metric):
    truth, better, noise, patients = informative_and_noise()
    result = stats.paired_bootstrap(metric, truth, better, noise, patients, n_boot=500)
    assert result.difference > 0 and result.low > 0
    assert result.p_value < 0.01
    assert result.p_value == pytest.approx(2 / (500 + 1))  # every resample favours a: never p = 0


def test_swapping_the_models_flips_the_difference_and_keeps_p():
    truth, better, noise, patients = informative_and_noise(12)
    noise = 0.5 * noise + 0.5 * better  # a closer race, so that p is not at its floor
    ab = stats.paired_bootstrap("auc", truth, better, noise, patients, n_boot=300)
    ba = stats.paired_bootstrap("auc", truth, noise, better, patients, n_boot=300)
    assert ba.difference == -ab.difference
    assert (ba.low, ba.high) == pytest.approx((-ab.high, -ab.low))
    assert ba.p_value == ab.p_value


def test_holm_adjusts_a_tables_comparisons_step_down_and_leaves_missing_ones_out():
    from results.stats import holm

    # sorted 0.01, 0.02, 0.04 of 3 tests: 3 x 0.01 = 0.03, max(0.03, 2 x 0.02) = 0.04, max(0.04, 1 x 0.04) = 0.04
    adjusted = holm([np.nan, 0.04, 0.01, 0.02])
    assert np.isnan(adjusted[0]) and adjusted[1:].tolist() == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.6, 0.5]).tolist() == [1.0, 1.0] and np.isnan(holm([np.nan])[0])


@pytest.mark.parametrize("seed", range(5))
def test_holm_is_statsmodels_multipletests(seed):
    from statsmodels.stats.multitest import multipletests

    from results.stats import holm

    rng = np.random.default_rng(seed)
    p = np.round(rng.random(int(rng.integers(1, 12))) ** 3, 2)  # ties at two decimals
    assert holm(p).tolist() == pytest.approx(multipletests(p, method="holm")[1].tolist(), abs=1e-15)


def test_no_class_or_no_image_is_undefined_not_an_error():
    assert np.isnan(stats.point_estimate("auc", np.zeros((5, 0)), np.zeros((5, 0))))
    assert np.isnan(stats.point_estimate("ap", np.zeros((0, 2)), np.zeros((0, 2))))
    assert list(stats.patient_weights([], 10)) == []


def test_auc_and_ap_resampled_together_are_scikit_learns_on_each_resample_and_resampled_alone():
    """One sort per class for both (what a report asks for) gives, resample by resample, scikit-learn's macro
    AUC and AP with the resample's patient counts as sample_weight, and `resampled`'s numbers for each alone.
    300 resamples: two of the generator's blocks; an unknown label left out per class."""
    truth, probs = random_cell(120, 3, seed=7, unknown=0.1)
    patients = np.repeat(np.arange(60), 2).astype(str)  # two images per patient
    together = stats.resampled_ranking(truth, probs, patients, n_boot=300, seed=4)
    weights = np.concatenate(list(stats.patient_weights(patients, 300, 4)))
    scorers = {"auc": roc_auc_score, "ap": average_precision_score}
    for metric, scorer in scorers.items():
        assert np.array_equal(together[metric], stats.resampled(metric, truth, probs, patients, n_boot=300, seed=4))
        assert len(together[metric]) == 300  # every class has positives and negatives in every resample here
        for r in (0, 1, 255, 256, 299):  # both blocks
            per_class = []
            for k in range(truth.shape[1]):
                known = ~np.isnan(truth[:, k])
                per_class.append(scorer(truth[known, k], probs[known, k], sample_weight=weights[r][known]))
            assert together[metric][r] == pytest.approx(np.mean(per_class), abs=1e-12), (metric, r)
