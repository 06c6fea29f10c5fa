"""Multi-label metrics. AUC/AP of a class with one value in the truth are NaN, and macro
means average only the defined classes (`n_defined` says how many)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, hamming_loss, roc_auc_score


def per_class(y_true: np.ndarray, y_prob: np.ndarray, score) -> np.ndarray:
    out = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):
        if 0 < y_true[:, k].sum() < len(y_true):
            out[k] = score(y_true[:, k], y_prob[:, k])
    return out


def _nanmean(values: np.ndarray) -> float:
    return float(np.mean(values[~np.isnan(values)])) if (~np.isnan(values)).any() else float("nan")


def multilabel_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Macro AUC and AP, Hamming loss, binary and exact-match accuracy, per-class AUC/AP."""
    y_pred = (y_prob >= threshold).astype(int)
    auc = per_class(y_true, y_prob, roc_auc_score)
    ap = per_class(y_true, y_prob, average_precision_score)
    hamming = float(hamming_loss(y_true, y_pred))
    return {
        "auc": _nanmean(auc), "ap": _nanmean(ap), "n_defined": int((~np.isnan(auc)).sum()),
        "hamming": hamming, "binary_acc": 1.0 - hamming,
        "exact_match": float(accuracy_score(y_true, y_pred)),
        "auc_per_class": auc.tolist(), "ap_per_class": ap.tolist(),
    }
