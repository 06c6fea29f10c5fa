"""The report's external-validation tables: does a cell hold up on films from elsewhere?

Per backbone and external set, each cell's internal numbers (its pooled out-of-fold test predictions,
on the classes the external set can judge only, so that both sides average the same classes) beside
its external ones: the fold models one by one (mean +/- sd over them) and the fold ensemble (the mean
of their probabilities) with a patient-clustered bootstrap interval, and the drop (external minus
internal) with an interval from independent resamples of the two sets. Test-time-augmented results
are rows of their own, never mixed with single-pass ones.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from results import stats
from results.analysis import Analysis
from results.schema import MACRO
from results.tables import Table
from vocab.names import row_name

MODELS = {"fold": "fold models (mean +/- sd)", "ensemble": "fold ensemble"}


def _interval(analysis: Analysis, metric: str, truth, probs, patients, seed: int):
    """(estimate, resampled values) of a macro metric on an external set; no resamples when the report has
    none."""
    estimate = stats.point_estimate(metric, truth, probs)
    if analysis.n_boot <= 0:
        return estimate, np.empty(0)
    return estimate, stats.resampled(metric, truth, probs, patients, n_boot=analysis.n_boot, seed=seed)


def _text(estimate: float, values: np.ndarray) -> str:
    if np.isnan(estimate):
        return "undefined"
    if not len(values):
        return f"{estimate:.3f}"
    low, high = np.quantile(values, [0.025, 0.975])
    return f"{estimate:.3f} [{low:.3f}, {high:.3f}]"


def _drop_text(external: tuple, internal: tuple) -> tuple[float, str]:
    drop = external[0] - internal[0]
    low, high = stats.independent_difference(external[1], internal[1], drop)
    if np.isnan(drop):
        return drop, ""
    return drop, f"{drop:+.3f}" + ("" if np.isnan(low) else f" [{low:+.3f}, {high:+.3f}]")


def _cell_rows(analysis: Analysis, key: tuple, external: str) -> tuple[list[dict], list[dict]]:
    found = analysis.data.external_of(key, external)
    pooled = analysis.pooled[key]
    if not found or pooled is None:
        return [], []
    first = next(iter(found.values()))
    truth = first["truth"]  # the same on every model's rows: the set's labels
    defined = [c for k, c in enumerate(first["classes"])
               if 0 < np.nansum(truth[:, k] == 1) < (~np.isnan(truth[:, k])).sum()]  # what its macro averages
    classes = [c for c in defined if c in pooled["classes"]]
    if not classes:
        return [], []
    columns = [pooled["classes"].index(c) for c in classes]
    internal = {m: analysis.resampled(key, m, tuple(columns)) for m in ("auc", "ap")}
    fold_metrics = analysis.data.external_folds(key, external)
    fold_metrics = fold_metrics[fold_metrics.class_name == MACRO]
    display, numbers = [], []
    for tta in sorted({k[2] for k in found}, key=lambda t: (t != "none", t)):  # single-pass rows first
        mine = fold_metrics[fold_metrics.tta == tta]
        folds = sorted(set(mine.fold))
        fold_auc = mine[mine.metric == "auc"].sort_values("fold")["value"].to_numpy()
        fold_ap = mine[mine.metric == "ap"].sort_values("fold")["value"].to_numpy()
        sd = lambda v: f" +/- {np.std(v, ddof=1):.3f}" if len(v) > 1 else ""  # noqa: E731
        suffix = "" if tta == "none" else f" + TTA {tta}"
        row = {"Recipe": row_name(key[1], key[2]), "Model": MODELS["fold"] + suffix,
               "Internal AUC [95% CI]": _text(*internal["auc"]),
               "External AUC [95% CI]": f"{np.mean(fold_auc):.3f}{sd(fold_auc)}" if folds else "",
               "Drop, AUC [95% CI]": f"{np.mean(fold_auc) - internal['auc'][0]:+.3f}" if folds else "",
               "Internal AP [95% CI]": _text(*internal["ap"]),
               "External AP [95% CI]": f"{np.mean(fold_ap):.3f}{sd(fold_ap)}" if folds else "",
               "Drop, AP [95% CI]": f"{np.mean(fold_ap) - internal['ap'][0]:+.3f}" if folds else ""}
        display.append(row)
        numbers.append({"backbone": key[0], "recipe": key[1], "variant": key[2], "external": external,
                        "model": "fold", "tta": tta, "folds": len(folds), "class_name": MACRO,
                        "internal_auc": internal["auc"][0],
                        "external_auc": np.mean(fold_auc) if folds else np.nan,
                        "external_auc_sd": np.std(fold_auc, ddof=1) if len(folds) > 1 else np.nan,
                        "internal_ap": internal["ap"][0], "external_ap": np.mean(fold_ap) if folds else np.nan})
        ensemble = found.get(("ensemble", None, tta))
        if ensemble is None:
            continue
        on = [ensemble["classes"].index(c) for c in classes]  # the classes the internal side averages
        ext = {m: _interval(analysis, m, ensemble["truth"][:, on], ensemble["probs"][:, on], ensemble["patients"],
                            analysis.seed + 1) for m in ("auc", "ap")}
        drops = {m: _drop_text(ext[m], internal[m]) for m in ("auc", "ap")}
        display.append({"Recipe": row_name(key[1], key[2]), "Model": MODELS["ensemble"] + suffix,
                        "Internal AUC [95% CI]": _text(*internal["auc"]), "External AUC [95% CI]": _text(*ext["auc"]),
                        "Drop, AUC [95% CI]": drops["auc"][1], "Internal AP [95% CI]": _text(*internal["ap"]),
                        "External AP [95% CI]": _text(*ext["ap"]), "Drop, AP [95% CI]": drops["ap"][1]})
        numbers.append({"backbone": key[0], "recipe": key[1], "variant": key[2], "external": external,
                        "model": "ensemble", "tta": tta, "folds": len(folds), "class_name": MACRO,
                        "internal_auc": internal["auc"][0], "external_auc": ext["auc"][0], "auc_drop": drops["auc"][0],
                        "internal_ap": internal["ap"][0], "external_ap": ext["ap"][0], "ap_drop": drops["ap"][0]})
        for name in classes:  # per class: the ensemble's numbers against the internal ones
            j, k = pooled["classes"].index(name), ensemble["classes"].index(name)
            per = {f"{side}_{m}": stats.point_estimate(m, t[:, [i]], p[:, [i]])
                   for side, t, p, i in (("internal", pooled["truth"], pooled["probs"], j),
                                         ("external", ensemble["truth"], ensemble["probs"], k)) for m in ("auc", "ap")}
            numbers.append({"backbone": key[0], "recipe": key[1], "variant": key[2], "external": external,
                            "model": "ensemble", "tta": tta, "folds": len(folds), "class_name": name, **per,
                            "auc_drop": per["external_auc"] - per["internal_auc"],
                            "ap_drop": per["external_ap"] - per["internal_ap"]})
    return display, numbers


def external_tables(analysis: Analysis) -> list[Table]:
    sets = analysis.data.external_sets
    tables = []
    for external in sets.itertuples():
        for backbone, part in analysis.cells.groupby("backbone", sort=True):
            display, numbers = [], []
            for row in part.itertuples():
                d, n = _cell_rows(analysis, (row.backbone, row.recipe, row.variant), external.name)
                display += d
                numbers += n
            if not display:
                continue
            judged = ", ".join(f"{t} (as {' or '.join(s)})" for t, s in external.labels.items())
            note = (f"External set {external.name} ({external.images} images, data set {external.dataset}); it "
                    f"judges {judged}" + (f"; left out, no counterpart: {', '.join(external.left_out)}"
                                         if external.left_out else "")
                    + ". Internal: pooled out-of-fold test predictions on those classes. Macro over classes; "
                      "95% CIs: patient-clustered bootstrap; the drop's interval resamples both sets "
                      "independently. TTA rows are test-time augmented and never pooled with the others. Per "
                      "class (the fold ensemble's) in the CSV.")
            tables.append(Table(f"external_{external.name}_{backbone}", f"External validation on {external.name}: "
                                f"{backbone}", pd.DataFrame(numbers), pd.DataFrame(display), note))
    return tables
