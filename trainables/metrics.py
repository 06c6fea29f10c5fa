"""A split's multi-label metrics, per class and for the split: every metric of the registry (vocab.metrics),
with masked (NaN) truth left out.

Each metric but the ranking scores is computed from its registered counts at unit weights
(`vocab.metrics.split_value`): the same numerators and denominators the report resamples with bootstrap
weights, so a metric is written once. AUC and AP come from scikit-learn. A class whose truth in a split has
no positives (or no negatives) gets NaN for the metrics that need them, and a line in `undefined` saying why.
Macro metrics are means over the defined classes (`<metric>_classes` says how many); pooled ones count every
known (image, label) entry, as seed 000's formula and Keras' metrics define them.

Thresholds: seed 000 predicts a label when p/(1-p) exceeds the class's positive-to-negative ratio in the
training data, i.e. when p exceeds the training prevalence (`fitted_thresholds`, a metric's `fitted`
threshold); seed 003's binary accuracy, exact-match ("absolute") accuracy and false-negative rate use 0.5.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from vocab.metrics import REGISTRY, Metric, counted, split_value, thresholds_for
from vocab.records import SplitMetrics

# vocab.metrics' ranking scores by scikit-learn, reported under these names (the records refuse any other)
RANKING = {"auc": roc_auc_score, "ap": average_precision_score}


def fitted_thresholds(train_labels: np.ndarray) -> np.ndarray:
    """Seed 000's threshold per class: the training prevalence (NaN where nothing is known)."""
    known = (~np.isnan(train_labels)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(train_labels, axis=0) / known


def _macro(values: np.ndarray) -> tuple[float, int]:
    defined = ~np.isnan(values)
    return (float(values[defined].mean()) if defined.any() else float("nan")), int(defined.sum())


def _ranking(y_true: np.ndarray, y_prob: np.ndarray, names: list[str], undefined: list[str]) -> dict[str, np.ndarray]:
    """Per class, each ranking score (RANKING); NaN, with a reason, where a class lacks positives or negatives."""
    out = {m: np.full(y_true.shape[1], np.nan) for m in RANKING}
    for k in range(y_true.shape[1]):
        known = ~np.isnan(y_true[:, k])
        truth, prob = y_true[known, k], y_prob[known, k].astype(np.float64)
        positives = int(truth.sum())
        if len(truth) == 0:
            undefined.append(f"{', '.join(RANKING)} [{names[k]}]: no labelled images in this split")
        elif positives == 0 or positives == len(truth):
            kind = "positive" if positives == 0 else "negative"
            undefined.append(f"{', '.join(RANKING)} [{names[k]}]: no {kind} images among {len(truth)} in this split")
        else:
            for m, score in RANKING.items():
                out[m][k] = score(truth, prob)
    return out


def _why_undefined(metric: Metric, y_true: np.ndarray, thresholds, denominator: np.ndarray, names: list[str]) -> list[str]:
    """A line per class where `metric` is undefined though the class has labelled images."""
    if metric.threshold == "fitted" and thresholds is None:
        return [f"{metric.name}: no fitted thresholds were given"]
    lines = []
    labelled = (~np.isnan(y_true)).any(axis=0)
    for k in np.flatnonzero(labelled & (denominator.sum(axis=0) == 0)):
        if metric.threshold == "fitted" and np.isnan(thresholds[k]):
            lines.append(f"{metric.name} [{names[k]}]: no fitted threshold (no labelled training images)")
        elif metric.aggregate == "macro":
            lines.append(f"{metric.name} [{names[k]}]: no {metric.denominator} in this split")
    return lines


def multilabel_metrics(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray | None = None,
                       label_names: list[str] | None = None) -> dict:
    """Every registered metric computed from predictions: per class (`<metric>_per_class`) and for the split
    (`<metric>`, with `<metric>_classes` for a macro metric), and `undefined`, the reasons for NaN.

    `thresholds` are the fitted per-class thresholds (`fitted_thresholds` of the training labels); without them
    the metrics that decide at them are NaN.
    """
    names = label_names or [f"class {k}" for k in range(y_true.shape[1])]
    fitted = None if thresholds is None else np.asarray(thresholds, float)
    undefined: list[str] = []
    out: dict = {"undefined": undefined}
    for name, per_class in _ranking(y_true, y_prob, names, undefined).items():  # under RANKING's names
        out[name], out[f"{name}_classes"] = _macro(per_class)
        out[f"{name}_per_class"] = per_class.tolist()
    for metric in REGISTRY.values():
        if metric.aggregate == "split" or metric.threshold == "ranking":  # the loss is the trainable's own
            continue
        at = thresholds_for(metric, np.full(y_true.shape[1], np.nan) if fitted is None else fitted)
        numerator, denominator = counted(metric, y_true, y_prob, at)
        out[metric.name], per_class = split_value(metric, numerator, denominator)
        undefined += _why_undefined(metric, y_true, fitted, denominator, names)
        if per_class is not None:
            out[f"{metric.name}_per_class"] = per_class.tolist()
        if metric.aggregate == "macro":
            out[f"{metric.name}_classes"] = _macro(per_class)[1]
    return out


def split_metrics(metrics: dict) -> SplitMetrics:
    """A split's metrics (`multilabel_metrics`' and its `loss`) as the record a trial reports: a metric computed
    under a name the registry does not know, or one not computed, stops the trial here, naming it."""
    per_class = {name.removesuffix("_per_class"): v for name, v in metrics.items() if name.endswith("_per_class")}
    classes = {name.removesuffix("_classes"): v for name, v in metrics.items() if name.endswith("_classes")}
    macro = {name: v for name, v in metrics.items() if name != "undefined" and not name.endswith(("_per_class", "_classes"))}
    return SplitMetrics(macro=macro, per_class=per_class, classes=classes, undefined=list(metrics["undefined"]))
