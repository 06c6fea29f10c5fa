"""DeLong's test for two correlated AUCs measured on the same images (DeLong, DeLong and Clarke-Pearson,
Biometrics 1988), the test reviewers name beside the paired bootstrap, in the fast form of Sun and Xu
(IEEE Signal Processing Letters 21(11), 2014): the structural components come from midranks, O(n log n)
per model instead of DeLong's n_pos x n_neg comparisons, so a 2,000-image test set costs milliseconds.

DeLong's variance treats images as independent and compares one class. The report's tables rank by
the macro AUC over classes on patients with several films, so `macro_delong_test` generalises it the
way the influence-function view of DeLong allows: each image's structural components (its share of
the AUC difference, scaled so that their squares sum to DeLong's variance) are averaged over classes
and summed per patient, and the variance is the sum of squares of those patient totals (a cluster-
robust DeLong, as in Obuchowski, Biometrics 1997). For one class and one image per patient it is
DeLong's test exactly. Reports name the method beside each p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DeLong:
    auc_a: float
    auc_b: float
    diff: float  # auc_a - auc_b
    se: float  # standard error of the difference
    z: float
    p: float  # two-sided


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (Sun and Xu's Algorithm 1)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of ranks start+1 .. end
    return ranks


def structural_components(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(AUC of each model, V10: positives x models, V01: negatives x models); `scores` is images x models."""
    positive = truth == 1
    x, y = scores[positive], scores[~positive]
    m, n = len(x), len(y)
    tx = np.column_stack([midranks(x[:, k]) for k in range(scores.shape[1])])
    ty = np.column_stack([midranks(y[:, k]) for k in range(scores.shape[1])])
    tz = np.column_stack([midranks(np.r_[x[:, k], y[:, k]]) for k in range(scores.shape[1])])
    auc = tz[:m].sum(axis=0) / (m * n) - (m + 1) / (2.0 * n)
    return auc, (tz[:m] - tx) / n, 1.0 - (tz[m:] - ty) / m


def delong_test(truth, scores_a, scores_b) -> DeLong:
    """Two models' AUCs on the same images (one class; truth 0/1, NaN left out) and DeLong's z-test of their
    difference. NaN throughout when the class has no positive or no negative image."""
    truth, a, b = (np.asarray(v, dtype=np.float64) for v in (truth, scores_a, scores_b))
    known = ~np.isnan(truth)
    truth, scores = truth[known], np.column_stack([a[known], b[known]])
    positives = int((truth == 1).sum())
    if positives == 0 or positives == len(truth):
        return DeLong(*(math.nan,) * 6)
    auc, v10, v01 = structural_components(truth, scores)
    s = np.cov(v10, rowvar=False) / len(v10) + np.cov(v01, rowvar=False) / len(v01)
    variance = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    diff = float(auc[0] - auc[1])
    if variance <= 0:  # identical models, or too few images to tell them apart
        return DeLong(float(auc[0]), float(auc[1]), diff, 0.0, math.nan, 1.0 if diff == 0 else math.nan)
    se = math.sqrt(variance)
    z = diff / se
    return DeLong(float(auc[0]), float(auc[1]), diff, se, z, math.erfc(abs(z) / math.sqrt(2)))


def _influence(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray] | None:
    """(AUC difference, each known image's share of it: positives (V10_a - V10_b - diff) / sqrt(m (m - 1)),
    negatives likewise with V01 and n, so that their squares sum to DeLong's variance); None when the class
    has fewer than two positives or two negatives (no variance to estimate)."""
    positive = truth == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        return None
    auc, v10, v01 = structural_components(truth, np.column_stack([a, b]))
    diff = float(auc[0] - auc[1])
    share = np.empty(len(truth))
    share[positive] = (v10[:, 0] - v10[:, 1] - diff) / math.sqrt(m * (m - 1))
    share[~positive] = (v01[:, 0] - v01[:, 1] - diff) / math.sqrt(n * (n - 1))
    return diff, share


def macro_delong_test(truth, probs_a, probs_b, patients=None) -> DeLong:
    """DeLong's test of the macro AUC difference over classes (images x classes; NaN truth left out per
    class), its variance clustered by `patients` (None: every image its own). Classes with fewer than two
    positives or negatives are left out of both the difference and the variance. NaN without any class."""
    truth, a, b = (np.asarray(v, dtype=np.float64) for v in (truth, probs_a, probs_b))
    total, diffs, aucs = np.zeros(len(truth)), [], []
    for k in range(truth.shape[1]):
        known = ~np.isnan(truth[:, k])
        found = _influence(truth[known, k], a[known, k], b[known, k])
        if found is None:
            continue
        diffs.append(found[0])
        total[known] += found[1]
        auc, _, _ = structural_components(truth[known, k], np.column_stack([a[known, k], b[known, k]]))
        aucs.append(auc)
    if not diffs:
        return DeLong(*(math.nan,) * 6)
    total /= len(diffs)
    if patients is not None:
        _, cluster = np.unique(np.asarray(patients).astype(str), return_inverse=True)
        total = np.bincount(cluster, weights=total)
    variance, diff = float(np.sum(total ** 2)), float(np.mean(diffs))
    auc_a, auc_b = (float(v) for v in np.mean(aucs, axis=0))
    if variance <= 1e-30:
        return DeLong(auc_a, auc_b, diff, 0.0, math.nan, 1.0 if abs(diff) < 1e-15 else math.nan)
    se = math.sqrt(variance)
    z = diff / se
    return DeLong(auc_a, auc_b, diff, se, z, math.erfc(abs(z) / math.sqrt(2)))
