"""Losses against hand-computed values; metrics against known cases, NaN where undefined."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.losses import batch_weighted_bce, bce, make_loss
from trainables.metrics import fitted_thresholds, multilabel_metrics, split_metrics


def _bce_terms(p, y):
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_batch_weighted_bce_matches_the_seed_formula():
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    probs = torch.sigmoid(logits).numpy()
    expected = 0.0
    for k in range(2):
        pos = targets[:, k].sum().item()
        neg = 3 - pos
        for i in range(3):
            y = targets[i, k].item()
            beta = (pos + neg) / pos if y == 1 else (pos + neg) / neg
            expected += beta * _bce_terms(probs[i, k], y)
    assert batch_weighted_bce(logits, targets).item() == pytest.approx(expected / 6, rel=1e-5)


def test_batch_weighted_bce_is_finite_without_positives_or_negatives():
    logits = torch.randn(4, 3, requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 0.0]] * 4)  # class 0 and 2: no positives; class 1: no negatives
    loss = batch_weighted_bce(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_masked_entries_do_not_count():
    logits = torch.tensor([[0.3, 5.0]])
    targets = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0]])
    assert bce(logits, targets, mask).item() == pytest.approx(_bce_terms(torch.sigmoid(torch.tensor(0.3)).item(), 1))


def test_weighted_bce_weights_positives_by_negative_frequency():
    train = np.array([[1], [0], [0], [0]])  # positive frequency 0.25
    loss = make_loss("weighted_bce", train, torch.device("cpu"))
    logits, p = torch.tensor([[0.0]]), 0.5
    assert loss(logits, torch.tensor([[1.0]])).item() == pytest.approx(0.75 * _bce_terms(p, 1))
    assert loss(logits, torch.tensor([[0.0]])).item() == pytest.approx(0.25 * _bce_terms(p, 0))


def test_weighted_bce_frequencies_ignore_unknown_labels_and_the_mask_drops_entries():
    train = np.array([[1, 0], [0, np.nan], [np.nan, 0], [0, 0]])  # class 0: 1 of 3 known positive; class 1: none
    loss = make_loss("weighted_bce", train, torch.device("cpu"))
    logits, p = torch.tensor([[0.0, 0.0]]), 0.5
    targets, mask = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    assert loss(logits, targets, mask).item() == pytest.approx((2 / 3) * _bce_terms(p, 1))
    # a class never positive in training: positives weigh 1, negatives 0, and nothing is infinite
    both = loss(logits, torch.tensor([[0.0, 1.0]]))
    assert both.item() == pytest.approx(((1 / 3) * _bce_terms(p, 0) + 1.0 * _bce_terms(p, 1)) / 2)


def test_batch_weighted_bce_respects_the_mask():
    logits = torch.tensor([[0.2, -0.3], [1.0, 0.4], [-0.5, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    # masked entries are neither counted in |P|, |N| nor in the loss: the same as the loss of the known entries
    probs = torch.sigmoid(logits).numpy()
    known = [(0, 0), (1, 0), (0, 1), (2, 1)]  # class 0: one positive, one negative; class 1: two negatives
    betas = {(0, 0): 2.0, (1, 0): 2.0, (0, 1): 1.0, (2, 1): 1.0}
    expected = sum(betas[i, k] * _bce_terms(probs[i, k], targets[i, k].item()) for i, k in known) / 4
    assert batch_weighted_bce(logits, targets, mask).item() == pytest.approx(expected, rel=1e-5)


def test_unknown_loss_lists_the_valid_ones():
    with pytest.raises(ValueError, match="expected one of .*batch_weighted_bce"):
        make_loss("focal", np.zeros((2, 1)), torch.device("cpu"))


def test_metrics_known_values():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.2, 0.8], [0.7, 0.4], [0.1, 0.6]])
    m = multilabel_metrics(y, p, thresholds=np.array([0.5, 0.3]))
    assert m["auc_per_class"] == [1.0, 0.75]
    assert m["auc"] == pytest.approx(0.875) and m["auc_classes"] == 2
    # AP of class 1: ranking 0.8(+) 0.6(-) 0.4(+) 0.2(-) -> precisions 1 and 2/3 at the two hits
    assert m["ap_per_class"][1] == pytest.approx((1 + 2 / 3) / 2)
    assert m["prevalence_per_class"] == [0.5, 0.5]
    assert m["hamming_05"] == pytest.approx(2 / 8)  # (3,1) and (4,1) are wrong at 0.5
    assert m["binary_acc"] == pytest.approx(0.75)
    # at the fitted thresholds 0.5 and 0.3: (3,1) is now right (0.4 > 0.3), (4,1) still wrong
    assert m["hamming"] == pytest.approx(1 / 8)
    assert m["mae"] == pytest.approx(np.abs(p - y).mean())
    assert m["fnr_per_class"] == [0.0, 0.5] and m["fnr"] == pytest.approx(0.25)
    assert m["exact_match"] == pytest.approx(0.5)
    assert m["undefined"] == []
    record = split_metrics({**m, "loss": 0.3})  # what a trial reports of a split: the same numbers, every one
    assert record.macro == {k: m[k] for k in record.macro if k != "loss"} | {"loss": 0.3}
    assert record.per_class == {k: m[f"{k}_per_class"] for k in record.per_class}
    assert record.classes == {k: m[f"{k}_classes"] for k in record.classes} and record.undefined == []


def test_seed_000_threshold_is_the_training_prevalence():
    # p/(1-p) > |P|/|N|  <=>  p > |P|/(|P|+|N|); NaN labels are not counted
    train = np.array([[1, 0, np.nan], [0, 0, np.nan], [0, 1, np.nan], [0, 0, np.nan]])
    thresholds = fitted_thresholds(train)
    assert thresholds[:2].tolist() == [0.25, 0.25] and np.isnan(thresholds[2])
    m = multilabel_metrics(np.array([[1, 0, 1], [0, 1, 0]]), np.full((2, 3), 0.3), thresholds, ["a", "b", "c"])
    assert math.isnan(m["hamming_per_class"][2]) and m["hamming"] == pytest.approx(2 / 4)
    assert "hamming [c]: no fitted threshold (no labelled training images)" in m["undefined"]
    p = 0.26  # odds 0.351 > 1/3: positive
    assert p / (1 - p) > 1 / 3 and p > thresholds[0]


def test_class_without_positives_is_nan_with_a_reason_and_left_out_of_the_macro_mean():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    p = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2], [0.1, 0.4]])
    m = multilabel_metrics(y, p, label_names=["Cardiomegaly", "Hernia"])
    assert math.isnan(m["auc_per_class"][1]) and math.isnan(m["ap_per_class"][1]) and math.isnan(m["fnr_per_class"][1])
    assert m["auc"] == 1.0 and m["auc_classes"] == 1 and m["fnr_classes"] == 1
    assert "auc, ap [Hernia]: no positive images among 4 in this split" in m["undefined"]
    assert "fnr [Hernia]: no positive images in this split" in m["undefined"]
    assert m["binary_acc"] == 1.0  # every entry right at 0.5: pooled metrics still count the class
    assert "hamming: no fitted thresholds were given" in m["undefined"]


def test_class_without_negatives_is_nan_with_a_reason():
    y = np.array([[1, 1], [0, 1], [1, 1]])
    m = multilabel_metrics(y, np.full((3, 2), 0.7), label_names=["a", "b"])
    assert np.isnan(m["auc_per_class"][1]) and "auc, ap [b]: no negative images among 3 in this split" in m["undefined"]


def test_a_split_with_no_defined_class_gives_nan_macros_not_a_crash():
    m = multilabel_metrics(np.zeros((3, 2)), np.full((3, 2), 0.2))
    assert math.isnan(m["auc"]) and m["auc_classes"] == 0 and math.isnan(m["fnr"])
    assert m["binary_acc"] == 1.0 and m["exact_match"] == 1.0


def test_masked_truth_is_left_out_of_every_metric():
    y = np.array([[1, np.nan], [0, 1], [1, 0], [0, np.nan]])
    p = np.array([[0.9, 0.9], [0.2, 0.8], [0.7, 0.9], [0.6, 0.1]])
    m = multilabel_metrics(y, p, thresholds=np.array([0.5, 0.5]))
    assert m["auc_per_class"] == [1.0, 0.0]  # class 1 on its known rows 1, 2: positive 0.8 < negative 0.9
    assert m["hamming_05"] == pytest.approx(2 / 6)  # (2,1) and (3,0) wrong among 6 known entries
    assert m["hamming"] == pytest.approx(2 / 6)
    assert m["mae"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.6 + 0.2 + 0.9) / 6)
    assert m["prevalence_per_class"] == [0.5, 0.5]
    assert m["exact_match"] == pytest.approx(2 / 4)


def test_exact_match_is_strictly_above_one_half():
    # Keras' binary accuracy (seed 003) predicts positive for p > 0.5, not p >= 0.5
    m = multilabel_metrics(np.array([[0.0]]), np.array([[0.5]]))
    assert m["exact_match"] == 1.0 and m["binary_acc"] == 1.0
