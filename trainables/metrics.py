"""Multi-label metrics of both studies, per class and macro, with masked (NaN) truth left out.

Scores and curves come from scikit-learn. A class whose truth in a split has no positives
(or no negatives) gets NaN for the metrics that need both, and a line in `undefined` saying
why. AUC, AP, prevalence and false-negative rate are macro means over the defined classes
(`<metric>_classes` says how many); Hamming loss, binary accuracy and MAE are pooled over
every known (image, label) entry, as seed 000's formula and Keras' metrics define them.

Thresholds: seed 000 predicts a label when p/(1-p) exceeds the class's positive-to-negative
ratio in the training data, i.e. when p exceeds the training prevalence (`fitted_thresholds`);
seed 003's binary accuracy, exact-match ("absolute") accuracy and false-negative rate use 0.5.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from vocab.names import POOLED_METRICS
from vocab.records import SplitMetrics

HALF = 0.5


def fitted_thresholds(train_labels: np.ndarray) -> np.ndarray:
    """Seed 000's threshold per class: the training prevalence (NaN where nothing is known)."""
    known = (~np.isnan(train_labels)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(train_labels, axis=0) / known


def _ranking_scores(truth: np.ndarray, prob: np.ndarray, name: str, undefined: list[str]) -> tuple[float, float]:
    positives = int(truth.sum())
    if len(truth) == 0:
        undefined.append(f"auc, ap [{name}]: no labelled images in this split")
    elif positives == 0 or positives == len(truth):
        kind = "positive" if positives == 0 else "negative"
        undefined.append(f"auc, ap [{name}]: no {kind} images among {len(truth)} in this split")
    else:
        return roc_auc_score(truth, prob), average_precision_score(truth, prob)
    return np.nan, np.nan


def _class_metrics(truth: np.ndarray, prob: np.ndarray, threshold: float, name: str, undefined: list[str]) -> dict:
    auc, ap = _ranking_scores(truth, prob, name, undefined)
    said = (prob > HALF)
    n, positives = len(truth), truth == 1
    out = {"auc": auc, "ap": ap, "prevalence": positives.mean() if n else np.nan,
           "hamming": (((prob > threshold) != positives).mean() if n and not np.isnan(threshold) else np.nan),
           "hamming_05": (said != positives).mean() if n else np.nan,
           "mae": np.abs(prob - truth).mean() if n else np.nan}
    out["binary_acc"] = 1.0 - out["hamming_05"]
    if positives.any():
        out["fnr"] = (~said & positives).sum() / positives.sum()
    else:
        out["fnr"] = np.nan
        if n:
            undefined.append(f"fnr [{name}]: no positive images in this split")
    return out


def _macro(values: np.ndarray) -> tuple[float, int]:
    defined = ~np.isnan(values)
    return (float(values[defined].mean()) if defined.any() else float("nan")), int(defined.sum())


def _pooled(values: np.ndarray, counts: np.ndarray) -> float:
    """Mean over every known entry of the classes where the metric is defined."""
    defined = ~np.isnan(values) & (counts > 0)
    return float((values[defined] * counts[defined]).sum() / counts[defined].sum()) if defined.any() else float("nan")


def multilabel_metrics(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray | None = None,
                       label_names: list[str] | None = None) -> dict:
    """Every metric per class (`<metric>_per_class`) and macro (`<metric>`), `exact_match`, `undefined`.

    `thresholds` are the fitted per-class thresholds (`fitted_thresholds` of the training labels);
    without them the fitted-threshold Hamming loss is NaN.
    """
    n_classes = y_true.shape[1]
    names = label_names or [f"class {k}" for k in range(n_classes)]
    if thresholds is None:
        undefined = ["hamming: no fitted thresholds were given"]
        thresholds = np.full(n_classes, np.nan)
    else:
        thresholds = np.asarray(thresholds, float)
        undefined = [f"hamming [{names[k]}]: no fitted threshold (no labelled training images)"
                     for k in np.flatnonzero(np.isnan(thresholds))]
    rows = []
    for k in range(n_classes):
        known = ~np.isnan(y_true[:, k])
        rows.append(_class_metrics(y_true[known, k], y_prob[known, k].astype(np.float64), thresholds[k], names[k],
                                   undefined))
    out: dict = {"undefined": undefined}
    counts = (~np.isnan(y_true)).sum(axis=0)
    for metric in rows[0] if rows else ():  # what _class_metrics computes, under its names (checked by split_metrics)
        values = np.array([row[metric] for row in rows], dtype=np.float64)
        out[f"{metric}_per_class"] = values.tolist()
        if metric in POOLED_METRICS:
            out[metric] = _pooled(values, counts)
        else:
            out[metric], out[f"{metric}_classes"] = _macro(values)
    out["exact_match"] = _exact_match(y_true, y_prob)
    return out


def _exact_match(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Seed 003's "absolute accuracy": every known label of an image right at 0.5."""
    known = ~np.isnan(y_true)
    wrong = ((y_prob > HALF) != (y_true == 1)) & known
    rows = known.any(axis=1)
    return float((~wrong[rows].any(axis=1)).mean()) if rows.any() else float("nan")


def split_metrics(metrics: dict) -> SplitMetrics:
    """A split's metrics (`multilabel_metrics`' and its `loss`) as the record a trial reports: a metric computed
    under a name vocab.names does not know, or one not computed, stops the trial here, naming it."""
    per_class = {name.removesuffix("_per_class"): v for name, v in metrics.items() if name.endswith("_per_class")}
    classes = {name.removesuffix("_classes"): v for name, v in metrics.items() if name.endswith("_classes")}
    macro = {name: v for name, v in metrics.items() if name != "undefined" and not name.endswith(("_per_class", "_classes"))}
    return SplitMetrics(macro=macro, per_class=per_class, classes=classes, undefined=list(metrics["undefined"]))
