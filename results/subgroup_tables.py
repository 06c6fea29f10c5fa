"""The report's subgroup tables: does a cell fail a group of patients?

Per backbone, each cell's pooled out-of-fold test AUC within each subgroup of the target's images
(sex; age bands; view), with a patient-clustered bootstrap interval, and its worst group. A class
counts in a subgroup's macro AUC only where the subgroup has at least MIN_POSITIVES positive and
MIN_NEGATIVES negative images of it; a subgroup with no such class is shown as too small, not as a
number (an AUC on a handful of positives says little, and a worst group chosen among such numbers
would mostly be noise). Images whose group is unknown are in no subgroup of that attribute.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from results import stats
from results.analysis import Analysis
from results.tables import Table
from vocab.names import row_name

MIN_POSITIVES = MIN_NEGATIVES = 30
ATTRIBUTES = {"sex": "Sex", "age_band": "Age", "view": "View"}


def subgroups(groups: pd.DataFrame) -> list[tuple[str, str]]:
    """(attribute, value) of every known subgroup, in a stable order."""
    return [(a, v) for a in ATTRIBUTES for v in sorted(set(groups[a]) - {""})] if not groups.empty else []


def _subgroup_auc(analysis: Analysis, pooled: dict, rows: np.ndarray, minimum: tuple[int, int]):
    """(estimate, low, high, classes counted) of the macro AUC on `rows` over the classes large enough there."""
    truth, probs = pooled["truth"][rows], pooled["probs"][rows]
    positives, negatives = (truth == 1).sum(axis=0), (truth == 0).sum(axis=0)
    large = np.flatnonzero((positives >= minimum[0]) & (negatives >= minimum[1]))
    if not len(large):
        return np.nan, np.nan, np.nan, 0
    truth, probs = truth[:, large], probs[:, large]
    if analysis.n_boot <= 0:
        return stats.point_estimate("auc", truth, probs), np.nan, np.nan, len(large)
    interval = stats.cluster_bootstrap("auc", truth, probs, pooled["patients"][rows], n_boot=analysis.n_boot,
                                       seed=analysis.seed)
    return interval.estimate, interval.low, interval.high, len(large)


def subgroup_tables(analysis: Analysis, minimum: tuple[int, int] = (MIN_POSITIVES, MIN_NEGATIVES)) -> list[Table]:
    groups = analysis.data.groups
    found = subgroups(groups)
    if not found:
        return []
    by_image = groups.set_index("image_key")
    tables = []
    for backbone, part in analysis.cells.groupby("backbone", sort=True):
        display, numbers = [], []
        for cell in part.itertuples():
            key = (cell.backbone, cell.recipe, cell.variant)
            pooled = analysis.pooled[key]
            if pooled is None:
                continue
            mine = by_image.reindex(pooled["image_keys"]).fillna("")
            row, shown = {"Recipe": row_name(cell.recipe, cell.variant)}, {}
            for attribute, value in found:
                rows = np.flatnonzero(mine[attribute].to_numpy() == value)
                estimate, low, high, classes = _subgroup_auc(analysis, pooled, rows, minimum)
                label = f"{ATTRIBUTES[attribute]}: {value}"
                numbers.append({"backbone": backbone, "recipe": cell.recipe, "variant": cell.variant,
                                "attribute": attribute, "group": value, "images": len(rows), "classes": classes,
                                "auc": estimate, "auc_ci_low": low, "auc_ci_high": high})
                if np.isnan(estimate):
                    row[label] = f"too small ({len(rows)} images)"
                    continue
                shown[label] = estimate
                row[label] = (f"{estimate:.3f}" + ("" if np.isnan(low) else f" [{low:.3f}, {high:.3f}]")
                              + f"; {classes}/{len(pooled['classes'])} classes")
            worst = min(shown, key=shown.get) if shown else None
            row["Worst group"] = f"{worst} ({shown[worst]:.3f})" if worst else "none large enough"
            display.append(row)
        if display:
            tables.append(Table(f"subgroups_{backbone}", f"Subgroups: {backbone}", pd.DataFrame(numbers),
                                pd.DataFrame(display),
                                f"Pooled out-of-fold test AUC within each subgroup of the target's images, macro "
                                f"over the classes with at least {minimum[0]} positive and {minimum[1]} negative "
                                f"images in it ('too small' where none has; each number says how many classes it "
                                f"averages, so compare groups that average the same ones); 95% CIs: patient-clustered "
                                f"bootstrap. Worst group: the lowest of the subgroups shown."))
    return tables
