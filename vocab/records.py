"""What a trial hands on, as typed records defined once: each epoch's report, the trial's result at its end, and
the predictions it keeps. The trainable builds them, so a metric it does not compute, or computes under another
name, stops the trial naming the key, where the metric is made; the sweeper, the store and sweeper.rerun read
them back with `from_report`/`from_state`, which refuse a key they do not know, or a missing one, naming it.
Nothing is dropped on the way: there is no key a reader skips.

Ray Tune passes results as flat dicts (it flattens nested ones, docs/design.md §4), so a record's `to_report()` is
flat, under vocab.names' keys (`val_auc`, `test_auc_per_class`, `outer_train_undefined`), and `from_report` reads
that form back, leaving out by name the keys Ray adds (`RAY_KEYS`) and those earlier versions wrote
(`RETIRED_KEYS`, so that a checkpoint or a resumed sweep of theirs still reads).
"""
from __future__ import annotations

import math
from typing import Callable, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from vocab.errors import CxrSweepError
from vocab.metrics import EPOCH_METRICS, MACRO_METRICS, PER_CLASS_METRICS, SPLIT_METRICS
from vocab.names import FINAL_SPLITS, PREDICTION_SPLITS, metric_key

# What Ray Tune adds to a trial's result (ray.tune.result's AUTO_RESULT_KEYS and DEBUG_METRICS, `done`,
# `should_checkpoint` and the experiment tag; tests/vocab/test_records.py holds this list to Ray's), and the trial's
# config, nested or flattened
RAY_KEYS = frozenset({"training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore",
                      "iterations_since_restore", "timesteps_total", "timesteps_since_restore", "episodes_total",
                      "timestamp", "date", "done", "trial_id", "experiment_id", "experiment_tag", "pid", "hostname",
                      "node_ip", "checkpoint_dir_name", "should_checkpoint", "config"})
RAY_PREFIX = "config/"
# Written by earlier versions, read and left out: val_hamming was reported every epoch with no column and no reader
RETIRED_KEYS = frozenset({"val_hamming"})


class RecordError(CxrSweepError, ValueError):
    """A report, result or predictions whose keys or values are not the record's; the message names them. (A
    ValueError too: within an enclosing record's validation it is reported at its place, `splits.test`.)"""


def _names_check(given, expected, where: str = "") -> None:
    """Exactly `expected`'s names, or a ValueError naming the unknown and missing ones."""
    unknown, missing = [k for k in given if k not in expected], [k for k in expected if k not in given]
    if unknown or missing:
        said = [f"unknown metric(s) {', '.join(unknown)}"] * bool(unknown) + [f"missing {', '.join(missing)}"] * bool(missing)
        raise ValueError(f"{where}{': ' * bool(where)}{'; '.join(said)} (expected exactly {', '.join(expected)}: "
                         f"vocab.metrics)")


def _explained(error: ValidationError) -> str:
    return "; ".join(": ".join([*(".".join(map(str, e["loc"])),) * bool(e["loc"]), e["msg"].removeprefix("Value error, ")])
                     for e in error.errors(include_url=False))


class _Record(BaseModel):
    """Frozen and strict about its keys; a bad value or key is a RecordError naming it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **fields):
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise RecordError(f"{type(self).__name__}: {_explained(exc)}") from None


class SplitMetrics(_Record):
    """One split's evaluation: every metric per class and for the split (macro or pooled, vocab.metrics), how many
    classes each macro mean is over, and why a metric is undefined (NaN) where it is."""

    macro: dict[str, float]
    per_class: dict[str, list[float]]
    classes: dict[str, int]
    undefined: list[str]

    @model_validator(mode="after")
    def _every_metric(self):
        _names_check(self.macro, SPLIT_METRICS, "macro")
        _names_check(self.per_class, PER_CLASS_METRICS, "per_class")
        _names_check(self.classes, MACRO_METRICS, "classes")
        lengths = {len(values) for values in self.per_class.values()}
        if len(lengths) > 1:
            raise ValueError(f"per-class metrics of different lengths {sorted(lengths)}")
        for metric, count in self.classes.items():  # what the DB's per-class rows give back (non-NULL ones)
            if count != sum(not math.isnan(v) for v in self.per_class[metric]):
                raise ValueError(f"{metric}_classes is {count}, but {metric} is defined for "
                                 f"{sum(not math.isnan(v) for v in self.per_class[metric])} classes")
        return self

    @property
    def n_classes(self) -> int:
        return len(next(iter(self.per_class.values())))


def _get(record: BaseModel, path: tuple[str, ...]):
    value = getattr(record, path[0])
    for key in path[1:]:
        value = getattr(value, key) if isinstance(value, BaseModel) else value[key]
    return value


def _put(nested: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        nested = nested.setdefault(key, {})
    nested[path[-1]] = value


def own_keys(result: Mapping) -> dict:
    """A Ray result without Ray's own keys and the retired ones."""
    return {k: v for k, v in result.items() if k not in RAY_KEYS and k not in RETIRED_KEYS
            and not k.startswith(RAY_PREFIX)}


class EpochReport(_Record):
    """What a trial reports after each epoch; ASHA and Optuna read `val_auc` of it, the store a learning-curve row."""

    epoch: int
    train_loss: float
    val: dict[str, float]  # EPOCH_METRICS of the inner validation split: `val_auc`, ... in the report
    lr: float
    best_epoch: int
    best_val_auc: float  # the best epoch's, in full precision (a TrialResult's is of the weights it keeps)
    epoch_seconds: float
    train_images_per_second: float
    data_wait_seconds: float
    node_id: str | None = None  # the Ray node that trained it (trainables.tune_adapter); none outside Ray

    @field_validator("val")
    @classmethod
    def _every_epoch_metric(cls, val: dict[str, float]) -> dict[str, float]:
        _names_check(val, EPOCH_METRICS)
        return val

    @classmethod
    def layout(cls) -> dict[str, tuple[str, ...]]:
        """Each key of the flat report -> where its value is in the record."""
        out: dict[str, tuple[str, ...]] = {}
        for name in cls.model_fields:
            if name == "val":
                out.update({metric_key("val", m): ("val", m) for m in EPOCH_METRICS})
            elif name == "splits":
                for split in FINAL_SPLITS:
                    out.update({metric_key(split, m): ("splits", split, "macro", m) for m in SPLIT_METRICS})
                    out.update({metric_key(split, f"{m}_per_class"): ("splits", split, "per_class", m)
                                for m in PER_CLASS_METRICS})
                    out.update({metric_key(split, f"{m}_classes"): ("splits", split, "classes", m) for m in MACRO_METRICS})
                    out[metric_key(split, "undefined")] = ("splits", split, "undefined")
            else:
                out[name] = (name,)
        return out

    def to_report(self) -> dict:
        """The flat dict Ray is given (and a final checkpoint keeps): plain floats, ints, strings and lists."""
        report = {key: _get(self, path) for key, path in self.layout().items()}
        return {k: list(v) if isinstance(v, list) else v for k, v in report.items()
                if not (k == "node_id" and v is None)}

    @classmethod
    def from_report(cls, result: Mapping):
        """Read a flat report back (Ray's keys left out); any other key the record does not have, or one it
        lacks, is a RecordError naming it."""
        given, layout = own_keys(result), cls.layout()
        unknown = [k for k in given if k not in layout]
        missing = [k for k, path in layout.items() if k not in given and cls.model_fields[path[0]].is_required()]
        if unknown or missing:
            said = [f"unknown key(s) {', '.join(unknown)}"] * bool(unknown) + [f"missing {', '.join(missing)}"] * bool(missing)
            raise RecordError(f"{cls.__name__} report: {'; '.join(said)}")
        nested: dict = {}
        for key, value in given.items():
            _put(nested, layout[key], value)
        return cls(**nested)


class TrialResult(EpochReport):
    """A completed trial's last report: its last epoch's, with its best weights' evaluation on FINAL_SPLITS, the
    fitted thresholds and why it stopped. `best_val_auc` is here the inner-validation AUC of the weights it keeps
    (half precision, docs/design.md §3.2): what Optuna is told and `selected_trials` ranks by."""

    thresholds: list[float]  # per class: the training prevalence (seed 000's rule)
    splits: dict[str, SplitMetrics]
    completed: Literal[True]
    stop_reason: Literal["epochs", "early_stopping"]

    @model_validator(mode="after")
    def _every_split(self):
        _names_check(self.splits, FINAL_SPLITS, "splits")
        counts = {split: metrics.n_classes for split, metrics in self.splits.items()}
        if set(counts.values()) != {len(self.thresholds)}:
            raise ValueError(f"{len(self.thresholds)} thresholds, but per-class metrics of {counts} classes")
        return self


def parse_report(result: Mapping | None) -> EpochReport | TrialResult | None:
    """A Ray result as its record: a TrialResult when it says `completed`, else an EpochReport; None when it holds
    nothing of ours (a trial that failed before its first report)."""
    given = own_keys(result or {})
    if not given:
        return None
    return (TrialResult if given.get("completed") else EpochReport).from_report(given)


class Runtime(_Record):
    """What a re-run of a trial needs beyond its FitConfig to give the same predictions (sweeper.rerun): the
    threads and precision it computed with, the library versions, and the data and pretrained weights it read,
    by content."""

    threads: int
    device: str
    precision: str
    torch: str
    torchvision: str
    numpy: str
    dataset_id: str
    folds_sha256: str
    pretrained_sha256: str | None


class SplitPredictions(_Record):
    """One split's per-image probabilities with their truth (NaN: unknown) and pseudonymous keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    image_keys: list[str]
    patient_keys: list[str]
    labels: np.ndarray  # images x labels
    probs: np.ndarray  # images x labels

    @field_validator("labels", "probs", mode="before")
    @classmethod
    def _array(cls, value) -> np.ndarray:
        return np.asarray(value)  # a checkpoint's tensor reads without a copy

    @model_validator(mode="after")
    def _one_row_per_image(self):
        images = len(self.image_keys)
        if (self.probs.ndim != 2 or self.probs.shape != self.labels.shape or self.probs.shape[0] != images
                or len(self.patient_keys) != images):
            raise ValueError(f"probs of shape {self.probs.shape} and labels of shape {self.labels.shape} do not "
                             f"match {images} image keys and {len(self.patient_keys)} patient keys")
        return self


class TrialPredictions(_Record):
    """What a completed trial keeps of its best weights' predictions (PREDICTION_SPLITS), with what it ran with;
    in its final checkpoint and in the small predictions file beside it, as `to_state()`."""

    label_names: list[str]
    best_epoch: int
    runtime: Runtime
    splits: dict[str, SplitPredictions]

    @model_validator(mode="after")
    def _every_split(self):
        _names_check(self.splits, PREDICTION_SPLITS, "splits")
        for split, predictions in self.splits.items():
            if predictions.probs.shape[1] != len(self.label_names):
                raise ValueError(f"{split}: probabilities for {predictions.probs.shape[1]} labels, but "
                                 f"{len(self.label_names)} label names")
        return self

    def to_state(self, array: Callable = np.asarray) -> dict:
        """The checkpoint's layout: the splits at the top level (`test`, `val`), each array through `array`
        (torch.from_numpy, for a checkpoint that loads with weights_only)."""
        return {"label_names": list(self.label_names), "best_epoch": self.best_epoch,
                "runtime": self.runtime.model_dump(),
                **{split: {"image_keys": list(p.image_keys), "patient_keys": list(p.patient_keys),
                           "labels": array(p.labels), "probs": array(p.probs)} for split, p in self.splits.items()}}

    @classmethod
    def from_state(cls, state: Mapping) -> "TrialPredictions":
        expected = ("label_names", "best_epoch", "runtime", *PREDICTION_SPLITS)
        unknown, missing = [k for k in state if k not in expected], [k for k in expected if k not in state]
        if unknown or missing:
            raise RecordError(f"TrialPredictions: unknown key(s) {unknown}, missing {missing}; expected {expected}")
        return cls(label_names=state["label_names"], best_epoch=state["best_epoch"], runtime=state["runtime"],
                   splits={split: state[split] for split in PREDICTION_SPLITS})
