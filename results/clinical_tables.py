"""The report's tables of how a model would be used: operating points (thresholds fitted on inner
validation, rates on the pooled test folds) and calibration (Brier score and ECE, raw and, with
`--calibrate`, after temperature scaling fitted on inner validation).

A cell's pooled test predictions come from one selected trial per outer fold; each image is judged
with what its own fold's trial fitted on its own inner validation, so no test label ever chooses a
threshold or a temperature. Intervals: patient-clustered bootstrap over the pooled test images, one
set of resamples per cell for every class and quantity (results.stats.column_intervals). Cells whose
trials kept no validation predictions (a DB from before schema 8), for any of their folds, have no
operating points and no temperature.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from results import calibration, stats
from results.analysis import Analysis
from results.operating_points import RATES, RULES, rate_score, thresholds_by_fold
from results.schema import MACRO
from results.tables import Table
from vocab.names import row_name

RATE_LABELS = {"sensitivity": "Sensitivity", "specificity": "Specificity", "ppv": "PPV", "npv": "NPV"}


def _per_image(by_fold: dict[int, np.ndarray], folds: np.ndarray, n_classes: int) -> np.ndarray:
    """Each image's row of its fold's per-class values (NaN where its fold has none)."""
    missing = np.full(n_classes, np.nan)
    return np.stack([by_fold.get(int(f), missing) for f in folds]) if len(folds) else np.empty((0, n_classes))


def _rows(key: tuple, intervals: dict, classes: list[str], **labels) -> list[dict]:
    """Long-format numbers: one row per quantity and class (MACRO last)."""
    rows = []
    for quantity, (estimate, low, high) in intervals.items():
        for name, e, lo, hi in zip([*classes, MACRO], estimate, low, high):
            rows.append({"backbone": key[0], "recipe": key[1], "variant": key[2], **labels,
                         "quantity": quantity, "class_name": name, "estimate": e, "ci_low": lo, "ci_high": hi})
    return rows


class Clinical:
    """Per cell, computed once: the operating points under each rule and the calibration numbers."""

    def __init__(self, analysis: Analysis, rules=RULES, calibrate: bool = False):
        self.analysis, self.rules, self.calibrate = analysis, tuple(rules), calibrate
        self._cache: dict = {}

    def _intervals(self, pooled: dict, score) -> dict:
        a = self.analysis
        return stats.column_intervals(score, pooled["patients"], n_boot=max(a.n_boot, 0), seed=a.seed)

    def _validation(self, key: tuple) -> dict[int, dict]:
        """The cell's inner-validation predictions per fold, read from the loaded sweep once."""
        if ("val", key) not in self._cache:
            self._cache[("val", key)] = self.analysis.data.validation_of(key)
        return self._cache[("val", key)]

    def _every_fold_validated(self, key: tuple) -> bool:
        """Whether each fold of the cell's pooled predictions kept its inner-validation predictions (not so for
        trials from before schema 8, as in a sweep resumed across that upgrade): only then are all of its
        test images judged, and the numbers pooled over the same folds as the rest of the report."""
        pooled = self.analysis.pooled[key]
        return pooled is not None and set(map(int, pooled["folds"])) <= set(self._validation(key))

    def operating_points(self, key: tuple) -> pd.DataFrame:
        if ("op", key) not in self._cache:
            pooled, validation = self.analysis.pooled[key], self._validation(key)
            rows = []
            if self._every_fold_validated(key):
                for rule in self.rules:
                    fitted = thresholds_by_fold(rule, validation, pooled["classes"])
                    thresholds = _per_image(fitted, pooled["folds"], len(pooled["classes"]))
                    intervals = self._intervals(pooled, rate_score(pooled["truth"], pooled["probs"], thresholds))
                    rows += _rows(key, intervals, pooled["classes"], rule=rule)
            self._cache[("op", key)] = pd.DataFrame(rows)
        return self._cache[("op", key)]

    def temperatures(self, key: tuple) -> dict[int, float]:
        """{fold: T fitted on that fold's inner-validation predictions}, fitted once (the table shows them too)."""
        if ("t", key) not in self._cache:
            self._cache[("t", key)] = {fold: calibration.fit_temperature(v["truth"], v["probs"])
                                       for fold, v in self._validation(key).items()}
        return self._cache[("t", key)]

    def calibration(self, key: tuple) -> pd.DataFrame:
        if ("cal", key) not in self._cache:
            pooled, rows = self.analysis.pooled[key], []
            if pooled is not None:
                versions = {"raw": pooled["probs"]}
                temperatures = self.temperatures(key) if self.calibrate and self._every_fold_validated(key) else {}
                if temperatures and all(np.isfinite(t) for t in temperatures.values()):
                    per_image = np.array([temperatures.get(int(f), np.nan) for f in pooled["folds"]])
                    versions["temperature-scaled"] = calibration.scaled(pooled["probs"], per_image)
                for version, probs in versions.items():
                    intervals = self._intervals(pooled, calibration.calibration_score(pooled["truth"], probs))
                    rows += _rows(key, intervals, pooled["classes"], probabilities=version)
            self._cache[("cal", key)] = pd.DataFrame(rows)
        return self._cache[("cal", key)]


def _interval_text(row) -> str:
    if pd.isna(row["estimate"]):
        return "undefined"
    if pd.isna(row["ci_low"]):
        return f"{row['estimate']:.3f}"
    return f"{row['estimate']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def _by_backbone(analysis: Analysis) -> dict[str, list[tuple]]:
    cells = analysis.cells
    return {b: [(r.backbone, r.recipe, r.variant) for r in part.itertuples()]
            for b, part in cells.groupby("backbone", sort=True)}


def _per_backbone(clinical: Clinical, numbers_of, group: str, row_of, stem: str, title: str, note: str) -> list[Table]:
    """A table per backbone: the long numbers of its cells (`numbers_of(key)`), and a display row per
    (cell, `group` value) from their macro rows (`row_of(recipe, variant, group value, by quantity)`)."""
    tables = []
    for backbone, keys in _by_backbone(clinical.analysis).items():
        frames = [f for f in map(numbers_of, keys) if not f.empty]
        if not frames:
            continue
        numbers = pd.concat(frames, ignore_index=True)
        macro = numbers[numbers.class_name == MACRO]
        display = [row_of(backbone, recipe, variant, value, part.set_index("quantity"))
                   for (recipe, variant, value), part in macro.groupby(["recipe", "variant", group], sort=False)]
        tables.append(Table(f"{stem}_{backbone}", f"{title}: {backbone}", numbers, pd.DataFrame(display), note))
    return tables


def operating_point_tables(clinical: Clinical) -> list[Table]:
    """Per backbone: each cell under each rule, the macro sensitivity, specificity, PPV and NPV on the
    pooled test folds with 95% CIs; the numbers (CSV) have every class."""
    def row(backbone, recipe, variant, rule, by) -> dict:
        return {"Recipe": row_name(recipe, variant), "Threshold rule (fitted on inner validation)": rule,
                **{RATE_LABELS[r]: _interval_text(by.loc[r]) for r in RATES}}

    return _per_backbone(clinical, clinical.operating_points, "rule", row, "operating_points", "Operating points",
                         "Thresholds fitted per outer fold on that fold's selected trial's inner-validation "
                         "predictions (prevalence: the share of positives there; youden: the largest "
                         "sensitivity + specificity - 1, compared exactly, the highest cut among equal ones, so a "
                         "fold where no cut beats chance calls nothing positive; sensitivity:S: the highest "
                         "threshold that finds a share S of the positives). A cut found among the validation "
                         "scores is placed halfway to the next lower score. Rates on the pooled test folds, macro "
                         "mean over classes, positive when prob > threshold. 95% CIs: patient-clustered "
                         "bootstrap. Per class in the CSV.")


def calibration_tables(clinical: Clinical) -> list[Table]:
    """Per backbone: each cell's macro Brier score and ECE (equal-mass bins) on the pooled test folds with
    95% CIs, raw and, with --calibrate, after temperature scaling."""
    def row(backbone, recipe, variant, version, by) -> dict:
        if version != "raw":
            temperatures = sorted(clinical.temperatures((backbone, recipe, variant)).items())
            version += " (T per fold: " + ", ".join(f"{t:.2f}" for _, t in temperatures) + ")"
        return {"Recipe": row_name(recipe, variant), "Probabilities": version,
                "Brier score": _interval_text(by.loc["brier"]),
                f"ECE ({calibration.BINS} equal-mass bins)": _interval_text(by.loc["ece"])}

    return _per_backbone(clinical, clinical.calibration, "probabilities", row, "calibration", "Calibration",
                         "Pooled test folds, macro mean over classes (lower is better for both); ECE: the "
                         "images-weighted gap between mean probability and share of positives over equal-mass "
                         "bins, cut once on the test images. Temperature scaling, where shown: one T per outer "
                         "fold fitted on its inner validation. 95% CIs: patient-clustered bootstrap; a resample's "
                         "ECE is biased upward (its noise does not cancel inside the absolute gaps), so the "
                         "ECE's interval can lie above its estimate: read it as the spread. Per class in the "
                         "CSV.")


def clinical(analysis: Analysis, rules=RULES, calibrate: bool = False) -> Clinical:
    """The analysis's Clinical for these rules, made once and shared by the operating-point and calibration
    sections."""
    key = ("clinical", tuple(rules), calibrate)
    if key not in analysis.shared:
        analysis.shared[key] = Clinical(analysis, rules, calibrate)
    return analysis.shared[key]
