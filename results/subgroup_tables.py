"""The report's subgroup tables: does a cell fail a group of patients?

Per backbone, each cell's pooled out-of-fold test AUC within each subgroup of the target's images
(sex; age bands; view), with a patient-clustered bootstrap interval, and the lowest group of each
grouping. A class is large enough in a group with at least MIN_POSITIVES positive and MIN_NEGATIVES
negative images of it there (an AUC on a handful of positives says little). The groups of one grouping
are compared on the same classes, those large enough in every one of its groups that has any: a macro
AUC over 6 classes against one over 1 compares the classes as much as the groups. A group with no
such class is shown as too small and left out of the comparison. Groupings are not compared with each
other (they average different classes), and a grouping with one known group (every film PA) is left
out: that group is the whole test set less the unknowns, not a subgroup. Images whose group is
unknown are in no group of that attribute.
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


def groupings(groups: pd.DataFrame) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({attribute: its known groups, in a stable order} of the attributes with two or more, {attribute: its one
    group} of those left out)."""
    found = {a: sorted(set(groups[a]) - {""}) for a in ATTRIBUTES} if not groups.empty else {}
    return ({a: v for a, v in found.items() if len(v) > 1},
            {a: v[0] for a, v in found.items() if len(v) == 1})


def _large(truth: np.ndarray, minimum: tuple[int, int]) -> np.ndarray:
    """Which classes (columns) have at least minimum[0] positive and minimum[1] negative images in `truth`."""
    return ((truth == 1).sum(axis=0) >= minimum[0]) & ((truth == 0).sum(axis=0) >= minimum[1])


def _auc(analysis: Analysis, pooled: dict, rows: np.ndarray, columns: np.ndarray) -> tuple[float, float, float]:
    """(estimate, low, high) of the macro AUC on `rows` over `columns`."""
    truth, probs = pooled["truth"][np.ix_(rows, columns)], pooled["probs"][np.ix_(rows, columns)]
    if analysis.n_boot <= 0:
        return stats.point_estimate("auc", truth, probs), np.nan, np.nan
    interval = stats.cluster_bootstrap("auc", truth, probs, pooled["patients"][rows], n_boot=analysis.n_boot,
                                       seed=analysis.seed)
    return interval.estimate, interval.low, interval.high


def _grouping(analysis: Analysis, pooled: dict, labels: np.ndarray, values: list[str],
              minimum: tuple[int, int]) -> list[dict]:
    """One grouping of a cell: per group its images, classes large enough, and AUC on the classes shared by
    every group that has any (NaN for a group too small, or for all where none is shared)."""
    rows = {v: np.flatnonzero(labels == v) for v in values}
    large = {v: _large(pooled["truth"][r], minimum) for v, r in rows.items()}
    compared = [v for v in values if large[v].any()]
    shared = np.flatnonzero(np.logical_and.reduce([large[v] for v in compared])) if compared else np.empty(0, int)
    out = []
    for v in values:
        estimate = _auc(analysis, pooled, rows[v], shared) if v in compared and len(shared) else (np.nan,) * 3
        out.append({"group": v, "images": len(rows[v]), "large_classes": int(large[v].sum()),
                    "classes": len(shared) if v in compared else 0,
                    "compared_classes": ";".join(pooled["classes"][k] for k in shared) if v in compared else "",
                    "auc": estimate[0], "auc_ci_low": estimate[1], "auc_ci_high": estimate[2]})
    return out


def _lowest(name: str, found: list[dict], n_classes: int) -> str:
    """'Sex: F (0.712 of 2 groups, on 2/3 classes)', or why the grouping has no lowest group."""
    shown = [g for g in found if not np.isnan(g["auc"])]
    if len(shown) < 2:
        why = "no class large enough in every group" if any(g["large_classes"] for g in found) and not shown \
            else "fewer than two groups large enough"
        return f"{name}: none ({why})"
    low = min(shown, key=lambda g: g["auc"])
    return f"{name}: {low['group']} ({low['auc']:.3f} of {len(shown)} groups, on {low['classes']}/{n_classes} classes)"


def _cell_row(analysis: Analysis, key: tuple, mine: pd.DataFrame, found: dict[str, list[str]],
              minimum: tuple[int, int]) -> tuple[dict, list[dict]]:
    """A cell's display row and its numbers (one per group)."""
    pooled = analysis.pooled[key]
    row, numbers, lowest = {"Recipe": row_name(key[1], key[2])}, [], []
    for attribute, values in found.items():
        groups = _grouping(analysis, pooled, mine[attribute].to_numpy(), values, minimum)
        for g in groups:
            numbers.append({"backbone": key[0], "recipe": key[1], "variant": key[2], "attribute": attribute, **g})
            text = f"{g['auc']:.3f}" + ("" if np.isnan(g["auc_ci_low"]) else
                                        f" [{g['auc_ci_low']:.3f}, {g['auc_ci_high']:.3f}]")
            row[f"{ATTRIBUTES[attribute]}: {g['group']}"] = (
                text if not np.isnan(g["auc"]) else f"too small ({g['images']} images)" if not g["large_classes"]
                else "no class shared by every group")
        lowest.append(_lowest(ATTRIBUTES[attribute], groups, len(pooled["classes"])))
    row[LOWEST] = "; ".join(lowest)
    return row, numbers


LOWEST = "Lowest group of each grouping (its groups on the same classes)"


def subgroup_tables(analysis: Analysis, minimum: tuple[int, int] = (MIN_POSITIVES, MIN_NEGATIVES)) -> list[Table]:
    groups = analysis.data.groups
    found, single = groupings(groups)
    if not found:
        return []
    by_image = groups.set_index("image_key")
    tables = []
    for backbone, part in analysis.cells.groupby("backbone", sort=True):
        display, numbers = [], []
        for cell in part.itertuples():
            key = (cell.backbone, cell.recipe, cell.variant)
            if analysis.pooled[key] is None:
                continue
            row, rows = _cell_row(analysis, key, by_image.reindex(analysis.pooled[key]["image_keys"]).fillna(""),
                                  found, minimum)
            display.append(row)
            numbers += rows
        if display:
            tables.append(Table(f"subgroups_{backbone}", f"Subgroups: {backbone}", pd.DataFrame(numbers),
                                pd.DataFrame(display), _note(minimum, single)))
    return tables


def _note(minimum: tuple[int, int], single: dict[str, str]) -> str:
    left_out = "; ".join(f"{ATTRIBUTES[a]} (one known group, {v}: the whole test set less unknowns)"
                         for a, v in single.items())
    return (f"Pooled out-of-fold test AUC within each subgroup of the target's images, macro over the classes with "
            f"at least {minimum[0]} positive and {minimum[1]} negative images in every group of its grouping that "
            f"has any such class, so that a grouping's groups average the same classes ('too small': a group with "
            f"none, left out of the comparison; the classes per group in the CSV). Lowest group: the minimum over "
            f"one grouping's groups only; groupings are not compared with each other, as they average different "
            f"classes. 95% CIs: patient-clustered bootstrap within each group."
            + (f" Left out: {left_out}." if left_out else ""))
