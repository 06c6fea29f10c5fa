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

from results.stats import known_labels

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
