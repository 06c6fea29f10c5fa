"""The report's external-validation tables: does a cell hold up on films from elsewhere?

Per external set and backbone, two tables, each column holding one kind of number:

- the fold models, like for like: each fold model's AUC and AP on its own outer test fold (internal)
  and on the whole external set (external), both macro over the same classes (those the set judges,
  defined on both sides for that model), and its drop (external minus internal); the table shows the
  mean +/- sd over the models of each, the CSV each model. The sd is the models' spread, not a
  confidence interval: the external set's sampling noise is shared by every model and is not in it
  (and there is no interval: the report reads the fold models' metrics, not their predictions).
- the fold ensemble (the mean of the fold models' probabilities) on the external set, with a
  patient-clustered bootstrap interval, and no drop: on the target each test image was predicted by
  its own fold's model only (out of fold), so there is no internal ensemble of the same models to
  set against it, and the single models' internal AUC would count the gain from averaging the
  models as robustness to the new site.

Test-time-augmented results are rows of their own, never mixed with single-pass ones.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from results import stats
from results.analysis import Analysis
from results.schema import MACRO
from results.tables import Table
from vocab.metrics import REGISTRY
from vocab.live import Names
from vocab.names import row_name

METRICS = Names(lambda: (m.name for m in REGISTRY.values() if m.external))  # vocab.metrics: AP and AUC
NOT_COMPUTED = "not computed (no TTA on the target)"


def quantities() -> list[str]:
    return [f"{side}_{m}" for m in METRICS for side in ("internal", "external")] + [f"{m}_drop" for m in METRICS]
FOLD_NOTE = ("Fold models, like for like: each model's macro on its own outer test fold (internal) and on the whole "
             "external set (external), over the same classes, and its drop (external - internal); mean +/- sd over "
             "the models (each model in the CSV). The sd is the models' spread, not a confidence interval: the "
             "external set's sampling noise, shared by every model, is not in it. TTA rows have no internal side "
             "or drop: the target's test predictions were made without TTA, so the drop would count TTA's gain "
             "as robustness.")
ENSEMBLE_NOTE = ("Fold ensemble: the mean of the fold models' probabilities on the external set; 95% CI: "
                 "patient-clustered bootstrap. Its drop is not computed: the target has no internal ensemble of the "
                 "same models (each test image was predicted by its own fold's model only), and subtracting the "
                 "single models' internal numbers would count the gain from averaging them as robustness to the "
                 "new site. Per class in the CSV.")


def _judged(found: dict, pooled: dict) -> list[str]:
    """The classes the set judges (positives and negatives there: what its macro averages) that the cell has."""
    first = next(iter(found.values()))
    truth = first["truth"]  # the same on every model's rows: the set's labels
    return [c for k, c in enumerate(first["classes"])
            if 0 < np.nansum(truth[:, k] == 1) < (~np.isnan(truth[:, k])).sum() and c in pooled["classes"]]


def _internal(pooled: dict, fold: int, classes: list[str]) -> dict[tuple[str, str], float]:
    """{(metric, class): value} of one fold model on its own outer test fold (NaN where undefined)."""
    rows = np.flatnonzero(pooled["folds"] == fold)
    truth, probs = pooled["truth"][rows], pooled["probs"][rows]
    columns = {name: [pooled["classes"].index(name)] for name in classes}
    return {(metric, name): stats.point_estimate(metric, truth[:, k], probs[:, k])
            for name, k in columns.items() for metric in METRICS}


def _model_rows(pooled: dict, folds: pd.DataFrame, classes: list[str], paired: bool) -> list[dict]:
    """Per fold model scored on both sides: per class and macro (over the classes defined on both sides for that
    model), its internal and external AUC and AP and their drops; external only (internal NaN) unless `paired`."""
    rows = []
    for fold, mine in folds.groupby("fold", sort=True):
        if not (pooled["folds"] == int(fold)).any():
            continue
        external = {(r.metric, r.class_name): r.value for r in mine.itertuples()}
        internal = _internal(pooled, int(fold), classes) if paired else {}
        sides = (internal, external) if paired else (external,)
        both = [c for c in classes if all(np.isfinite(side.get((m, c), np.nan)) for side in sides for m in METRICS)]
        for name in [*classes, MACRO]:
            take = both if name == MACRO else [name]
            row = {"model": "fold", "fold": int(fold), "class_name": name}
            for metric in METRICS:
                for side, values in (("internal", internal), ("external", external)):
                    row[f"{side}_{metric}"] = float(np.mean([values.get((metric, c), np.nan) for c in take])) \
                        if take else np.nan
                row[f"{metric}_drop"] = row[f"external_{metric}"] - row[f"internal_{metric}"]
            rows.append(row)
    return rows


def _mean_sd(values: pd.Series, signed: bool = False) -> str:
    values = values.dropna()
    if not len(values):
        return "undefined"
    return (f"{values.mean():+.3f}" if signed else f"{values.mean():.3f}") + (
        f" +/- {values.std(ddof=1):.3f}" if len(values) > 1 else "")


def _fold_part(name: str, pooled: dict, folds: pd.DataFrame, classes: list[str], tta: str):
    """(display row, numbers: each model's rows and their mean and sd per class) of a cell's fold models. With
    test-time augmentation only the external side: the target's test predictions had none."""
    models = pd.DataFrame(_model_rows(pooled, folds, classes, paired=tta == "none"))
    if models.empty:
        return None, []
    macro = models[models.class_name == MACRO]
    row = {"Recipe": name, "Models": f"{len(macro)} fold models" + ("" if tta == "none" else f" + TTA {tta}")}
    for metric in METRICS:
        label = REGISTRY[metric].label
        internal, drop = (_mean_sd(macro[f"internal_{metric}"]), _mean_sd(macro[f"{metric}_drop"], signed=True)) \
            if tta == "none" else (NOT_COMPUTED, NOT_COMPUTED)
        row[f"Internal {label} (own test fold), mean +/- sd over models"] = internal
        row[f"External {label}, mean +/- sd over models"] = _mean_sd(macro[f"external_{metric}"])
        row[f"Drop, {label} (each model's external - internal), mean +/- sd"] = drop
    grouped = models.groupby("class_name", sort=False)[quantities()]
    summary = grouped.mean().join(grouped.std(ddof=1).add_suffix("_sd")).join(grouped.size().rename("models"))
    summary = summary.reset_index().assign(model="fold models (mean)")
    return row, models.to_dict("records") + summary.to_dict("records")


def _ensemble_part(analysis: Analysis, name: str, ensemble: dict, classes: list[str], tta: str):
    """(display row, numbers: macro with its interval, and per class) of a cell's fold ensemble."""
    on = [ensemble["classes"].index(c) for c in classes]
    truth, probs = ensemble["truth"][:, on], ensemble["probs"][:, on]
    macro = {"model": "ensemble", "class_name": MACRO}
    row = {"Recipe": name, "Model": "fold ensemble" + ("" if tta == "none" else f" + TTA {tta}")}
    for metric in METRICS:
        if analysis.n_boot > 0:
            interval = stats.cluster_bootstrap(metric, truth, probs, ensemble["patients"], n_boot=analysis.n_boot,
                                               seed=analysis.seed + 1)
            estimate, low, high = interval.estimate, interval.low, interval.high
        else:
            estimate, low, high = stats.point_estimate(metric, truth, probs), np.nan, np.nan
        macro.update({f"external_{metric}": estimate, f"external_{metric}_ci_low": low,
                      f"external_{metric}_ci_high": high})
        row[f"External {REGISTRY[metric].label} [95% CI]"] = "undefined" if np.isnan(estimate) else (
            f"{estimate:.3f}" + ("" if np.isnan(low) else f" [{low:.3f}, {high:.3f}]"))
    per_class = [{"model": "ensemble", "class_name": c, **{f"external_{m}": stats.point_estimate(
        m, truth[:, [k]], probs[:, [k]]) for m in METRICS}} for k, c in enumerate(classes)]
    return row, [macro, *per_class]


KINDS = {"fold": ("", "fold models", FOLD_NOTE), "ensemble": ("_ensemble", "fold ensemble", ENSEMBLE_NOTE)}


def _cell_rows(analysis: Analysis, key: tuple, external: str) -> dict[str, tuple[list, list]]:
    """{kind of KINDS: (display rows, numbers)} of one cell on one external set."""
    found, pooled = analysis.data.external_of(key, external), analysis.pooled[key]
    out = {kind: ([], []) for kind in KINDS}
    classes = _judged(found, pooled) if found and pooled is not None else []
    if not classes:
        return out
    name = row_name(key[1], key[2])
    folds = analysis.data.external_folds(key, external)
    labels = {"backbone": key[0], "recipe": key[1], "variant": key[2], "external": external}
    for tta in sorted({k[2] for k in found}, key=lambda t: (t != "none", t)):  # single-pass rows first
        parts = {"fold": _fold_part(name, pooled, folds[folds.tta == tta], classes, tta)}
        if ("ensemble", None, tta) in found:
            parts["ensemble"] = _ensemble_part(analysis, name, found[("ensemble", None, tta)], classes, tta)
        for kind, (row, numbers) in parts.items():
            out[kind][0].extend([row] if row else [])
            out[kind][1].extend({**labels, "tta": tta, **n} for n in numbers)
    return out


def external_tables(analysis: Analysis) -> list[Table]:
    tables = []
    for external in analysis.data.external_sets.itertuples():
        judged = ", ".join(f"{t} (as {' or '.join(s)})" for t, s in external.labels.items())
        about = (f"External set {external.name} ({external.images} images, data set {external.dataset}); it judges "
                 f"{judged}" + (f"; left out, no counterpart: {', '.join(external.left_out)}" if external.left_out
                                else "") + ". Macro over the classes it has positives and negatives of. ")
        for backbone, part in analysis.cells.groupby("backbone", sort=True):
            found = [_cell_rows(analysis, (r.backbone, r.recipe, r.variant), external.name) for r in part.itertuples()]
            for kind, (suffix, what, note) in KINDS.items():
                display = [row for cell in found for row in cell[kind][0]]
                if not display:
                    continue
                numbers = pd.DataFrame([row for cell in found for row in cell[kind][1]])
                numbers = numbers.astype({c: "Int64" for c in ("fold", "models") if c in numbers})
                tables.append(Table(f"external_{external.name}_{backbone}{suffix}",
                                    f"External validation on {external.name}: {backbone}, {what}", numbers,
                                    pd.DataFrame(display), about + note + " TTA rows are test-time augmented, never "
                                    "pooled with the others."))
    return tables
