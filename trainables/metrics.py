"""Multi-label metrics, with masked (NaN) truth left out. AUC/AP of a class with one value in
the (unmasked) truth are NaN, and macro means average only the defined classes (`n_defined`
says how many). Hamming loss and exact match count only unmasked entries."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def per_class(y_true: np.ndarray, y_prob: np.ndarray, score) -> np.ndarray:
    out = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):
        known = ~np.isnan(y_true[:, k])
        truth = y_true[known, k]
        if 0 < truth.sum() < len(truth):
            out[k] = score(truth, y_prob[known, k])
    return out


def _nanmean(values: np.ndarray) -> float:
    return float(np.mean(values[~np.isnan(values)])) if (~np.isnan(values)).any() else float("nan")


def multilabel_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Macro AUC and AP, Hamming loss, binary and exact-match accuracy, per-class AUC/AP."""
    known = ~np.isnan(y_true)
    wrong = ((y_prob >= threshold) != (y_true == 1)) & known
    auc = per_class(y_true, y_prob, roc_auc_score)
    ap = per_class(y_true, y_prob, average_precision_score)
    hamming = float(wrong.sum() / max(known.sum(), 1))
    return {
        "auc": _nanmean(auc), "ap": _nanmean(ap), "n_defined": int((~np.isnan(auc)).sum()),
        "hamming": hamming, "binary_acc": 1.0 - hamming,
        "exact_match": float((~wrong.any(axis=1)).mean()) if len(y_true) else float("nan"),
        "auc_per_class": auc.tolist(), "ap_per_class": ap.tolist(),
    }
