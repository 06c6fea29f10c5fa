"""Are a model's probabilities calibrated? Per class: the Brier score (scikit-learn's), the expected
calibration error over equal-mass bins, and the bins themselves for a reliability diagram.

Equal-mass bins (each holds the same number of images, give or take one) rather than equal-width
ones: chest X-ray labels are rare, most probabilities sit near 0, and equal-width bins would leave
the upper bins nearly empty and their error mostly noise. Images whose label is unknown (NaN) are
left out of that class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import brier_score_loss

from results.stats import known_labels, with_macro

BINS = 10


@dataclass(frozen=True)
class ReliabilityBin:
    mean_probability: float
    observed_frequency: float
    images: int


def brier(truth, probs) -> float:
    """Mean squared difference between probability and outcome (0 is perfect; NaN without images)."""
    truth, probs = known_labels(truth, probs)
    return float(brier_score_loss(truth, probs)) if len(truth) else float("nan")


def reliability_bins(truth, probs, bins: int = BINS) -> list[ReliabilityBin]:
    """Images sorted by probability and cut into `bins` groups of equal size (the first ones one larger when
    the count does not divide); each group's mean probability against its share of positives."""
    truth, probs = known_labels(truth, probs)
    order = np.argsort(probs, kind="mergesort")
    return [ReliabilityBin(float(probs[part].mean()), float(truth[part].mean()), len(part))
            for part in np.array_split(order, min(bins, len(order))) if len(part)]


def expected_calibration_error(truth, probs, bins: int = BINS) -> float:
    """Sum over equal-mass bins of (bin's share of images) x |observed frequency - mean probability|."""
    found = reliability_bins(truth, probs, bins)
    total = sum(b.images for b in found)
    if not total:
        return float("nan")
    return float(sum(b.images / total * abs(b.observed_frequency - b.mean_probability) for b in found))


def calibration_score(truth, probs, bins: int = BINS):
    """A `results.stats.column_intervals` score: for weights (resamples x images), the Brier score and the
    expected calibration error per class and their macro mean (last column). The equal-mass bins are cut
    once, on the images as given, and kept in every resample (a resample weights the same bins), so at
    unit weights the numbers are `brier` and `expected_calibration_error`."""
    truth, probs = np.asarray(truth, np.float64), np.asarray(probs, np.float64)
    known = ~np.isnan(truth)
    error = np.where(known, probs - np.nan_to_num(truth), 0.0)
    squared, counted = error ** 2, known.astype(np.float64)
    in_bin = []  # per class: images x bins indicator times (outcome - probability)
    for k in range(truth.shape[1]):
        rows = np.flatnonzero(known[:, k])
        order = rows[np.argsort(probs[rows, k], kind="mergesort")]
        parts = [p for p in np.array_split(order, min(bins, len(order))) if len(p)] if len(order) else []
        gap = np.zeros((len(truth), max(1, len(parts))))
        for b, part in enumerate(parts):
            gap[part, b] = -error[part, k]
        in_bin.append(gap)

    def score(weights: np.ndarray) -> dict[str, np.ndarray]:
        total = weights @ counted
        with np.errstate(invalid="ignore", divide="ignore"):
            brier_ = (weights @ squared) / total
            ece = np.column_stack([np.abs(weights @ gap).sum(axis=1) for gap in in_bin]) / total
        return {"brier": with_macro(brier_), "ece": with_macro(ece)}

    return score


def fit_temperature(truth, probs) -> float:
    """Temperature scaling (Guo et al. 2017) for multi-label outputs: the one T > 0 with which
    sigmoid(logit(p) / T) has the lowest binary cross-entropy on these predictions (all classes' known
    labels together; fitted on inner validation, never on test). T > 1 softens overconfident
    probabilities. NaN without a known label."""
    from scipy.optimize import minimize_scalar

    truth, probs = np.asarray(truth, np.float64).ravel(), np.asarray(probs, np.float64).ravel()
    keep = ~np.isnan(truth)
    y, z = truth[keep], _logit(probs[keep])
    if not len(y):
        return float("nan")

    def loss(log_t: float) -> float:
        scaled = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, scaled) - y * scaled))  # BCE on logits, stable

    return float(np.exp(minimize_scalar(loss, bounds=(-4.0, 4.0), method="bounded",
                                        options={"xatol": 1e-6}).x))


def _logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, 1e-6, 1 - 1e-6)  # as trainables.fit scores its losses
    return np.log(p) - np.log1p(-p)


def scaled(probs, temperature) -> np.ndarray:
    """Probabilities after temperature scaling: sigmoid(logit(p) / T); T may be one per image (rows)."""
    t = np.asarray(temperature, np.float64)
    return 1.0 / (1.0 + np.exp(-_logit(np.asarray(probs, np.float64)) / (t[:, None] if t.ndim == 1 else t)))
