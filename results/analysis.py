"""A loaded sweep with its per-cell statistics, computed once and shared by every table and figure.

Each (cell, fold) contributes its selected trial (best on inner validation): a cell's columns are
mean and sd over those folds. Its pooled AUC and AP are computed on all its out-of-fold test
predictions at once, with a patient-clustered bootstrap interval; two cells are compared with a
paired bootstrap on the test images and classes both were evaluated on (results.stats).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from results import stats
from results.delong import macro_delong_test
from results.load import SweepData
from vocab import metrics as registry
from vocab.metrics import REGISTRY, TABLE_SPLITS


def column(split: str, metric: str) -> str:
    """A cells-frame column's stem: the test split's metric by its name (`auc`), another split's prefixed
    (`train_binary_acc`)."""
    return metric if split == "test" else f"train_{metric}"


def columns() -> dict[str, tuple[str, str]]:
    """{stem: (split, metric)} of every metric the registry shows in tables (its `tables` splits), training
    first, then test, each in the registry's order: the cells' `<stem>_mean` and `<stem>_sd` columns."""
    return {column(split, m.name): (split, m.name) for split in TABLE_SPLITS for m in REGISTRY.values()
            if split in m.tables}


def percent(stem: str) -> bool:
    """Whether a cells-frame column (`train_binary_acc`, `fnr`) is shown as a percentage."""
    found = columns().get(stem)
    return found is not None and REGISTRY[found[1]].percent


def dataset_label(init: str, strategy: str, sources: list[str]) -> str:
    """The paper's "Dataset" column: where the weights come from."""
    parts = (["ImageNet"] if init == "imagenet" else []) + list(sources)
    return " + ".join(parts) if parts else "none (scratch)"


def method_label(strategy: str) -> str:
    return {"regular": "Regular transfer learning", "mixed": "Mixed model", "co_trained": "Co-trained"}.get(
        strategy, strategy)


def fmt(value: float, sd: float | None = None, percent: bool = False) -> str:
    if value is None or pd.isna(value):
        return "missing"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{value * scale:.2f}{unit}" if percent else f"{value:.3f}"
    if sd is not None and not pd.isna(sd):
        text += f" +/- {sd * scale:.2f}{unit}" if percent else f" +/- {sd:.3f}"
    return text


def at_floor(comparison) -> tuple[float, bool]:
    """(p, whether it is the smallest p the resamples can show): a p at or below that floor (no resample
    crossed zero) is the floor, an upper bound rather than a value."""
    floor = 2.0 / (comparison.n_valid + 1)
    below = comparison.p_value <= floor * (1 + 1e-9)
    return (floor if below else comparison.p_value), below


P_SMALLEST = 0.001  # below it neither a normal tail (DeLong) nor 1,000 resamples (bootstrap) supports digits


def p_relation(p: float, bound: bool) -> str:
    """'=0.03' (2 decimals from 0.01), '=0.004' (3 below), '<0.001' below 0.001, '<=0.007' for an upper bound
    (rounded up, so that it stays one): the AMA Manual of Style's rule. A DeLong p of 1e-35 is a normal tail
    far beyond what 100 patients can support, and a bootstrap p's resolution is 2/(resamples+1); the CSV keeps
    the raw value."""
    if p < P_SMALLEST:
        return f"<{P_SMALLEST:g}"
    decimals = 2 if p >= 0.01 else 3
    if bound:
        return f"<={math.ceil(p * 10 ** decimals - 1e-9) / 10 ** decimals:.{decimals}f}"
    return f"={p:.{decimals}f}"


def format_p(p: float, bound: bool) -> str:
    """'p=0.03', 'p<0.001', or 'p<=0.002' for an upper bound (p_relation's precision)."""
    return "p" + p_relation(p, bound)


def p_text(comparison) -> str:
    """'p=0.03', or 'p<=0.002' where no resample crossed zero: the smallest p the resamples can show."""
    if comparison is None or pd.isna(comparison.p_value):
        return ""
    return format_p(*at_floor(comparison))


def fmt_p(comparison, percent: bool = False) -> str:
    if comparison is None or pd.isna(comparison.p_value):
        return ""
    diff = f"{comparison.difference * 100:+.2f} points" if percent else f"{comparison.difference:+.3f}"
    return f"{diff} ({p_text(comparison)})"


@dataclass
class Analysis:
    """A sweep with its per-cell statistics, computed once and shared by every table."""

    data: SweepData
    n_boot: int = 1000
    seed: int = 0
    _pairs: dict = field(default_factory=dict)
    _resamples: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)  # what several report sections compute once (the clinical fits)

    @cached_property
    def pooled(self) -> dict[tuple, dict | None]:
        return {key: self.data.pooled(key) for key in self.data.cell_keys()}

    def _thresholds(self, metric: str, pooled: dict) -> np.ndarray | None:
        """What the metric decides at (vocab.metrics): 0.5, each image's fold model's fitted thresholds, or none."""
        at = registry.thresholds_for(registry.metric(metric), pooled["thresholds"])
        return np.full_like(pooled["probs"], at) if np.isscalar(at) else at

    def interval(self, key: tuple, metric: str):
        pooled = self.pooled[key]
        if pooled is None or self.n_boot <= 0:
            return None
        estimate, values = self.resampled(key, metric)
        return stats.Interval(estimate, *stats.percentile_interval(values), self.n_boot, len(values))

    def resampled(self, key: tuple, metric: str, columns: tuple[int, ...] | None = None) -> tuple[float, np.ndarray]:
        """(estimate, the metric on each patient resample) of a cell's pooled predictions, on the class
        `columns` given (all by default); computed once per cell, metric and columns, shared by the tables."""
        pooled = self.pooled[key]
        if columns is not None and list(columns) == list(range(len(pooled["classes"]))):
            columns = None  # all of them: the same numbers as the cell's own interval
        if (key, metric, columns) not in self._resamples:
            take = (lambda a: a) if columns is None else (lambda a: a[:, list(columns)])
            if metric in stats.RANKING:  # AUC and AP together: one sort per class and resample block for both
                truth, probs = take(pooled["truth"]), take(pooled["probs"])
                both = (stats.resampled_ranking(truth, probs, pooled["patients"], n_boot=self.n_boot, seed=self.seed)
                        if self.n_boot > 0 else {m: np.empty(0) for m in stats.RANKING})
                for m in stats.RANKING:
                    self._resamples[(key, m, columns)] = (stats.point_estimate(m, truth, probs), both[m])
                return self._resamples[(key, metric, columns)]
            thresholds = self._thresholds(metric, pooled)
            args = (metric, take(pooled["truth"]), take(pooled["probs"]))
            th = None if thresholds is None else take(thresholds)
            values = (stats.resampled(*args, pooled["patients"], th, n_boot=self.n_boot, seed=self.seed)
                      if self.n_boot > 0 else np.empty(0))
            self._resamples[(key, metric, columns)] = (stats.point_estimate(*args, th), values)
        return self._resamples[(key, metric, columns)]

    def compare(self, a: tuple, b: tuple, metric: str):
        """Paired bootstrap of a - b on the test images and classes both cells were evaluated on."""
        if (a, b, metric) not in self._pairs:
            self._pairs[(a, b, metric)] = self._paired(a, b, metric)
        return self._pairs[(a, b, metric)]

    def _shared(self, a: tuple, b: tuple):
        """(pooled a, pooled b, a's and b's image rows, a's and b's class columns) of the test images and
        classes both cells were evaluated on; None if they share none."""
        pa, pb = self.pooled[a], self.pooled[b]
        if pa is None or pb is None:
            return None
        images = np.intersect1d(pa["image_keys"], pb["image_keys"])
        classes = [c for c in pa["classes"] if c in pb["classes"]]
        if not len(images) or not classes:
            return None
        ia, ib = (np.searchsorted(p["image_keys"], images) for p in (pa, pb))
        ca, cb = ([p["classes"].index(c) for c in classes] for p in (pa, pb))
        return pa, pb, ia, ib, ca, cb

    def delong(self, a: tuple, b: tuple):
        """DeLong's test of a's minus b's pooled macro AUC on their shared test images, clustered by patient
        (results.delong.macro_delong_test); None where they share no image."""
        if (a, b, "delong") not in self._pairs:
            shared = self._shared(a, b)
            if shared is None:
                self._pairs[(a, b, "delong")] = None
            else:
                pa, pb, ia, ib, ca, cb = shared
                self._pairs[(a, b, "delong")] = macro_delong_test(
                    pa["truth"][np.ix_(ia, ca)], pa["probs"][np.ix_(ia, ca)], pb["probs"][np.ix_(ib, cb)],
                    pa["patients"][ia])
        return self._pairs[(a, b, "delong")]

    def _paired(self, a: tuple, b: tuple, metric: str):
        shared = self._shared(a, b) if self.n_boot > 0 else None
        if shared is None:
            return None
        pa, pb, ia, ib, ca, cb = shared
        take = lambda p, i, c, arr: None if arr is None else arr[np.ix_(i, c)]  # noqa: E731
        ta, tb = self._thresholds(metric, pa), self._thresholds(metric, pb)
        return stats.paired_bootstrap(metric, pa["truth"][np.ix_(ia, ca)], pa["probs"][np.ix_(ia, ca)],
                                      pb["probs"][np.ix_(ib, cb)], pa["patients"][ia],
                                      take(pa, ia, ca, ta), take(pb, ib, cb, tb), n_boot=self.n_boot, seed=self.seed)

    @cached_property
    def cells(self) -> pd.DataFrame:
        """One row per planned cell: labels, folds done, mean and sd per column, pooled intervals."""
        d = self.data
        rows = []
        for cell in d.cells.itertuples(index=False):
            key = (cell.backbone, cell.recipe, cell.variant)
            row = {"backbone": cell.backbone, "recipe": cell.recipe, "variant": cell.variant,
                   "strategy": cell.strategy, "method": method_label(cell.strategy),
                   "dataset": dataset_label(cell.init, cell.strategy, cell.sources),
                   "loss": cell.settings.get("loss", ""), "folds_done": 0, "folds_planned": len(d.folds)}
            for stem, (split, metric) in columns().items():
                part = d.macro(split, metric)
                values = part[(part.backbone == key[0]) & (part.recipe == key[1]) & (part.variant == key[2])]
                values = values["value"].dropna()
                row[f"{stem}_mean"] = values.mean() if len(values) else np.nan
                row[f"{stem}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
                if stem in ("auc", "ap"):  # a fold is done once its trial reported its ranking
                    row["folds_done"] = max(row["folds_done"], len(values))
            pooled = self.pooled[key]
            for metric in (m.name for m in REGISTRY.values() if m.interval):
                interval = self.interval(key, metric)
                row[f"{metric}_pooled"] = (stats.point_estimate(metric, pooled["truth"], pooled["probs"],
                                                                self._thresholds(metric, pooled))
                                           if pooled is not None else np.nan)
                row[f"{metric}_ci_low"] = interval.low if interval else np.nan
                row[f"{metric}_ci_high"] = interval.high if interval else np.nan
            rows.append(row)
        return pd.DataFrame(rows)
