"""One fit of one (backbone, recipe, outer fold, hyperparameters): a plain function.

Every epoch: train, evaluate on the inner validation split, and, when validation improved,
evaluate the outer test fold. The report therefore always carries the test metrics of the
best-on-validation epoch so far, for trials that run to the end and for trials a scheduler
stops early. Tuning only ever looks at `val_auc`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data_prep.dataset import PreparedDataset
from trainables import engine
from trainables.losses import make_loss
from trainables.metrics import multilabel_metrics
from trainables.models import build_model
from trainables.pretrain import ensure_pretrained


@dataclass(frozen=True)
class FitConfig:
    data_dir: str
    backbone: str
    outer_fold: int
    lr: float = 1e-3
    dropout: float = 0.2
    epochs: int = 3
    batch_size: int = 32
    loss: str = "bce"
    init: str = "scratch"
    pretrain_dir: str | None = None  # prepared source data set (regular transfer)
    pretrain_epochs: int = 2
    pretrain_lr: float = 1e-3
    pretrain_cache: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    threads: int | None = None
    device: str = "auto"


Report = Callable[[dict, dict], None]  # (metrics of this epoch, checkpoint state)


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _print_report(metrics: dict, state: dict) -> None:
    print(f"epoch {metrics['epoch']}: train_loss={metrics['train_loss']:.4f} val_auc={metrics['val_auc']:.4f} "
          f"best_epoch={metrics['best_epoch']} test_auc={metrics['test_auc']:.4f}")


def _evaluate(model, data, images, indices, cfg, device, loss_fn) -> dict:
    probs = engine.predict(model, images, indices, cfg.batch_size, device)
    truth = data.labels[indices]
    metrics = multilabel_metrics(truth, probs)
    logits = torch.as_tensor(probs, device=device).logit(eps=1e-6)  # loss weights live on `device`
    metrics["loss"] = float(loss_fn(logits, *engine.targets_and_mask(truth, device)))
    return metrics


def _require_defined_auc(data: PreparedDataset, val_idx: np.ndarray, cfg: FitConfig) -> None:
    """Tuning needs a validation AUC: at least one label with positives and negatives."""
    labels = data.labels[val_idx]
    positives, known = np.nansum(labels, axis=0), (~np.isnan(labels)).sum(axis=0)
    if not ((positives > 0) & (positives < known)).any():
        raise ValueError(f"{data.root.name}, outer fold {cfg.outer_fold}: the inner validation split "
                         f"({len(val_idx)} images) has no label with both positive and negative images, so "
                         f"validation AUC is undefined; use a larger val_fraction or more data")


def fit(cfg: FitConfig, report: Report = _print_report, state: dict | None = None, log=print) -> dict:
    """Train; call `report(metrics, state)` after every epoch; return the last metrics.

    `state` is a checkpoint dict from an earlier report: training resumes after its epoch.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = PreparedDataset(cfg.data_dir)
    split = data.split(cfg.outer_fold, cfg.val_fraction, seed=cfg.seed)
    _require_defined_auc(data, split.val, cfg)
    model = build_model(cfg.backbone, len(data.label_names), cfg.dropout, cfg.init)
    if cfg.pretrain_dir and state is None:
        cache = Path(cfg.pretrain_cache or Path(cfg.data_dir).parent / "pretrained")
        path = ensure_pretrained(cache, cfg.backbone, cfg.init, cfg.pretrain_dir, cfg.pretrain_epochs,
                                 cfg.pretrain_lr, cfg.batch_size, cfg.seed, device, log)
        model.trunk.load_state_dict(torch.load(path, weights_only=True, map_location="cpu")["trunk"], strict=True)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    best = {"epoch": 0, "val_auc": -np.inf, "test": {}}
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])  # dropout draws from the global generator
        best = state["best"]
    images = torch.from_numpy(np.array(data.images))  # into memory; tiny next to a model
    loss_fn = make_loss(cfg.loss, data.labels[split.train], device)
    metrics: dict = {}
    for epoch in range((state or {}).get("epoch", 0) + 1, cfg.epochs + 1):
        started = time.perf_counter()
        train_loss = engine.train_one_epoch(model, loss_fn, optimizer, images, data.labels, split.train,
                                            cfg.batch_size, device, generator)
        val = _evaluate(model, data, images, split.val, cfg, device, loss_fn)
        if val["auc"] > best["val_auc"]:
            best = {"epoch": epoch, "val_auc": val["auc"], "test": _evaluate(model, data, images, split.test, cfg, device, loss_fn)}
        metrics = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_auc": val["auc"],
            "val_ap": val["ap"], "best_epoch": best["epoch"], "best_val_auc": best["val_auc"],
            "epoch_seconds": time.perf_counter() - started,
            **{f"test_{k}": v for k, v in best["test"].items()},
        }
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "best": best, "config": asdict(cfg)}
        report(metrics, state)
    return metrics
