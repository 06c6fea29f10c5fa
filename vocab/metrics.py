"""The metrics, each declared once (`Metric`) and registered (`register`): how it is computed from a split's truth,
probabilities and thresholds, how it is aggregated over classes and images, and where the report shows it.

Everything that handles metrics reads this registry: the trainables compute every registered metric of a split
(trainables.metrics), the records carry them (vocab.records: MACRO_METRICS and the other lists below are read
from here when used), the store writes them (a per-epoch metric beyond learning_curves' columns is a row of
curve_metrics, so a new one needs no schema change), results.stats pools and resamples them with bootstrap
weights, and the report's cells, tables and figures take their columns, labels and thresholds from here
(docs/design.md §5, "A metric").

A metric other than a ranking score is one `counts` function: per image and class, a numerator and a denominator
(e.g. missed positives and positives), from which both sides compute it, so it is written once. The trainable
weighs every image 1 (`split_value`); the report weighs them by how often a bootstrap resample drew their
patient (`weighted_values`, in results.stats). The ranking scores (AUC, AP) need a sort, not counts: scikit-learn
computes them in trainables and their weighted twin (results.stats.weighted_auc_ap, tested against it) in the
report.

The registry's order is the order the report shows metrics in. vocab imports no project package and no torch:
results reads this without them.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from vocab.live import Names

Aggregate = Literal["macro", "pooled", "image", "split"]
Threshold = Literal["ranking", "fitted", "half", "none"]
AGGREGATES = ("macro", "pooled", "image", "split")
THRESHOLDS = ("ranking", "fitted", "half", "none")
RANKING = ("auc", "ap")  # the ranking scores both sides compute (scikit-learn's and results.stats' weighted twin)
TABLE_SPLITS = ("outer_train", "test")  # the splits whose fold means the report's cells carry
SPLIT_LABELS = {"outer_train": "Training", "test": "Test"}
FIGURES = ("bars", "epochs")  # backbone selection's bar charts; seed 003's curves over epochs
HALF = 0.5  # seed 003's threshold (Keras' binary accuracy): positive when p > 0.5
NAME = re.compile(r"[a-z][a-z0-9_]*")
LONGEST, LONGEST_EXTERNAL = 40, 16  # trial_metrics.metric and external_metrics.metric are VARCHAR(40) and (16)


class Entries(NamedTuple):
    """A split's predictions as a `counts` function sees them, images x classes."""

    truth: np.ndarray  # 1, 0, or NaN where unknown
    probs: np.ndarray  # float64
    known: np.ndarray  # the truth is known (and, for a metric that decides, the entry has a threshold)
    positive: np.ndarray  # truth == 1
    said: np.ndarray | None  # the decision, prob > threshold; None for a metric that does not decide


Counts = Callable[[Entries], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Metric:
    """One metric: what it is, how it is computed and aggregated, and where the report shows it.

    aggregate: `macro`, the mean over the classes where it is defined (a class with a zero denominator is not);
    `pooled`, over every counted (image, class) entry at once (seed 000's formula, Keras' metrics); `image`, over
    images (`counts` gives one column); `split`, one number the trainable computes itself (the loss).
    threshold: `ranking`, scores only (RANKING); `fitted`, decisions at each class's fitted threshold (seed 000:
    the training prevalence); `half`, at 0.5 (seed 003); `none`, no decision (prevalence, MAE).
    counts: Entries -> (numerator, denominator), each images x classes (`image`: images x 1) and zero outside
    `known`; the metric is the weighted sum of the one over the weighted sum of the other.
    """

    name: str
    label: str  # as a table header and an axis name it: "AUC", "false-negative rate"
    aggregate: Aggregate
    threshold: Threshold
    counts: Counts | None = None
    denominator: str = ""  # what the denominator counts, for why a class is undefined: "positive images"
    higher_is_better: bool | None = True  # None: neither (prevalence); a ranked table sorts by it
    percent: bool = False  # shown as a percentage
    title: str = ""  # a figure's title; the label, capitalised, if empty
    curve: bool = False  # reported every epoch on inner validation (EpochReport.val: the learning curves)
    tables: tuple[str, ...] = ()  # TABLE_SPLITS whose mean +/- sd over folds the report's cells carry
    interval: bool = False  # the cells also carry its pooled out-of-fold value with a bootstrap 95% CI
    figures: tuple[str, ...] = ()  # FIGURES that draw it
    external: bool = False  # each fold model is scored with it on external sets (external_metrics)

    def __post_init__(self):
        """A malformed declaration is the contributor's bug: it stops the registration, saying what to write."""
        problems = []
        if not NAME.fullmatch(self.name) or len(self.name) > LONGEST:
            problems.append(f"a lower-case identifier of at most {LONGEST} characters as its name")
        if self.aggregate not in AGGREGATES or self.threshold not in THRESHOLDS:
            problems.append(f"aggregate one of {AGGREGATES} and threshold one of {THRESHOLDS}")
        if self.threshold == "ranking" and (self.name not in RANKING or self.aggregate != "macro" or self.counts):
            problems.append(f"a ranking score is one of {RANKING}, macro, without counts (each has its "
                            f"scikit-learn and weighted forms)")
        if self.aggregate == "split" and (self.counts or self.threshold != "none" or self.interval or self.external):
            problems.append("a split metric (computed by the trainable) has threshold 'none', no counts, no "
                            "interval and no external scores")
        if self.aggregate != "split" and self.threshold != "ranking" and self.counts is None:
            problems.append("counts: Entries -> (numerator, denominator)")
        if not set(self.tables) <= set(TABLE_SPLITS) or not set(self.figures) <= set(FIGURES):
            problems.append(f"tables among {TABLE_SPLITS} and figures among {FIGURES}")
        if "epochs" in self.figures and not self.curve:
            problems.append("curve=True for the figure over epochs")
        if self.external and (self.threshold == "fitted" or len(self.name) > LONGEST_EXTERNAL):
            problems.append(f"external scores need no fitted thresholds and a name of at most {LONGEST_EXTERNAL} "
                            f"characters")
        if problems:
            raise ValueError(f"metric {self.name!r}: expected {'; '.join(problems)}")

    @property
    def decides(self) -> bool:
        """Whether it is computed from decisions (prob > threshold)."""
        return self.threshold in ("fitted", "half")

    @property
    def heading(self) -> str:
        return self.title or self.label[:1].upper() + self.label[1:]


REGISTRY: dict[str, Metric] = {}  # name -> declaration, in the order the report shows them


def register(metric: Metric) -> Metric:
    """Make `metric` known to the trainables, the records, the store and the report; a second, different
    declaration of the same name is a bug."""
    if REGISTRY.get(metric.name, metric) != metric:
        raise ValueError(f"metric {metric.name!r} is declared twice")
    REGISTRY[metric.name] = metric
    return metric


def metric(name: str) -> Metric:
    if name not in REGISTRY:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _named(keep: Callable[[Metric], bool]) -> Names:
    return Names(lambda: (m.name for m in REGISTRY.values() if keep(m)))


# The registry's names by kind, read when used (a metric registered later is in them). Per class, then macro:
# the mean over the classes where it is defined, with how many those were (`<metric>_classes` in a report)...
MACRO_METRICS = _named(lambda m: m.aggregate == "macro")
# ... or pooled over every counted (image, label) entry; each of them also per class
POOLED_METRICS = _named(lambda m: m.aggregate == "pooled")
PER_CLASS_METRICS = Names(lambda: (*MACRO_METRICS, *POOLED_METRICS))
IMAGE_METRICS = _named(lambda m: m.aggregate == "image")  # over images (exact match): one number for the split
SPLIT_METRICS = Names(lambda: (*PER_CLASS_METRICS, *IMAGE_METRICS, *(m.name for m in REGISTRY.values()
                                                                       if m.aggregate == "split")))
EPOCH_METRICS = _named(lambda m: m.curve)  # what every epoch reports of the inner validation split: `val_auc`, ...
PREDICTED_METRICS = _named(lambda m: m.aggregate != "split")  # computed from predictions (results.stats)


def thresholds_for(metric: Metric, fitted):
    """The thresholds `metric` decides at: 0.5, the fitted ones given (per class or per image), or None."""
    return {"half": HALF, "fitted": fitted}.get(metric.threshold)


def entries(metric: Metric, truth, probs, thresholds=None) -> Entries:
    """What `counts` sees. A metric that decides needs its thresholds (scalar, per class or per image; an entry
    whose threshold is NaN is not counted)."""
    truth, probs = np.asarray(truth, np.float64), np.asarray(probs, np.float64)
    known, said = ~np.isnan(truth), None
    if metric.decides:
        if thresholds is None:
            raise ValueError(f"metric {metric.name!r} decides at thresholds (prob > threshold); none were given")
        thresholds = np.broadcast_to(np.asarray(thresholds, np.float64), probs.shape)
        known = known & ~np.isnan(thresholds)
        said = probs > thresholds
    return Entries(truth, probs, known, truth == 1, said)


def counted(metric: Metric, truth, probs, thresholds=None) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) per image and class (one column for an image metric), as float64."""
    numerator, denominator = metric.counts(entries(metric, truth, probs, thresholds))
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    rows, columns = np.shape(truth)
    width = 1 if metric.aggregate == "image" else columns
    numerator, denominator = numerator.reshape(rows, -1), denominator.reshape(rows, -1)
    if numerator.shape != (rows, width) or denominator.shape != (rows, width):
        raise ValueError(f"metric {metric.name!r}: counts gave {numerator.shape} and {denominator.shape}; "
                         f"expected ({rows}, {width}) each")
    return numerator, denominator


def macro_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the defined (non-NaN) columns of each row; NaN where none is defined."""
    defined = ~np.isnan(values)
    count = defined.sum(axis=1)
    total = np.where(defined, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def pooled_columns(metric: Metric, numerator: np.ndarray, denominator: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The columns whose weighted ratio `macro_mean` averages: per class for a macro metric; summed over the
    classes per image (one column) for a pooled one; as they are for an image metric."""
    if metric.aggregate == "pooled":
        return numerator.sum(axis=1, keepdims=True), denominator.sum(axis=1, keepdims=True)
    return numerator, denominator


def weighted_values(metric: Metric, numerator: np.ndarray, denominator: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The metric for each row of `weights` (resamples x images), from `pooled_columns`; NaN where undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return macro_mean((weights @ numerator) / (weights @ denominator))


def split_value(metric: Metric, numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, np.ndarray | None]:
    """(the split's value, per class values or None) at unit weights: what a trial reports. A macro mean is numpy's
    mean of the defined classes, as the trainables always computed it (a masked row sum, `macro_mean`, can differ
    in the last bit from 8 classes on; each side keeps its own so that no stored number changes)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric.aggregate == "image":
            return float(numerator.sum() / denominator.sum()), None
        per_class = numerator.sum(axis=0) / denominator.sum(axis=0)
        if metric.aggregate == "pooled":
            return float(numerator.sum() / denominator.sum()), per_class
    defined = ~np.isnan(per_class)
    return (float(per_class[defined].mean()) if defined.any() else float("nan")), per_class


# The built-in metrics' counts. `e.known` is False where a label is unknown (or, deciding, has no threshold).
def _positives(e: Entries):
    return e.known & e.positive, e.known


def _wrong(e: Entries):
    return e.known & (e.said != e.positive), e.known


def _right(e: Entries):
    return e.known & (e.said == e.positive), e.known


def _missed(e: Entries):
    return e.known & e.positive & ~e.said, e.known & e.positive


def _absolute_error(e: Entries):
    return np.where(e.known, np.abs(e.probs - np.nan_to_num(e.truth)), 0.0), e.known


def _whole_image(e: Entries):
    """Seed 003's "absolute accuracy": an image with a known label counts as right when every known label is."""
    labelled = e.known.any(axis=1)
    return (labelled & (_right(e)[0] == e.known).all(axis=1))[:, None], labelled[:, None]


for _metric in (
        Metric("ap", "AP", "macro", "ranking", title="Average precision", curve=True, tables=("test",), interval=True,
               figures=("bars",), external=True),
        Metric("auc", "AUC", "macro", "ranking", curve=True, tables=("test",), interval=True, figures=("bars",),
               external=True),
        Metric("prevalence", "prevalence", "macro", "none", _positives, "labelled images", higher_is_better=None),
        Metric("hamming", "Hamming loss", "pooled", "fitted", _wrong, "labelled images", higher_is_better=False,
               tables=("test",), figures=("bars",)),
        Metric("hamming_05", "Hamming loss at 0.5", "pooled", "half", _wrong, "labelled images",
               higher_is_better=False),
        Metric("binary_acc", "binary accuracy", "pooled", "half", _right, "labelled images", percent=True, curve=True,
               tables=("outer_train", "test"), figures=("epochs",)),
        Metric("exact_match", "exact-match accuracy", "image", "half", _whole_image, "labelled images",
               percent=True, curve=True, tables=("test",), figures=("epochs",)),
        Metric("fnr", "false-negative rate", "macro", "half", _missed, "positive images", higher_is_better=False,
               percent=True, curve=True, tables=("test",), figures=("epochs",)),
        Metric("mae", "MAE", "pooled", "none", _absolute_error, "labelled images", higher_is_better=False,
               tables=("outer_train",)),
        Metric("loss", "loss", "split", "none", higher_is_better=False, curve=True)):
    register(_metric)
