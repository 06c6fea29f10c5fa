"""The report's figures as PNG bytes: backbone selection bars (seed 000), ROC and
precision-recall curves of the pooled out-of-fold predictions, learning curves, the
learning-rate study (seed 003), and reliability diagrams. Matplotlib without a display (Agg)."""
from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no screen on a cluster head or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from results.analysis import Analysis  # noqa: E402
from results.calibration import BINS, reliability_bins  # noqa: E402
from vocab.metrics import REGISTRY, Metric  # noqa: E402
from vocab.names import metric_key, row_name  # noqa: E402


@dataclass
class Figure:
    key: str  # file stem
    title: str
    png: bytes
    caption: str = ""


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def backbone_bars(analysis: Analysis) -> list[Figure]:
    """Seed 000's "Backbone model selection" charts, one per metric drawn as `bars` (vocab.metrics: test AP, AUC
    and Hamming loss) per recipe (grouped by strategy) and backbone, mean over folds with the sd as error bar."""
    cells = analysis.cells.sort_values(["strategy", "recipe", "variant"])
    if cells["auc_mean"].isna().all():
        return []
    recipes = list(dict.fromkeys(zip(cells.strategy, cells.recipe, cells.variant)))
    backbones = sorted(cells.backbone.unique())
    figures = []
    for stem, title in ((m.name, m.heading) for m in REGISTRY.values() if "bars" in m.figures):
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(recipes)), 3.2))
        width = 0.8 / len(backbones)
        for i, backbone in enumerate(backbones):
            planned = cells[cells.backbone == backbone].set_index(["strategy", "recipe", "variant"])
            part = planned.reindex(recipes)
            x = np.arange(len(recipes)) + i * width
            ax.bar(x, part[f"{stem}_mean"], width, yerr=part[f"{stem}_sd"].fillna(0), capsize=2, label=backbone)
            missing = part[f"{stem}_mean"].isna().to_numpy() & part.index.isin(planned.index)
            for xi in x[missing]:  # a planned cell with no finished fold
                ax.text(xi, 0, "missing", rotation=90, ha="center", va="bottom", fontsize=6, color="0.4")
        ax.set_xticks(np.arange(len(recipes)) + width * (len(backbones) - 1) / 2,
                      [f"{s}\n{row_name(r, v)}" for s, r, v in recipes], fontsize=7)
        ax.set_ylabel(f"test {title}")
        ax.legend(fontsize=7)
        ax.set_title(f"Backbone model selection: {title}")
        figures.append(Figure(f"backbone_selection_{stem}", f"Backbone model selection: {title}", _png(fig),
                              "Mean over outer folds of the selected trials; bars are +/- 1 sd."))
    return figures


def _known(pooled: dict) -> tuple[np.ndarray, np.ndarray]:
    truth, probs = pooled["truth"].ravel(), pooled["probs"].ravel()
    keep = ~np.isnan(truth)
    return truth[keep], probs[keep]


def _roc(ax, truth: np.ndarray, probs: np.ndarray, **style) -> bool:
    """Draw one ROC curve; False (nothing drawn) when the truth has no positives or no negatives."""
    if len(truth) == 0 or truth.min() == truth.max():
        return False
    fpr, tpr, _ = roc_curve(truth, probs)
    ax.plot(fpr, tpr, **style)
    return True


def _roc_frame(ax) -> None:
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)  # chance
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate")


def roc_pr_curves(analysis: Analysis) -> list[Figure]:
    """Per backbone: ROC and precision-recall curves (micro-average over classes) of every cell's pooled
    out-of-fold test predictions."""
    figures = []
    for backbone in sorted(analysis.cells.backbone.unique()):
        keys = [k for k in analysis.pooled if k[0] == backbone and analysis.pooled[k] is not None]
        if not keys:
            continue
        fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 3.8))
        for key in keys:
            truth, probs = _known(analysis.pooled[key])
            if _roc(roc_ax, truth, probs, label=row_name(key[1], key[2])):
                precision, recall, _ = precision_recall_curve(truth, probs)
                pr_ax.plot(recall, precision, label=row_name(key[1], key[2]))
        _roc_frame(roc_ax)
        roc_ax.set_title(f"ROC: {backbone}")
        pr_ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall: {backbone}")
        roc_ax.legend(fontsize=7)
        figures.append(Figure(f"roc_pr_{backbone}", f"ROC and precision-recall curves: {backbone}", _png(fig),
                              "Pooled out-of-fold test predictions, micro-averaged over classes."))
    return figures


def per_class_roc(analysis: Analysis) -> list[Figure]:
    """Per cell: one ROC curve per class of its pooled out-of-fold predictions."""
    figures = []
    for key, pooled in analysis.pooled.items():
        if pooled is None:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.8))
        for j, name in enumerate(pooled["classes"]):
            truth, probs = pooled["truth"][:, j], pooled["probs"][:, j]
            keep = ~np.isnan(truth)
            _roc(ax, truth[keep], probs[keep], lw=1, label=name)
        _roc_frame(ax)
        ax.set_title(f"{key[0]} / {row_name(key[1], key[2])}", fontsize=9)
        ax.legend(fontsize=6)
        figures.append(Figure("roc_per_class_" + "_".join(k for k in key if k), f"Per-class ROC: {key[0]} / {row_name(key[1], key[2])}",
                              _png(fig)))
    return figures


def learning_curves(analysis: Analysis) -> list[Figure]:
    """Per backbone: validation AUC by epoch of each cell's selected trials (one line per fold)."""
    trials, curves = analysis.data.trials, analysis.data.curves
    selected = trials[trials.selected == 1]
    if selected.empty or curves.empty:
        return []
    figures = []
    for backbone, part in selected.groupby("backbone", sort=True):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, ((recipe, variant), cell) in enumerate(part.groupby(["recipe", "variant"], sort=True)):
            for j, trial_id in enumerate(cell.trial_id):
                c = curves[curves.trial_id == trial_id]
                ax.plot(c.epoch, c.val_auc, color=f"C{i}", lw=1, label=row_name(recipe, variant) if j == 0 else None)
        ax.set(xlabel="epoch", ylabel="validation AUC", title=f"Learning curves: {backbone}")
        ax.legend(fontsize=7)
        figures.append(Figure(f"learning_curves_{backbone}", f"Learning curves: {backbone}", _png(fig),
                              "Inner-validation AUC per epoch of the selected trial of each fold."))
    return figures


def over_epochs() -> dict[str, Metric]:
    """{curve column: metric} of the metrics drawn over epochs (vocab.metrics' `epochs`)."""
    return {metric_key("val", m.name): m for m in REGISTRY.values() if "epochs" in m.figures}


def accuracy_over_epochs(analysis: Analysis) -> list[Figure]:
    """Seed 003's figures, per backbone: inner-validation binary accuracy, exact-match ("absolute") accuracy
    and false-negative rate at 0.5 (and any other metric drawn over `epochs`) by epoch, of each cell's selected
    trials (a line per fold)."""
    trials, curves = analysis.data.trials, analysis.data.curves
    selected, shown = trials[trials.selected == 1], over_epochs()
    if selected.empty or curves.empty or not shown or curves[list(shown)].isna().all().all():
        return []
    figures = []
    for backbone, part in selected.groupby("backbone", sort=True):
        fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.4), squeeze=False)
        axes = axes[0]
        for i, ((recipe, variant), cell) in enumerate(part.groupby(["recipe", "variant"], sort=True)):
            for j, trial_id in enumerate(cell.trial_id):
                c = curves[curves.trial_id == trial_id]
                for ax, column in zip(axes, shown):
                    ax.plot(c.epoch, c[column], color=f"C{i % 10}", lw=1,
                            label=row_name(recipe, variant) if j == 0 and ax is axes[0] else None)
        for ax, metric in zip(axes, shown.values()):
            ax.set(xlabel="epoch", ylabel=f"validation {metric.label}", title=f"{metric.heading}: {backbone}")
        axes[0].legend(fontsize=6)
        figures.append(Figure(f"accuracy_over_epochs_{backbone}", f"Accuracy and false negatives over epochs: {backbone}",
                              _png(fig), "Inner validation at a 0.5 threshold, per epoch of the selected trial of "
                                         "each fold (seed 003's figures)."))
    return figures


def learning_rate_study(analysis: Analysis) -> list[Figure]:
    """Seed 003's learning-rate study, per backbone: validation loss by epoch of every trial coloured by
    its learning rate, and each trial's best validation AUC against its learning rate."""
    trials, curves = analysis.data.trials, analysis.data.curves
    trials = trials[trials.lr.notna() & (trials.lr > 0) & (trials.status != "ERROR")]
    if trials.empty or curves.empty:
        return []
    norm = matplotlib.colors.LogNorm(trials.lr.min(), max(trials.lr.max(), trials.lr.min() * 1.0001))
    figures = []
    for backbone, part in trials.groupby("backbone", sort=True):
        fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(9, 3.6))
        for trial in part.itertuples():
            c = curves[curves.trial_id == trial.trial_id]
            loss_ax.plot(c.epoch, c.val_loss, color=plt.cm.viridis(norm(trial.lr)), lw=0.8)
        scored = part[part.val_auc.notna()]
        points = auc_ax.scatter(scored.lr, scored.val_auc, c=scored.lr, cmap="viridis", norm=norm, s=14)
        auc_ax.set_xscale("log")
        loss_ax.set(xlabel="epoch", ylabel="validation loss", title=f"Learning rate and loss: {backbone}")
        auc_ax.set(xlabel="learning rate", ylabel="best validation AUC", title="Learning rate and AUC")
        fig.colorbar(points, ax=auc_ax, label="learning rate")
        figures.append(Figure(f"learning_rate_{backbone}", f"Learning-rate study: {backbone}", _png(fig),
                              "Every trial of the backbone (all cells and folds)."))
    return figures


def reliability_diagrams(analysis: Analysis) -> list[Figure]:
    """Per backbone: each cell's reliability curve (mean probability against share of positives over
    equal-mass bins) of its pooled out-of-fold test predictions, all classes' known labels together."""
    figures = []
    for backbone in sorted(analysis.cells.backbone.unique()):
        keys = [k for k in analysis.pooled if k[0] == backbone and analysis.pooled[k] is not None]
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(4.8, 4.2))
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8, label="calibrated")
        for key in keys:
            truth, probs = _known(analysis.pooled[key])
            found = reliability_bins(truth, probs)
            ax.plot([b.mean_probability for b in found], [b.observed_frequency for b in found], marker="o", ms=3,
                    lw=1, label=row_name(key[1], key[2]))
        ax.set(xlabel="mean predicted probability", ylabel="share of positives", xlim=(0, 1), ylim=(0, 1),
               title=f"Reliability: {backbone}")
        ax.legend(fontsize=6)
        figures.append(Figure(f"reliability_{backbone}", f"Reliability diagram: {backbone}", _png(fig),
                              f"Pooled out-of-fold test predictions, every class's known labels together, "
                              f"{BINS} equal-mass bins; on the dashed line a probability means what it says."))
    return figures


def all_figures(analysis: Analysis) -> list[tuple[str, list[Figure]]]:
    return [("Backbone model selection", backbone_bars(analysis)),
            ("ROC and precision-recall curves", roc_pr_curves(analysis) + per_class_roc(analysis)),
            ("Learning curves", learning_curves(analysis) + accuracy_over_epochs(analysis)),
            ("Learning-rate study", learning_rate_study(analysis)),
            ("Calibration", reliability_diagrams(analysis))]

