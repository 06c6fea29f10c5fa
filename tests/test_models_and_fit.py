"""Every backbone builds with the GAP head; fit runs as a plain function and resumes exactly."""
from __future__ import annotations

import pytest
import torch

from trainables.fit import FitConfig, fit
from trainables.models import TRUNKS, build_model


@pytest.mark.parametrize("backbone", sorted(TRUNKS))
def test_backbone_outputs_one_logit_per_label(backbone):
    model = build_model(backbone, num_classes=5, dropout=0.3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="expected one of .*resnet50"):
        build_model("resnet51", 5, 0.0)


def _config(prepared_dir, **overrides) -> FitConfig:
    settings = dict(data_dir=str(prepared_dir), backbone="resnet18", outer_fold=0, epochs=3, batch_size=8,
                    lr=1e-3, threads=1)
    return FitConfig(**{**settings, **overrides})


def test_fit_runs_outside_ray_and_reports_every_epoch(prepared_dir):
    reports = []
    final = fit(_config(prepared_dir), report=lambda metrics, state: reports.append((metrics, state)))
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    assert final["best_epoch"] in (1, 2, 3)
    assert 0.0 <= final["test_auc"] <= 1.0 and 0.0 <= final["val_auc"] <= 1.0
    assert set(reports[-1][1]) >= {"model", "optimizer", "epoch", "best"}


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result(prepared_dir):
    path = prepared_dir.parent / "after_epoch1.pt"

    def save_first(metrics, state):  # written at report time, as the Ray adapter does
        if metrics["epoch"] == 1:
            torch.save(state, path)

    uninterrupted = fit(_config(prepared_dir), report=save_first)
    state = torch.load(path, weights_only=True)
    resumed = fit(_config(prepared_dir), report=lambda m, s: None, state=state)
    assert resumed["epoch"] == 3
    assert resumed["train_loss"] == pytest.approx(uninterrupted["train_loss"], rel=1e-5)
    assert resumed["test_auc"] == pytest.approx(uninterrupted["test_auc"], rel=1e-6)


def test_regular_transfer_pretrains_once_and_reuses_the_checkpoint(prepared_dir, tmp_path):
    cache = tmp_path / "pretrained"
    logs = []
    for _ in range(2):
        fit(_config(prepared_dir, epochs=1, pretrain_dir=str(prepared_dir), pretrain_epochs=1,
                    pretrain_cache=str(cache)), report=lambda m, s: None, log=logs.append)
    assert len(list(cache.glob("*.pt"))) == 1
    assert sum("[pretrain]" in line for line in logs) == 1


def test_a_validation_split_without_a_defined_auc_stops_with_a_clear_error(prepared_dir, tmp_path):
    import shutil

    import pandas as pd

    copy = tmp_path / "all_negative"
    shutil.copytree(prepared_dir, copy)
    labels = pd.read_csv(copy / "labels.csv")
    labels.iloc[:, 2:] = 0
    labels.to_csv(copy / "labels.csv", index=False)
    with pytest.raises(ValueError, match="outer fold 0: the inner validation split .* validation AUC is undefined"):
        fit(_config(copy), report=lambda m, s: None)


def test_masked_labels_train_with_finite_losses(prepared_dir, tmp_path):
    import shutil

    import numpy as np
    import pandas as pd

    copy = tmp_path / "masked"
    shutil.copytree(prepared_dir, copy)
    labels = pd.read_csv(copy / "labels.csv")
    labels.iloc[::3, 3] = np.nan  # a third of the first label unknown (e.g. CheXpert U-Ignore)
    labels.to_csv(copy / "labels.csv", index=False)
    for loss in ("bce", "weighted_bce", "batch_weighted_bce"):
        final = fit(_config(copy, epochs=1, loss=loss), report=lambda m, s: None)
        assert np.isfinite(final["train_loss"]) and np.isfinite(final["val_loss"]) and 0 <= final["val_auc"] <= 1
