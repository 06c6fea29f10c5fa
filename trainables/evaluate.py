"""End-of-trial evaluation: the best-on-validation weights on the outer training part and the
outer test fold (docs/design.md §3.2), with the per-image probabilities, truth and
pseudonymous keys the sweeper stores for curves and the patient-clustered bootstrap.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from trainables import engine
from trainables.metrics import MACRO, POOLED
from vocab.names import FINAL_SPLITS, metric_key

SCALARS = (*MACRO, *POOLED, "exact_match", "loss")  # what multilabel_metrics and the fit's score give


def _flat(split: str, metrics: dict) -> dict:
    out = {metric_key(split, name): metrics[name] for name in SCALARS}
    out.update({metric_key(split, name): metrics[name] for name in metrics if name.endswith(("_per_class", "_classes"))})
    out[metric_key(split, "undefined")] = list(metrics["undefined"])
    return out


def final_evaluation(run) -> tuple[dict, dict]:
    """(`test_*` and `outer_train_*` metrics, predictions per split) of the best-on-validation weights.

    The outer training part is inner-train plus inner-validation: everything the trial saw.
    """
    model = copy.deepcopy(run.model)
    model.load_state_dict(run.best_model, strict=True)
    parts = {"outer_train": np.sort(np.concatenate([run.split.train, run.split.val])), "test": run.split.test}
    assert set(parts) == set(FINAL_SPLITS)
    metrics: dict = {"thresholds": [float(t) for t in run.thresholds]}
    predictions: dict = {"label_names": list(run.data.label_names), "best_epoch": run.stopper.best_epoch}
    for name, indices in parts.items():
        probs = engine.predict(model, run.feed, indices, run.cfg.batch_size, run.precision)
        metrics.update(_flat(name, run.score(indices, probs)))
        predictions[name] = {"image_keys": [str(k) for k in run.data.image_keys[indices]],
                             "patient_keys": [str(k) for k in run.data.patient_keys[indices]],
                             "labels": torch.from_numpy(run.data.labels[indices]),  # NaN: unknown
                             "probs": torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))}
    return metrics, predictions
