"""Grad-CAM in the sweep's report: for each cell, the model sweeper.predict would apply
(results.choose) on a few of its own outer-test images, the ones it got most right and most wrong.

For the label with the most positives among that trial's test images: the most confident true
positive and true negative, the least confident false negative and the most confident false
positive, at the label's fitted threshold. A mixed model shows a row per branch.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sqlalchemy import select  # noqa: E402

from data_prep.dataset import PreparedDataset  # noqa: E402
from results.choose import ChosenTrial, cells_with_models, choose_from, selected_trials  # noqa: E402
from results.figures import Figure  # noqa: E402
from results.load import SWEEPS, read_frame, reading  # noqa: E402
from results.query import QueryError  # noqa: E402
from results.schema import Prediction, Trial  # noqa: E402
from sweeper.predict import read_checkpoint  # noqa: E402
from trainables.explain import heatmap_overlays  # noqa: E402
from trainables.predict import TrainedModel  # noqa: E402

HEADING = "Explanations: Grad-CAM on test images"


def examples(predictions: pd.DataFrame, model: TrainedModel) -> tuple[str, list[tuple[str, str, float]]]:
    """(label, [(kind, image_key, probability)]) for the label with the most positives that also has negatives."""
    known = predictions.dropna(subset=["target"])
    counts = known.groupby("class_name")["target"].agg(["sum", "count"])
    usable = counts[(counts["sum"] > 0) & (counts["sum"] < counts["count"])]
    if usable.empty:
        return "", []
    label = usable["sum"].idxmax()
    threshold = model.thresholds[model.label_names.index(label)]
    part = known[known["class_name"] == label]
    above = part["prob"] > threshold
    kinds = [("true positive", (part["target"] == 1) & above, False), ("false negative", (part["target"] == 1) & ~above, True),
             ("false positive", (part["target"] == 0) & above, False), ("true negative", (part["target"] == 0) & ~above, True)]
    chosen = []
    for kind, mask, lowest_first in kinds:
        if mask.any():
            row = part[mask].sort_values("prob", ascending=lowest_first).iloc[0]
            chosen.append((kind, row["image_key"], float(row["prob"])))
    return label, chosen


def _panel(title: str, pictures: list[list[np.ndarray]], captions: list[str], branches: int) -> bytes:
    fig, axes = plt.subplots(branches, len(captions), figsize=(2.2 * len(captions), 2.4 * branches), squeeze=False)
    for b in range(branches):
        for j, caption in enumerate(captions):
            axes[b][j].imshow(pictures[j][b])
            axes[b][j].set_axis_off()
            axes[b][j].set_title(caption + (f"\nbranch {b}" if branches > 1 else ""), fontsize=7)
    fig.suptitle(title, fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _skipped(log, cell: str, exc: Exception) -> None:
    log(f"[sweeper] no Grad-CAM for cell {cell} in the report ({type(exc).__name__}: {exc})")


def _models(db_url: str, sweep: str, log) -> list[tuple[str, ChosenTrial, pd.DataFrame]]:
    """Each cell's model (as sweeper.predict would choose it) and that trial's test predictions, read with
    one engine before any model runs."""
    p, t, s = Prediction.__table__.alias("p"), Trial.__table__.alias("t"), SWEEPS.alias("s")
    found = []
    with reading(db_url) as conn:
        selected = selected_trials(conn, sweep)
        for cell in cells_with_models(selected):
            try:
                chosen = choose_from(selected, db_url, sweep, cell)
            except QueryError as exc:
                _skipped(log, cell, exc)
                continue
            found.append((cell, chosen, read_frame(conn, select(p.c.image_key, p.c.class_name, p.c.prob, p.c.target)
                                                   .select_from(p.join(t, t.c.id == p.c.trial_id)
                                                                .join(s, s.c.id == t.c.sweep_id))
                                                   .where(s.c.name == sweep, t.c.trial_key == chosen.trial_key,
                                                          p.c.split == "test"))))
    return found


def explanation_sections(db_url: str, sweep: str, target: Path, log=print) -> list[tuple[str, list, list[Figure]]]:
    data = PreparedDataset(target)
    row_of = {key: i for i, key in enumerate(data.image_keys)}
    figures = []
    for cell, chosen, predictions in _models(db_url, sweep, log):
        try:
            model = TrainedModel.load(read_checkpoint(chosen.checkpoint), "cpu", source=chosen.checkpoint)
            label, picked = examples(predictions, model)
            if not picked:
                continue
            k = model.label_names.index(label)
            pictures, captions = [], []
            for kind, key, prob in picked:
                pictures.append(heatmap_overlays(model.model, model.tensor(data.images[row_of[key]]), k))
                captions.append(f"{kind}\np={prob:.2f} (threshold {model.thresholds[k]:.2f})")
            title = f"{cell}, outer fold {chosen.fold}: {label}"
            figures.append(Figure(f"gradcam_{cell}", title, _panel(title, pictures, captions, len(pictures[0])),
                                  "Grad-CAM of the label's logit over the test image"))
        except Exception as exc:  # noqa: BLE001 - one cell's model must not cost the report
            _skipped(log, cell, exc)
    return [(HEADING, [], figures)] if figures else []
