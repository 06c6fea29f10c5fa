"""BCE-family losses; every one takes logits, 0/1 targets and an optional 0/1 mask."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _masked_mean(per_element: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_element.mean()
    return (per_element * mask).sum() / mask.sum().clamp_min(1.0)


def bce(logits, targets, mask=None):
    return _masked_mean(F.binary_cross_entropy_with_logits(logits, targets, reduction="none"), mask)


def weighted_bce(pos_weight: torch.Tensor, neg_weight: torch.Tensor):
    """Seed 003: positive terms weighted by the class's negative frequency and vice versa."""

    def loss(logits, targets, mask=None):
        weights = targets * pos_weight + (1 - targets) * neg_weight
        per = F.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="none")
        return _masked_mean(per, mask)

    return loss


def batch_weighted_bce(logits, targets, mask=None):
    """Seed 000: beta_P = (|P|+|N|)/|P|, beta_N = (|P|+|N|)/|N| per batch and class.

    A class with no positives (or no negatives) in the batch gets no such term, not an
    infinite weight.
    """
    m = torch.ones_like(targets) if mask is None else mask
    pos = (targets * m).sum(0)
    neg = ((1 - targets) * m).sum(0)
    total = pos + neg
    beta_p = torch.where(pos > 0, total / pos.clamp_min(1.0), torch.zeros_like(pos))
    beta_n = torch.where(neg > 0, total / neg.clamp_min(1.0), torch.zeros_like(neg))
    weights = (targets * beta_p + (1 - targets) * beta_n) * m
    per = F.binary_cross_entropy_with_logits(logits, targets, weight=weights, reduction="none")
    return per.sum() / m.sum().clamp_min(1.0)


LOSSES = ("bce", "weighted_bce", "batch_weighted_bce")


def make_loss(name: str, train_labels: np.ndarray, device: torch.device):
    """The loss named `name`; class weights (if any) come from the training labels."""
    if name == "bce":
        return bce
    if name == "batch_weighted_bce":
        return batch_weighted_bce
    if name == "weighted_bce":
        pos_freq = torch.as_tensor(np.nanmean(train_labels, axis=0), dtype=torch.float32, device=device)
        return weighted_bce(pos_weight=1 - pos_freq, neg_weight=pos_freq)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")
