"""One fit of one (backbone, recipe, outer fold, hyperparameters): a plain function.

Every epoch: train on the inner training part, evaluate the inner validation split, step
the learning-rate schedule and early stopping, and report with a checkpoint. Tuning only
ever looks at validation. When training ends (last epoch or early stop), the weights that
were best on validation are evaluated on the outer training part and the outer test fold;
that last report carries those metrics (`test_*`, `outer_train_*`) and the checkpoint
carries the per-image probabilities (`predictions`), so a scheduler that stops the trial
right after its last report loses nothing.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data_prep.dataset import PreparedDataset
from trainables import engine
from trainables.augment import AugmentConfig, BatchAugment
from trainables.evaluate import final_evaluation
from trainables.feed import ImageFeed
from trainables.losses import make_loss
from trainables.metrics import fitted_thresholds, multilabel_metrics
from trainables.pretrain import Stage
from trainables.recipe import build_recipe_model
from trainables.schedule import EarlyStopping, make_scheduler


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
    strategy: str = "regular"  # regular | mixed | co_trained
    pretrain_dirs: tuple[str, ...] = ()  # prepared source data sets, in order
    pretrain_init: str | None = None  # init of the pretrained branch (mixed); default: init
    pretrain_epochs: int = 2
    pretrain_lr: float = 1e-3
    pretrain_cache: str | None = None
    schedule: str = "plateau"  # plateau | cosine | constant
    schedule_patience: int = 2
    early_stopping: int = 0  # epochs without validation improvement before stopping; 0: never
    bn_recalibration: int = engine.RECALIBRATION_IMAGES  # images that re-estimate batch norm before evaluating; 0: off
    augment: dict | None = field(default=None, hash=False)  # AugmentConfig fields; None: no augmentation
    val_fraction: float = 0.2
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    feed: str = "auto"  # auto | resident | stream
    input_size: int | None = None  # the side the model sees (images resized on the device); None: the data's

    def __post_init__(self):
        object.__setattr__(self, "pretrain_dirs", tuple(self.pretrain_dirs or ()))

    def stage(self) -> Stage | None:
        if not self.pretrain_dirs:
            return None
        strategy = "co_trained" if self.strategy == "co_trained" else "regular"
        return Stage(self.backbone, self.pretrain_init or self.init, strategy, self.pretrain_dirs,
                     self.pretrain_epochs, self.pretrain_lr, self.batch_size, self.loss, self.seed)


Report = Callable[[dict, dict], None]  # (metrics of this epoch, checkpoint state)


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _print_report(metrics: dict, state: dict) -> None:
    line = (f"epoch {metrics['epoch']}: train_loss={metrics['train_loss']:.4f} val_auc={metrics['val_auc']:.4f} "
            f"best_epoch={metrics['best_epoch']}")
    print(line + (f" test_auc={metrics['test_auc']:.4f}" if "test_auc" in metrics else ""))


def _require_defined_auc(data: PreparedDataset, val_idx: np.ndarray, cfg: FitConfig) -> None:
    """Tuning needs a validation AUC: at least one label with positives and negatives."""
    labels = data.labels[val_idx]
    positives, known = np.nansum(labels, axis=0), (~np.isnan(labels)).sum(axis=0)
    if not ((positives > 0) & (positives < known)).any():
        raise ValueError(f"{data.root.name}, outer fold {cfg.outer_fold}: the inner validation split "
                         f"({len(val_idx)} images) has no label with both positive and negative images, so "
                         f"validation AUC is undefined; use a larger val_fraction or more data")


HALF_MAX = 60000.0  # a weight beyond fp16's range (65504) keeps full precision


def half_precision(weights: dict) -> dict:
    """Floating-point tensors in fp16 where every value fits, half the size of a finished trial's weights.
    The trial's final evaluation runs on exactly these values (`fit`), so its stored predictions are
    those of the weights kept: nothing is lost that a later prediction could show."""
    return {k: v.half() if v.is_floating_point() and v.abs().max() <= HALF_MAX else v for k, v in weights.items()}


def _cpu_copy(model: torch.nn.Module) -> dict:
    """A snapshot of the weights that later steps do not change (and that GPU memory does not hold)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class _Run:
    """Everything one fit holds; `state()` / `restore()` are the checkpoint."""

    def __init__(self, cfg: FitConfig, log):
        self.cfg, self.device = cfg, choose_device(cfg.device)
        self.precision = engine.Precision.choose(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.data = PreparedDataset(cfg.data_dir)
        self.split = self.data.split(cfg.outer_fold, cfg.val_fraction, seed=cfg.seed)
        _require_defined_auc(self.data, self.split.val, cfg)
        cache = Path(cfg.pretrain_cache or Path(cfg.data_dir).parent / "pretrained")
        model = build_recipe_model(cfg.backbone, cfg.init, cfg.strategy, cfg.stage(), len(self.data.label_names),
                                   cfg.dropout, cache, self.device, log, cfg.input_size)
        self.model = model.to(self.device, memory_format=torch.channels_last if self.precision.channels_last
                              else torch.preserve_format)
        self.optimizer = engine.adam(self.model.parameters(), cfg.lr)
        self.scheduler = make_scheduler(cfg.schedule, self.optimizer, cfg.epochs, cfg.schedule_patience)
        self.stopper = EarlyStopping(patience=cfg.early_stopping)
        self.scaler = self.precision.scaler()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.augment = BatchAugment(AugmentConfig(**cfg.augment)) if cfg.augment is not None else None
        self.feed = ImageFeed(self.data.images, self.device, cfg.feed)
        self.labels = torch.as_tensor(self.data.labels, device=self.device)
        self.loss_fn = make_loss(cfg.loss, self.data.labels[self.split.train], self.device)
        self.thresholds = fitted_thresholds(self.data.labels[self.split.train])
        self.best_model = _cpu_copy(self.model)
        self.epoch = 0

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "stopper": self.stopper.state_dict(), "best_model": self.best_model, "epoch": self.epoch,
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                "config": self.config_dict()}

    def config_dict(self) -> dict:
        return {**asdict(self.cfg), "pretrain_dirs": list(self.cfg.pretrain_dirs)}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.stopper.load_state_dict(state["stopper"])
        self.best_model, self.epoch = state["best_model"], state["epoch"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])  # dropout draws from the global generators
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def train_epoch(self) -> dict:
        started, waited = time.perf_counter(), self.feed.waited
        train_loss = engine.train_one_epoch(self.model, self.loss_fn, self.optimizer, self.scaler, self.feed,
                                            self.labels, self.split.train, self.cfg.batch_size, self.precision,
                                            self.generator, self.augment)
        trained = time.perf_counter() - started
        self.epoch += 1
        if self.cfg.bn_recalibration:
            sample = engine.spread(self.split.train, self.cfg.bn_recalibration)
            engine.recalibrate_batch_norm(self.model, self.feed, sample, self.cfg.batch_size, self.precision)
        val = self.evaluate(self.split.val)
        if self.stopper.update(self.epoch, val["auc"]):
            self.best_model = _cpu_copy(self.model)
        self.scheduler.step(val["auc"])
        return {"epoch": self.epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_auc": val["auc"],
                "val_ap": val["ap"], "val_hamming": val["hamming"], "val_binary_acc": val["binary_acc"],
                "val_exact_match": val["exact_match"], "val_fnr": val["fnr"],
                "lr": self.optimizer.param_groups[0]["lr"], "best_epoch": self.stopper.best_epoch,
                "best_val_auc": self.stopper.best, "epoch_seconds": time.perf_counter() - started,
                "train_images_per_second": len(self.split.train) / trained,
                "data_wait_seconds": self.feed.waited - waited}

    def evaluate(self, indices: np.ndarray) -> dict:
        probs = engine.predict(self.model, self.feed, indices, self.cfg.batch_size, self.precision)
        return self.score(indices, probs)

    def score(self, indices: np.ndarray, probs: np.ndarray) -> dict:
        if not np.isfinite(probs).all():  # diverged weights: a finite last-epoch loss can still end here
            raise engine.NonFiniteLoss(f"the model's predictions are not finite after epoch {self.epoch} (its "
                                       f"weights diverged); lower the learning rate")
        truth = self.data.labels[indices]
        metrics = multilabel_metrics(truth, probs, self.thresholds, self.data.label_names)
        logits = torch.as_tensor(probs, device=self.device).logit(eps=1e-6)  # loss weights live on the device
        targets = engine.targets_and_mask(torch.as_tensor(truth, device=self.device))
        metrics["loss"] = float(self.loss_fn(logits, *targets))
        return metrics


def fit(cfg: FitConfig, report: Report = _print_report, state: dict | None = None, log=print) -> dict:
    """Train; call `report(metrics, state)` after every epoch; return the last metrics.

    `report` must save `state` before returning: it holds the live model and optimiser tensors.
    `state` is a checkpoint dict from an earlier report: training resumes after its epoch.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest kernels once
    if state is not None and "final_metrics" in state:
        # restarted after its last report (a driver killed before Ray saved that the trial had ended):
        # nothing to train; report the end-of-trial result again so that it is not lost
        report(state["final_metrics"], state)
        return state["final_metrics"]
    run = _Run(cfg, log)
    if state is not None:
        run.restore(state)
    metrics: dict = {}
    while run.epoch < cfg.epochs and not (run.epoch and run.stopper.should_stop):
        metrics = run.train_epoch()
        done = run.epoch >= cfg.epochs or run.stopper.should_stop
        if not done:
            report(metrics, run.state())
            continue
        kept = half_precision(run.best_model)
        run.best_model = {k: v.to(run.best_model[k].dtype) for k, v in kept.items()}  # evaluated as it is kept
        final, predictions = final_evaluation(run)
        metrics.update(final, completed=True, stop_reason="early_stopping" if run.epoch < cfg.epochs else "epochs")
        # what is kept of a finished trial: only what predict and the report read (its best weights, the
        # predictions, and the manifest that sweeper.predict decodes new images with); not the optimiser's
        # moments and the last weights, three quarters of a training checkpoint
        report(metrics, {"config": run.config_dict(), "epoch": run.epoch, "best_model": kept,
                         "predictions": predictions, "final_metrics": metrics, "manifest": run.data.manifest})
    return metrics
