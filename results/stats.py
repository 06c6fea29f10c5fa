"""Uncertainty of a cell's pooled out-of-fold test metrics: patient-clustered bootstrap intervals
and paired bootstrap comparisons of two cells on the same test images.

Images of one patient are correlated, so the bootstrap resamples patients: a patient drawn k
times gives each of its images weight k. Every resample is then a weight vector, and all of
them are scored at once with numpy (scikit-learn would need a Python call per resample and
class, seconds per cell); `weighted_auc_ap` is tested against scikit-learn's `sample_weight`.

Which metrics there are, and how each but AUC and AP is computed, is vocab.metrics' registry: a metric's
counts (numerator and denominator per image and class) at unit weights are what a trial reported, and
weighted by a resample's draws they are that resample's value.

Labels that are NaN are unknown and left out for their class only. A class is left out of a
macro mean where it is undefined (AUC and AP: no positive or no negative; false-negative
rate: no positive), in the point estimate and in each resample alike.

Decisions: an image is predicted positive for a class when its probability exceeds the
threshold of the fold model that predicted it (`prob > threshold`), as in
`trainables.metrics` and the papers (Keras' binary accuracy, seed 000's "exceeds the
training prevalence"), so that pooled numbers agree with the per-fold ones. An entry whose
threshold is NaN (the fold model had none) is left out of the threshold metrics.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vocab import metrics as registry
from vocab.metrics import RANKING, macro_mean

METRICS = registry.PREDICTED_METRICS  # every registered metric computed from predictions (a live view)
BLOCK = 256  # resamples drawn per call to the generator: the draws depend on the seed, not on memory
CELLS = 1 << 21  # (resample, image) entries scored at once, ~16 MB per float array


@dataclass(frozen=True)
class Interval:
    estimate: float  # on the data as given, not a bootstrap mean
    low: float
    high: float
    n_boot: int
    n_valid: int  # resamples where the metric was defined (the interval's sample)


@dataclass(frozen=True)
class Comparison:
    difference: float  # a - b on the data as given
    low: float
    high: float
    p_value: float
    n_boot: int
    n_valid: int  # resamples where both metrics were defined


def known_labels(truth, probs) -> tuple[np.ndarray, np.ndarray]:
    """One class's truth and probabilities as floats, images with an unknown label (NaN) left out."""
    truth, probs = np.asarray(truth, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    keep = ~np.isnan(truth)
    return truth[keep], probs[keep]


def _check(metric: str, truth, probs, thresholds) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    truth, probs = np.asarray(truth, np.float64), np.asarray(probs, np.float64)
    if truth.ndim != 2 or truth.shape != probs.shape:
        raise ValueError(f"truth {truth.shape} and probs {probs.shape} must both be (images, classes)")
    declared = registry.metric(metric)
    if not declared.decides:
        return truth, probs, None
    thresholds = registry.HALF if thresholds is None and declared.threshold == "half" else thresholds
    if thresholds is None:
        raise ValueError(f"metric {metric!r} decides at each fold model's fitted thresholds; pass them per image")
    return truth, probs, np.broadcast_to(np.asarray(thresholds, np.float64), probs.shape)


_macro = macro_mean  # with_macro's and the resamples' mean over the defined classes (vocab.metrics)


def point_estimate(metric: str, truth, probs, thresholds=None) -> float:
    """The metric on the data as given: per class, then the macro mean over the classes where it is
    defined. AUC and AP equal scikit-learn's `roc_auc_score` and `average_precision_score` (tests compare
    them), computed by `weighted_auc_ap` at unit weights: a report computes thousands of them."""
    truth, probs, thresholds = _check(metric, truth, probs, thresholds)
    return float(weighted_metric(metric, truth, probs, np.ones(len(truth)), thresholds)[0])


def _cumulative(weights: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Running sums of weights[:, index] along the images, with a leading column of 0."""
    out = np.zeros((len(weights), len(index) + 1))
    np.cumsum(np.take(weights, index, axis=1), axis=1, out=out[:, 1:])
    return out


def weighted_auc_ap(truth: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One class's AUC and AP for every row of `weights` (resamples x images), as scikit-learn's
    `roc_auc_score` and `average_precision_score` with `sample_weight` give them (tied scores are
    one threshold); NaN truth is left out. Both are sums over the positives, so after one sort
    each resample needs only running sums of the negatives' and the positives' weights by score:
    AUC = sum_i w_i (negatives below s_i + half those tied with it) / (P N),
    AP = sum_i w_i precision(score >= s_i) / P. NaN where a resample lacks positive or negative weight."""
    pos, neg = np.flatnonzero(truth == 1), np.flatnonzero(truth == 0)
    pos, neg = pos[np.argsort(scores[pos], kind="stable")], neg[np.argsort(scores[neg], kind="stable")]
    pos_scores, neg_scores = scores[pos], scores[neg]
    below = np.searchsorted(neg_scores, pos_scores, "left")  # negatives scored below each positive
    up_to = np.searchsorted(neg_scores, pos_scores, "right")  # ... or tied with it
    pos_below = np.searchsorted(pos_scores, pos_scores, "left")
    weights = np.asarray(weights, np.float64)
    negatives, positives = _cumulative(weights, neg), _cumulative(weights, pos)
    n_total, p_total = negatives[:, -1:], positives[:, -1:]
    w, neg_below = np.take(weights, pos, axis=1), np.take(negatives, below, axis=1)
    tp = p_total - np.take(positives, pos_below, axis=1)  # weighted positives scored >= s_i
    fp = n_total - neg_below
    p_total, n_total = p_total[:, 0], n_total[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.einsum("ij,ij->i", w, neg_below + np.take(negatives, up_to, axis=1)) / (2 * p_total * n_total)
        ap = np.einsum("ij,ij->i", w, np.where(w > 0, tp / (tp + fp), 0.0)) / p_total
    undefined = (p_total <= 0) | (n_total <= 0)
    return np.where(undefined, np.nan, auc), np.where(undefined, np.nan, ap)


def weighted_metric(metric: str, truth, probs, weights, thresholds=None) -> np.ndarray:
    """The metric for every row of `weights` (resamples x images: each row one resample's sample
    weights, e.g. bootstrap counts); NaN where it is undefined. Rows are scored in chunks to bound
    memory."""
    truth, probs, thresholds = _check(metric, truth, probs, thresholds)
    weights = np.asarray(weights, np.float64)
    if not len(truth) or not truth.shape[1]:  # no image or no class: undefined in every resample
        return np.full(len(weights) if weights.ndim > 1 else 1, np.nan)
    weights = weights.reshape(-1, len(truth))
    if metric in RANKING:
        return _weighted_ranking(truth, probs, weights)[RANKING.index(metric)]
    declared = registry.metric(metric)
    numerator, denominator = registry.pooled_columns(declared, *registry.counted(declared, truth, probs, thresholds))
    out = np.empty(len(weights))
    step = max(1, CELLS // max(1, len(truth)))
    for start in range(0, len(out), step):
        out[start:start + step] = registry.weighted_values(declared, numerator, denominator, weights[start:start + step])
    return out


def _weighted_ranking(truth: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """(macro AUC, macro AP) for every row of `weights` (resamples x images): both from one sort and one set of
    running sums per class and chunk of rows (weighted_auc_ap), in the order of RANKING."""
    out = np.empty((len(RANKING), len(weights)))
    step = max(1, CELLS // max(1, len(truth)))
    for start in range(0, len(weights), step):
        w = weights[start:start + step]
        per_class = [weighted_auc_ap(truth[:, k], probs[:, k], w) for k in range(truth.shape[1])]
        for m in range(len(RANKING)):
            out[m, start:start + step] = _macro(np.stack([both[m] for both in per_class], axis=1))
    return tuple(out)


_DRAWS: dict = {}  # (patients' count, n_boot, seed) -> the draws' blocks: a report asks for the same ones often
DRAWS_BYTES = 256 << 20  # what the kept draws may take: 1,000 resamples of 250,000 patients as bytes


def _patient_draws(n_patients: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """How often each patient is drawn in each resample, in blocks of BLOCK resamples; the same for the same
    arguments (seeded), so they are drawn once and kept, as bytes (a patient drawn 256 times of n is
    beyond any bootstrap), the oldest dropped beyond DRAWS_BYTES. Read-only: callers get copies."""
    key = (n_patients, n_boot, seed)
    if key not in _DRAWS:
        rng = np.random.default_rng(seed)
        share = np.full(n_patients, 1.0 / max(n_patients, 1))
        blocks = [rng.multinomial(n_patients, share, size=min(BLOCK, n_boot - start)) for start in
                  range(0, n_boot if n_patients else 0, BLOCK)]
        fits = all(b.max(initial=0) <= np.iinfo(np.uint8).max for b in blocks)
        _DRAWS[key] = [b.astype(np.uint8 if fits else np.uint32) for b in blocks]
        while len(_DRAWS) > 1 and sum(b.nbytes for d in _DRAWS.values() for b in d) > DRAWS_BYTES:
            _DRAWS.pop(next(iter(_DRAWS)))
    return _DRAWS[key]


def patient_weights(patients, n_boot: int, seed: int = 0):
    """Yield blocks of image weights (resamples x images): each resample draws as many patients as
    there are, with replacement; an image's weight is how often its patient was drawn."""
    keys, image_patient = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    for counts in _patient_draws(len(keys), n_boot, seed):
        yield np.take(counts, image_patient, axis=1).astype(np.float64)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of resampled values (NaN, NaN without any)."""
    return _interval(values, level)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def resampled(metric: str, truth, probs, patients, thresholds=None, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """The metric on each of `n_boot` patient resamples, those where it is undefined dropped."""
    truth, probs, thresholds = _check(metric, truth, probs, thresholds)
    if len(patients) != len(truth):
        raise ValueError(f"{len(patients)} patient keys for {len(truth)} images")
    values = np.concatenate([weighted_metric(metric, truth, probs, w, thresholds)
                             for w in patient_weights(patients, n_boot, seed)] or [np.empty(0)])
    return values[~np.isnan(values)]


def resampled_ranking(truth, probs, patients, n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """`resampled` of AUC and of AP at once ({metric: values}, the same numbers): on the same resamples both
    come from one sort per class, where asking for each alone sorts twice (a report asks for both)."""
    truth, probs, _ = _check(RANKING[0], truth, probs, None)
    if len(patients) != len(truth):
        raise ValueError(f"{len(patients)} patient keys for {len(truth)} images")
    if not len(truth) or not truth.shape[1]:  # no image or no class: undefined in every resample
        return {metric: np.empty(0) for metric in RANKING}
    blocks = [_weighted_ranking(truth, probs, w.reshape(-1, len(truth))) for w in patient_weights(patients, n_boot, seed)]
    values = [np.concatenate([block[m] for block in blocks] or [np.empty(0)]) for m in range(len(RANKING))]
    return {metric: v[~np.isnan(v)] for metric, v in zip(RANKING, values)}


def cluster_bootstrap(metric: str, truth, probs, patients, thresholds=None, n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile interval of the metric over `n_boot` patient resamples (resamples where the
    metric is undefined are dropped; `n_valid` says how many remain)."""
    values = resampled(metric, truth, probs, patients, thresholds, n_boot, seed)
    return Interval(point_estimate(metric, truth, probs, thresholds), *_interval(values, level), n_boot, len(values))


def paired_bootstrap(metric: str, truth, probs_a, probs_b, patients, thresholds_a=None, thresholds_b=None,
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Comparison:
    """Bootstrap of the difference a - b, the same patient resamples applied to both cells.

    Two-sided p-value of "no difference" by inverting the percentile interval, as in paired
    bootstrap tests of two systems on one test set: p = 2 * the smaller tail share of resampled
    differences at or beyond 0, each share (count + 1) / (n + 1) so that p is never exactly 0,
    capped at 1. Identical predictions give p = 1. Resamples where either metric is undefined
    are dropped.
    """
    _, probs_b, thresholds_b = _check(metric, truth, probs_b, thresholds_b)
    truth, probs_a, thresholds_a = _check(metric, truth, probs_a, thresholds_a)
    if len(patients) != len(truth):
        raise ValueError(f"{len(patients)} patient keys for {len(truth)} images")
    difference = point_estimate(metric, truth, probs_a, thresholds_a) - point_estimate(
        metric, truth, probs_b, thresholds_b)
    diffs = np.concatenate([weighted_metric(metric, truth, probs_a, w, thresholds_a)
                            - weighted_metric(metric, truth, probs_b, w, thresholds_b)
                            for w in patient_weights(patients, n_boot, seed)] or [np.empty(0)])
    diffs = diffs[~np.isnan(diffs)]
    n = len(diffs)
    if np.isnan(difference) or not n:
        return Comparison(difference, float("nan"), float("nan"), float("nan"), n_boot, n)
    tail = min((diffs <= 0).sum() + 1, (diffs >= 0).sum() + 1) / (n + 1)
    return Comparison(difference, *_interval(diffs, level), float(min(1.0, 2.0 * tail)), n_boot, n)


def column_intervals(score, patients, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{name: (estimate, low, high)} for every column of every array `score(weights)` returns, where
    `weights` is (resamples x images) and each array (resamples x columns): the estimate at unit weights,
    the percentile interval over patient resamples (the same resamples for every column, so one draw
    serves all of a cell's classes and quantities). A column's undefined (NaN) resamples are dropped."""
    estimate = score(np.ones((1, len(patients))))
    drawn = [score(w) for w in patient_weights(patients, n_boot, seed)]
    out = {}
    for name, point in estimate.items():
        values = np.concatenate([d[name] for d in drawn]) if drawn else np.empty((0, point.shape[1]))
        low, high = np.full(point.shape[1], np.nan), np.full(point.shape[1], np.nan)
        for k in range(point.shape[1]):
            low[k], high[k] = _interval(values[~np.isnan(values[:, k]), k], level)
        out[name] = (point[0], low, high)
    return out


def with_macro(columns: np.ndarray) -> np.ndarray:
    """Per-class columns (resamples x classes) with their macro mean (over defined classes) appended."""
    return np.column_stack([columns, _macro(columns)])


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of the p-values of one family of comparisons (a ranking of k rows against its
    first makes k-1 tests): the i-th smallest times (m - i), made non-decreasing, capped at 1. NaN (no comparison)
    stays NaN and is not counted. Not statsmodels' multipletests, which tests compare it with: its Holm branch
    runs gc.collect() on every call, 0.26 s in a process holding a report (half of a small report's time)."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    known = np.flatnonzero(~np.isnan(p))
    order = known[np.argsort(p[known], kind="stable")]
    adjusted[order] = np.minimum(np.maximum.accumulate(p[order] * np.arange(len(order), 0, -1)), 1.0)
    return adjusted
