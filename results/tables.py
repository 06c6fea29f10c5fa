"""The papers' comparison tables, computed from a loaded sweep.

A row shows mean +/- sd over the folds of the cell's selected trials and, for AUC and AP, the
pooled value with its bootstrap interval (results.analysis); where a table ranks rows, each row
below the first gets the paired bootstrap difference to the first, with its p-value.
Every table has raw numbers (for CSV) and display strings (for Markdown, HTML and LaTeX).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from results.analysis import Analysis, at_floor, column, columns, fmt, fmt_p, format_p, p_relation, p_text, percent
from results.load import CELL
from results.stats import holm
from vocab.metrics import REGISTRY, SPLIT_LABELS
from vocab.names import row_name


@dataclass
class Table:
    key: str  # file stem of its CSV and LaTeX files
    title: str
    numbers: pd.DataFrame
    display: pd.DataFrame
    note: str = ""


def _key(row) -> tuple:
    return (row["backbone"], row["recipe"], row["variant"])


def _name(row) -> str:
    return row_name(row["recipe"], row["variant"])


def ranked(analysis: Analysis, part: pd.DataFrame, by: str = "auc") -> pd.DataFrame:
    """Rows best first, each with its paired comparison to the first row (`vs_best_diff`, `vs_best_p`).

    The order is by the pooled out-of-fold `by`, the quantity the paired test compares, so that a
    row's sign always agrees with its place; cells without stored predictions follow by their mean
    over folds, and cells with no fold at all come last."""
    sign = 1.0 if REGISTRY[by].higher_is_better is not False else -1.0  # best first
    part = part.assign(_rank=sign * part[f"{by}_pooled"].fillna(part[f"{by}_mean"] - 10.0 * sign))
    part = part.sort_values(["_rank", "recipe"], ascending=[False, True], na_position="last").drop(columns="_rank")
    best = _key(part.iloc[0]) if len(part) else None
    compared = [analysis.compare(_key(row), best, by) if i and best else None
                for i, (_, row) in enumerate(part.iterrows())]
    part["vs_best_diff"] = [c.difference if c else np.nan for c in compared]
    part["vs_best_p"] = [c.p_value if c else np.nan for c in compared]
    part["vs_best_text"] = [fmt_p(c) for c in compared]
    part["vs_best_p_text"] = [p_text(c) for c in compared]
    # k rows, k-1 tests: Holm's adjustment of each p (a p at the resamples' floor enters as that floor, an
    # upper bound, so its adjusted value is one too)
    raw = [at_floor(c) if c and not pd.isna(c.p_value) else (np.nan, False) for c in compared]
    part["vs_best_p_holm"] = holm([p for p, _ in raw])
    part["vs_best_holm_text"] = ["" if np.isnan(a) else format_p(a, bound)
                                 for a, (_, bound) in zip(part["vs_best_p_holm"], raw)]
    if by == "auc":  # DeLong's test, the one reviewers name, beside the bootstrap (with its own Holm adjustment)
        tests = [analysis.delong(_key(row), best) if i and best else None
                 for i, (_, row) in enumerate(part.iterrows())]
        part["vs_best_delong_p"] = [t.p if t else np.nan for t in tests]
        part["vs_best_delong_p_holm"] = holm(part["vs_best_delong_p"])
        part["vs_best_delong_text"] = ["" if np.isnan(p) else f"{format_p(p, False)} (Holm p{p_relation(h, False)})"
                                       for p, h in zip(part["vs_best_delong_p"], part["vs_best_delong_p_holm"])]
    return part


def _texts(part: pd.DataFrame, columns: dict[str, str]) -> dict[str, list[str]]:
    """Display strings: `columns` maps a label to a cells-frame column stem (mean +/- sd over folds, and the pooled
    value with its interval where the cells have one) or a plain column; and the folds done."""
    out = {}
    for label, stem in columns.items():
        if f"{stem}_mean" in part:
            text = [fmt(r[f"{stem}_mean"], r[f"{stem}_sd"], percent(stem)) for _, r in part.iterrows()]
            if f"{stem}_ci_low" in part:
                text = [t + ("" if pd.isna(r[f"{stem}_ci_low"]) else f"; pooled {r[f'{stem}_pooled']:.3f} "
                             f"[{r[f'{stem}_ci_low']:.3f}, {r[f'{stem}_ci_high']:.3f}]")
                        for t, (_, r) in zip(text, part.iterrows())]
            out[label] = text
        else:
            out[label] = [str(v) for v in part[stem]]
    out["Folds"] = [f"{r.folds_done}/{r.folds_planned}" for r in part.itertuples()]
    if "Variant" in out and not any(out["Variant"]):
        del out["Variant"]  # a backbone x recipe grid has no further axes
    return out


def _display(part: pd.DataFrame, columns: dict[str, str], analysis: Analysis, by: str = "auc") -> pd.DataFrame:
    """A ranked table's display strings (`_texts`), with each row's comparison to the first."""
    out = _texts(part, columns)
    out[f"vs first: pooled {by.upper()} diff (bootstrap p, unadjusted)"] = part["vs_best_text"].tolist()
    out[HOLM_COLUMN] = part["vs_best_holm_text"].tolist()  # over the ranking's own tests: the rows with a p
    if "vs_best_delong_text" in part:
        out[DELONG_COLUMN] = part["vs_best_delong_text"].tolist()
    return pd.DataFrame(out)


HOLM_COLUMN = "bootstrap p, Holm-adjusted"
DELONG_COLUMN = "vs first: DeLong p (Holm-adjusted), patient-clustered"
UNADJUSTED = "unadjusted for multiple comparisons"
TRANSFER_COLUMN = "Difference [95% CI] (bootstrap p, unadjusted)"
CONCLUSION_COLUMN = "Best - runner-up, AUC (bootstrap p, unadjusted)"
THIS_TABLE = "this table's k-1 comparisons with its first row"
P_NOTE = ("p below 0.001 is shown as <0.001, and a bootstrap p where no resample crossed 0 as p<= the smallest p "
          "the resamples can show; the CSV has the raw values.")


def ranking_note(family: str) -> str:
    """What a ranked table's p-values are, naming the family Holm adjusts over (`family`)."""
    return (f"Rows ranked by pooled test AUC; each row below the first is compared with the first on the test images "
            f"both share: paired patient bootstrap p and DeLong's patient-clustered p, each with Holm's adjustment "
            f"over {family}. {P_NOTE}")


def header(split: str, metric: str) -> str:
    """A metric's column header: `Training binary accuracy`, `Test AUC; pooled [95% CI]` (where the cells carry
    its pooled value and interval)."""
    pooled = "; pooled [95% CI]" if split == "test" and REGISTRY[metric].interval else ""
    return f"{SPLIT_LABELS[split]} {REGISTRY[metric].label}{pooled}"


def metric_columns(pairs) -> dict[str, str]:
    """{header: cells-frame stem} of (split, metric) pairs."""
    return {header(split, metric): column(split, metric) for split, metric in pairs}


# Seed 000's source and combination selection tables: training binary accuracy and MAE, test AP and AUC
SELECTION_METRICS = (("outer_train", "binary_acc"), ("outer_train", "mae"), ("test", "ap"), ("test", "auc"))


def _numbers(part: pd.DataFrame) -> pd.DataFrame:
    keep = [*CELL, "strategy", "dataset", "folds_done", "folds_planned"]
    keep += [c for c in part.columns if c.endswith(("_mean", "_sd", "_ci_low", "_ci_high", "_pooled"))]
    compared = ("vs_best_diff", "vs_best_p", "vs_best_p_holm", "vs_best_delong_p", "vs_best_delong_p_holm")
    return part[keep + [c for c in compared if c in part]].reset_index(drop=True)


def source_selection(analysis: Analysis) -> list[Table]:
    """Seed 000 "Source data selection": regular transfer from at most one source, per backbone."""
    cells = analysis.cells
    tables = []
    for backbone, part in cells[(cells.strategy == "regular") & (cells.dataset.str.count(r" \+ ") == 0)].groupby(
            "backbone", sort=True):
        part = ranked(analysis, part)
        columns = {"Recipe": "recipe", "Variant": "variant", "Dataset": "dataset",
                   **metric_columns(SELECTION_METRICS)}
        tables.append(Table(f"source_selection_{backbone}", f"Source data selection: {backbone}", _numbers(part),
                            _display(part, columns, analysis), ranking_note(THIS_TABLE)))
    return tables


def combination_selection(analysis: Analysis) -> list[Table]:
    """Seed 000 "Combination method selection": recipes that combine sources, per backbone."""
    cells = analysis.cells
    combined = cells[(cells.strategy != "regular") | (cells.dataset.str.count(r" \+ ") > 0)]
    tables = []
    for backbone, part in combined.groupby("backbone", sort=True):
        part = ranked(analysis, part)
        columns = {"Method": "method", "Recipe": "recipe", "Variant": "variant", "Dataset": "dataset",
                   **metric_columns(SELECTION_METRICS)}
        tables.append(Table(f"combination_selection_{backbone}", f"Combination method selection: {backbone}",
                            _numbers(part), _display(part, columns, analysis), ranking_note(THIS_TABLE)))
    return tables


SCRATCH = "none (scratch)"  # results.analysis.dataset_label of a cell that learns from the target alone


def transfer_effect(analysis: Analysis) -> list[Table]:
    """Does pretraining help? Per backbone, every cell against the cell of the same backbone and further
    axes that learns from the target alone: the pooled test AUC difference with its paired bootstrap
    95% interval. An interval above 0 is a transfer effect these test images can show."""
    cells = analysis.cells
    rows, numbers = [], []
    for (backbone, variant), part in cells.groupby(["backbone", "variant"], sort=True):
        scratch = part[(part.strategy == "regular") & (part.dataset == SCRATCH)]
        if len(scratch) != 1:
            continue
        reference = scratch.iloc[0]
        others = part.drop(index=scratch.index)
        for _, row in others.iterrows():
            compared = analysis.compare(_key(row), _key(reference), "auc")
            shown = compared is not None and not pd.isna(compared.difference)
            rows.append({"Backbone": backbone, "Recipe": _name(row), "Method": row["method"],
                         "Dataset": row["dataset"],
                         "Pooled test AUC": fmt(row["auc_pooled"]),
                         f"From scratch ({reference['recipe']})": fmt(reference["auc_pooled"]),
                         TRANSFER_COLUMN: (f"{compared.difference:+.3f} [{compared.low:+.3f}, "
                                           f"{compared.high:+.3f}] ({p_text(compared)})") if shown else "",
                         "Shown": ("helps" if compared.low > 0 else "hurts" if compared.high < 0 else "unclear")
                         if shown else ""})
            numbers.append({"backbone": backbone, "recipe": row["recipe"], "variant": variant,
                            "reference_recipe": reference["recipe"], "auc_pooled": row["auc_pooled"],
                            "reference_auc_pooled": reference["auc_pooled"],
                            "auc_diff": compared.difference if shown else np.nan,
                            "auc_diff_ci_low": compared.low if shown else np.nan,
                            "auc_diff_ci_high": compared.high if shown else np.nan,
                            "auc_diff_p": compared.p_value if shown else np.nan})
    if not rows:
        return []
    return [Table("transfer_effect", "Transfer effect: each recipe versus training from scratch",
                  pd.DataFrame(numbers), pd.DataFrame(rows),
                  "Pooled out-of-fold test AUC; the difference is a paired, patient-clustered bootstrap on the same "
                  f"test images, its p {UNADJUSTED} (one test per row). 'helps': the whole interval is above 0. "
                  + P_NOTE)]


def backbone_selection(analysis: Analysis) -> list[Table]:
    """Seed 000 "Backbone model selection": per recipe, the backbones side by side on the metrics of its bar
    charts (vocab.metrics' `bars`: AP, AUC, Hamming loss)."""
    cells = analysis.cells
    shown = metric_columns(("test", m.name) for m in REGISTRY.values() if "bars" in m.figures)
    numbers, display = [], []
    for _, part in cells.groupby(["recipe", "variant"], sort=True):
        part = ranked(analysis, part)
        numbers.append(_numbers(part))
        display.append(_display(part, {"Method": "method", "Recipe": "recipe", "Variant": "variant",
                                       "Backbone": "backbone", **shown}, analysis))
    if not numbers:
        return []
    return [Table("backbone_selection", "Backbone model selection", pd.concat(numbers, ignore_index=True),
                  pd.concat(display, ignore_index=True),
                  ranking_note("each recipe's own k-1 comparisons with its first row (one family per recipe, not the "
                               "whole table)"))]


def conclusion(analysis: Analysis) -> list[Table]:
    """Seed 000's conclusion: the best recipe per backbone, and how sure the ranking is."""
    cells = analysis.cells.dropna(subset=["auc_mean"])
    rows, numbers = [], []
    for backbone, part in cells.groupby("backbone", sort=True):
        part = ranked(analysis, part)
        best = part.iloc[0]
        runner = part.iloc[1] if len(part) > 1 else None
        rows.append({"Backbone": backbone, "Best recipe": _name(best), "Method": best["method"],
                     "Dataset": best["dataset"], "Test AUC": fmt(best["auc_mean"], best["auc_sd"]),
                     "Pooled test AUC [95% CI]": "" if pd.isna(best["auc_ci_low"]) else
                     f"{best['auc_pooled']:.3f} [{best['auc_ci_low']:.3f}, {best['auc_ci_high']:.3f}]",
                     "Runner-up": _name(runner) if runner is not None else "",
                     CONCLUSION_COLUMN: "" if runner is None or pd.isna(runner["vs_best_diff"])
                     else f"{-runner['vs_best_diff']:+.3f} ({runner['vs_best_p_text']})"})
        numbers.append(_numbers(part.iloc[:2]))
    if not rows:
        return []
    return [Table("conclusion", "Conclusion: best recipe per backbone", pd.concat(numbers, ignore_index=True),
                  pd.DataFrame(rows),
                  f"Best - runner-up: pooled test AUC difference with its paired patient bootstrap p, {UNADJUSTED} "
                  "(the best was picked among all of the backbone's recipes on the same test images, so read it as "
                  "descriptive); the CSV's vs_best_p_holm adjusts over all of the backbone's k-1 comparisons with "
                  f"its best. {P_NOTE}")]


def loss_comparison(analysis: Analysis) -> list[Table]:
    """Seed 003: BCE versus weighted BCE on the test metrics decided at 0.5 (vocab.metrics: binary accuracy,
    exact match, false negatives) and AUC, where the sweep has cells that differ only in their loss. The first
    loss of each group is the reference."""
    cells = analysis.cells.copy()
    if cells["loss"].nunique() < 2:
        return []
    cells["others"] = [",".join(p for p in v.split(",") if not p.startswith("loss=")) for v in cells["variant"]]
    numbers, display = [], []
    for _, part in cells.groupby(["backbone", "recipe", "others"], sort=True):
        if part["loss"].nunique() < 2:
            continue
        part = part.sort_values("loss", key=lambda s: s.map(lambda v: (v != "bce", v)))
        reference = _key(part.iloc[0])
        row_texts = []
        for _, row in part.iterrows():
            texts = {"Backbone": row["backbone"], "Recipe": row["recipe"], "Loss": row["loss"]}
            if cells["others"].any():  # the further axes (seed 003's learning rate) tell the groups apart
                texts["Other settings"] = row["others"]
            for label, stem in {**{m.heading: m.name for m in REGISTRY.values()
                                   if m.threshold == "half" and "test" in m.tables}, "Test AUC": "auc"}.items():
                compared = analysis.compare(_key(row), reference, stem) if _key(row) != reference else None
                versus = fmt_p(compared, percent(stem))
                texts[label] = fmt(row[f"{stem}_mean"], row[f"{stem}_sd"], percent(stem)) + (
                    f"; vs {part.iloc[0]['loss']}: {versus}" if versus else "")
            row_texts.append(texts)
        numbers.append(_numbers(part))
        display.append(pd.DataFrame(row_texts))
    if not numbers:
        return []
    return [Table("loss_comparison", "Loss comparison (seed 003): BCE versus weighted BCE",
                  pd.concat(numbers, ignore_index=True), pd.concat(display, ignore_index=True),
                  "Accuracy, exact match and false-negative rate at a 0.5 threshold; differences are paired "
                  f"bootstrap estimates on the same test images, their p {UNADJUSTED}. {P_NOTE}")]


def per_class(analysis: Analysis) -> list[Table]:
    """Per backbone: each label's test prevalence and, per cell, AUC and AP (mean over folds)."""
    m = analysis.data.metrics
    m = m[(m.split == "test") & (m.class_name != "__macro__") & m.metric.isin(["auc", "ap", "prevalence"])]
    tables = []
    for backbone, part in m.groupby("backbone", sort=True):
        means = part.groupby(["recipe", "variant", "class_name", "metric"])["value"].mean().unstack("metric")
        prevalence = part[part.metric == "prevalence"].groupby("class_name")["value"].mean()
        numbers = means.reset_index()
        wide = pd.DataFrame({"Class": prevalence.index, "Prevalence": [f"{v:.3f}" for v in prevalence]})
        for (recipe, variant), cell in means.groupby(level=[0, 1]):
            name = recipe + (f" ({variant})" if variant else "")
            cell = cell.droplevel([0, 1]).reindex(prevalence.index)
            wide[f"{name} AUC"] = [fmt(v) for v in cell.get("auc", pd.Series(np.nan, cell.index))]
            wide[f"{name} AP"] = [fmt(v) for v in cell.get("ap", pd.Series(np.nan, cell.index))]
        tables.append(Table(f"per_class_{backbone}", f"Per-class test AUC and AP: {backbone}", numbers, wide,
                            "Mean over folds of the selected trials; prevalence is the test folds' share of "
                            "positive images."))
    return tables


def all_metrics(analysis: Analysis) -> list[Table]:
    """Per backbone, each cell with every metric the registry shows in tables (vocab.metrics' `tables`: training,
    then test), mean +/- sd over folds and, where the cells carry it, pooled with its interval: where a metric
    registered since the papers' tables were laid out is shown, with no table of its own."""
    shown = metric_columns(columns().values())
    tables = []
    for backbone, part in analysis.cells.groupby("backbone", sort=True):
        texts = _texts(part, {"Recipe": "recipe", "Variant": "variant", "Dataset": "dataset", **shown})
        tables.append(Table(f"all_metrics_{backbone}", f"All metrics: {backbone}", _numbers(part),
                            pd.DataFrame(texts), "Mean +/- sd over outer folds of the selected trials; 'pooled': on "
                            "all of a cell's out-of-fold test predictions, with a patient-clustered bootstrap 95% CI."))
    return tables
