"""Operating points: the threshold a model is used at, fitted on one set of predictions (inner validation,
never test) by a named rule, and what it gives on another (sensitivity, specificity, PPV, NPV).

Rules: `prevalence` (seed 000's: the share of positives among the labels it is fitted on), `youden`
(the threshold with the largest sensitivity + specificity - 1) and `sensitivity:S` (the highest
threshold that still finds a share S of the positives, the lowest false-positive rate with it).
An image is called positive when its probability exceeds the threshold (`prob > threshold`), as
everywhere in cxr-sweep; a threshold found among the scores is returned halfway to the next lower
score, so that the images at it count as positive (and a new image scoring in that gap counts as
positive only above its middle).

Youden's J is compared exactly, as integer counts (tp N - fp P), and among cuts with equal J the
highest is taken (fewest images called positive): J in floating point ranks exact ties by rounding
noise (2/3 - 0 < 1 - 1/3 in doubles). So where no cut has J above 0 (no better than chance on these
predictions), the highest "cut", above every score, wins the tie with calling everything positive:
the threshold is infinite and nothing is called positive.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from results.stats import known_labels, with_macro
from vocab.errors import CxrSweepError

RULES = ("prevalence", "youden", "sensitivity:0.9")


class RuleError(CxrSweepError, ValueError):
    """An operating-point rule that does not exist; the message lists the valid ones."""


@dataclass(frozen=True)
class Rates:
    threshold: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float


def _just_below(cut: float, probs: np.ndarray) -> float:
    """A `>` threshold that calls every probability >= `cut` positive: halfway to the next lower score."""
    lower = probs[probs < cut]
    return float((cut + lower.max()) / 2) if len(lower) else float(np.nextafter(cut, -np.inf))


def _youden_cut(positives: int, negatives: int, fpr, tpr, cuts) -> float:
    """The highest of roc_curve's cuts with the largest J = tp/P - fp/N, compared exactly as tp N - fp P."""
    tp, fp = (np.rint(rate * n).astype(np.int64) for rate, n in ((tpr, positives), (fpr, negatives)))
    return float(cuts[int(np.argmax(tp * negatives - fp * positives))])  # cuts fall: the first maximum is the highest


def check_rule(rule: str) -> str:
    """The rule if it is one fit_threshold knows (as a command-line type: a bad one is a RuleError)."""
    fit_threshold(rule, np.array([0.0, 1.0]), np.array([0.2, 0.8]))
    return rule


def fit_threshold(rule: str, truth, probs) -> float:
    """The threshold `rule` chooses on these predictions of one class; NaN without positives or negatives."""
    truth, probs = known_labels(truth, probs)
    positives = int(truth.sum())
    if rule == "prevalence":
        return float(truth.mean()) if len(truth) else float("nan")
    if positives == 0 or positives == len(truth):
        return float("nan")
    # scikit-learn: positive when score >= cut; every cut kept, so that the first to reach a sensitivity is the
    # highest that does
    fpr, tpr, cuts = roc_curve(truth, probs, drop_intermediate=False)
    if rule == "youden":
        return _just_below(_youden_cut(positives, len(truth) - positives, fpr, tpr, cuts), probs)
    if rule.startswith("sensitivity:"):
        try:
            wanted = float(rule.split(":", 1)[1])
        except ValueError:
            wanted = float("nan")
        if not 0 < wanted <= 1:
            raise RuleError(f"operating point {rule!r}: the sensitivity must be a share in (0, 1], e.g. sensitivity:0.9")
        reached = np.flatnonzero(tpr >= wanted)  # roc_curve's cuts fall as tpr rises: the first is the highest
        return _just_below(float(cuts[reached[0]]), probs)
    raise RuleError(f"unknown operating point {rule!r}; expected one of prevalence, youden, sensitivity:S (S a share)")


RATES = ("sensitivity", "specificity", "ppv", "npv")


def rate_score(truth, probs, thresholds):
    """A `results.stats.column_intervals` score: for weights (resamples x images), each rate of RATES per
    class and their macro mean (last column), calling `prob > threshold` positive with a threshold per
    image and class (each image's own fold model's); unknown labels and NaN thresholds are left out."""
    truth, probs, thresholds = (np.asarray(a, np.float64) for a in (truth, probs, thresholds))
    known = ~np.isnan(truth) & ~np.isnan(thresholds)
    said, real = probs > thresholds, truth == 1
    tp, fn = known & real & said, known & real & ~said
    fp, tn = known & ~real & said, known & ~real & ~said
    parts = {"sensitivity": (tp, fn), "specificity": (tn, fp), "ppv": (tp, fp), "npv": (tn, fn)}
    parts = {name: (hit.astype(np.float64), (hit | miss).astype(np.float64)) for name, (hit, miss) in parts.items()}

    def score(weights: np.ndarray) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return {name: with_macro((weights @ hit) / (weights @ total)) for name, (hit, total) in parts.items()}

    return score


def thresholds_by_fold(rule: str, validation: dict[int, dict], classes: list[str]) -> dict[int, np.ndarray]:
    """{fold: one threshold per class}, each fitted by `rule` on that fold's inner-validation predictions
    (`truth` and `probs`, images x its `classes`); a class a fold's validation lacks gets NaN."""
    out = {}
    for fold, val in validation.items():
        out[fold] = np.array([fit_threshold(rule, val["truth"][:, val["classes"].index(c)],
                                            val["probs"][:, val["classes"].index(c)])
                              if c in val["classes"] else np.nan for c in classes])
    return out


def rates_at(threshold: float, truth, probs) -> Rates:
    """Sensitivity, specificity, PPV and NPV of calling `prob > threshold` positive (NaN where undefined)."""
    truth, probs = known_labels(truth, probs)
    said = probs > threshold
    real = truth == 1
    tp, fp = int((said & real).sum()), int((said & ~real).sum())
    fn, tn = int((~said & real).sum()), int((~said & ~real).sum())

    def share(a: int, b: int) -> float:
        return a / (a + b) if a + b else float("nan")

    return Rates(float(threshold), share(tp, fn), share(tn, fp), share(tp, fp), share(tn, fn))
