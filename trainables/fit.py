"""One fit of one (backbone, recipe, outer fold, hyperparameters): a plain function.

Every epoch: train on the inner training part, evaluate the inner validation split, step
the learning-rate schedule and early stopping, and report with a checkpoint. Tuning only
ever looks at validation. When training ends (last epoch or early stop), the weights that
were best on validation are evaluated on the outer training part and the outer test fold;
that last report carries those metrics (`test_*`, `outer_train_*`) and the checkpoint
carries the per-image probabilities (`predictions`), so a scheduler that stops the trial
right after its last report loses nothing. Reports are built as typed records
(vocab.records: EpochReport, TrialResult, TrialPredictions) and handed on as their flat
`to_report()` form, which Ray needs: a metric missing or misnamed stops the trial here.
"""
from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision

from data_prep.dataset import PreparedDataset
from data_prep.node_copy import node_local
from trainables import engine
from trainables.augment import AugmentConfig, BatchAugment
from trainables.config import FitConfig
from trainables.feed import ImageFeed
from trainables.losses import make_loss
from trainables.metrics import fitted_thresholds, multilabel_metrics, split_metrics
from trainables.pretrain import stage_path
from trainables.recipe import build_recipe_model
from trainables.schedule import EarlyStopping, make_scheduler
from vocab.metrics import EPOCH_METRICS
from vocab.names import FINAL_SPLITS, PREDICTION_SPLITS
from vocab.records import EpochReport, Runtime, SplitMetrics, TrialPredictions, TrialResult

Report = Callable[[dict, dict], None]  # (this epoch's EpochReport or the TrialResult, as its report; checkpoint state)


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


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _cpu_copy(model: torch.nn.Module) -> dict:
    """A snapshot of the weights that later steps do not change (and that GPU memory does not hold)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class _Run:
    """One fit: the shared training loop (`engine.Trainer`) with what fine-tuning adds to it, namely the
    learning-rate schedule, early stopping on validation AUC, the best weights so far, the metrics and
    the end-of-trial evaluation. `state()` / `restore()` are the checkpoint."""

    def __init__(self, cfg: FitConfig, log):
        self.cfg, device = cfg, choose_device(cfg.device)
        self.precision = engine.Precision.choose(cfg.precision, device)
        torch.manual_seed(cfg.seed)
        self.data = PreparedDataset(node_local(cfg.data_dir, log=log))  # a copy on this node's disk, if remote
        self.split = self.data.split(cfg.outer_fold, cfg.val_fraction, seed=cfg.seed)
        _require_defined_auc(self.data, self.split.val, cfg)
        cache = Path(cfg.pretrain_cache or Path(cfg.data_dir).parent / "pretrained")
        model = build_recipe_model(cfg.backbone, cfg.init, cfg.strategy, cfg.stage(), len(self.data.label_names),
                                   cfg.dropout, cache, device, log, cfg.input_size)
        model = model.to(device, memory_format=torch.channels_last if self.precision.channels_last
                         else torch.preserve_format)
        self.feed = ImageFeed(self.data.images, device, cfg.feed)
        self.loss_fn = make_loss(cfg.loss, self.data.labels[self.split.train], device)
        augment = BatchAugment(AugmentConfig(**cfg.augment)) if cfg.augment is not None else None
        self.trainer = engine.Trainer(model, self.feed, self.data.labels, self.split.train, self.loss_fn, cfg.lr,
                                      cfg.batch_size, self.precision, cfg.seed, augment,
                                      recalibration=cfg.bn_recalibration)
        self.scheduler = make_scheduler(cfg.schedule, self.trainer.optimizer, cfg.epochs, cfg.schedule_patience)
        self.stopper = EarlyStopping(patience=cfg.early_stopping)
        self.thresholds = fitted_thresholds(self.data.labels[self.split.train])
        self.best_model = _cpu_copy(model)

    @property
    def epoch(self) -> int:
        return self.trainer.epoch

    def runtime(self) -> Runtime:
        """What a re-run of this trial needs beyond its FitConfig to give the same predictions
        (sweeper.rerun): the threads and precision it computed with, the library versions, and the data
        and pretrained weights it read, by content."""
        stage, cache = self.cfg.stage(), Path(self.cfg.pretrain_cache or Path(self.cfg.data_dir).parent / "pretrained")
        return Runtime(threads=torch.get_num_threads(), device=str(self.precision.device),
                       precision=str(self.precision.dtype or torch.float32).removeprefix("torch."),
                       torch=str(torch.__version__), torchvision=str(torchvision.__version__), numpy=np.__version__,
                       dataset_id=self.data.dataset_id, folds_sha256=self.data.folds_sha256,
                       pretrained_sha256=_sha256(stage_path(stage, cache)) if stage else None)

    def state(self) -> dict:
        return {**self.trainer.state(), "scheduler": self.scheduler.state_dict(), "stopper": self.stopper.state_dict(),
                "best_model": self.best_model, "config": self.cfg.as_dict()}

    def restore(self, state: dict) -> None:
        self.trainer.restore(state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.stopper.load_state_dict(state["stopper"])
        self.best_model = state["best_model"]

    def train_epoch(self) -> EpochReport:
        started, waited = time.perf_counter(), self.feed.waited
        train_loss = self.trainer.train_epoch()
        trained = time.perf_counter() - started  # (with batch-norm recalibration)
        val = self.score(self.split.val, self.trainer.predict(self.split.val)).macro
        if self.stopper.update(self.epoch, val["auc"]):
            self.best_model = _cpu_copy(self.trainer.model)
        self.scheduler.step(val["auc"])
        return EpochReport(epoch=self.epoch, train_loss=train_loss, val={m: val[m] for m in EPOCH_METRICS},
                           lr=self.trainer.optimizer.param_groups[0]["lr"], best_epoch=self.stopper.best_epoch,
                           best_val_auc=self.stopper.best, epoch_seconds=time.perf_counter() - started,
                           train_images_per_second=len(self.split.train) / trained,
                           data_wait_seconds=self.feed.waited - waited)

    def score(self, indices: np.ndarray, probs: np.ndarray) -> SplitMetrics:
        if not np.isfinite(probs).all():  # diverged weights: a finite last-epoch loss can still end here
            raise engine.NonFiniteLoss(f"the model's predictions are not finite after epoch {self.epoch} (its "
                                       f"weights diverged); lower the learning rate")
        truth = self.data.labels[indices]
        metrics = multilabel_metrics(truth, probs, self.thresholds, self.data.label_names)
        logits = torch.as_tensor(probs, device=self.precision.device).logit(eps=1e-6)  # loss weights live there
        targets = engine.targets_and_mask(torch.as_tensor(truth, device=self.precision.device))
        metrics["loss"] = float(self.loss_fn(logits, *targets))
        return split_metrics(metrics)

    def final_evaluation(self, last: EpochReport, stop_reason: str) -> tuple[TrialResult, TrialPredictions]:
        """The trial's result (`last`, the epoch it stopped after, with the FINAL_SPLITS' metrics) and predictions
        of the best-on-validation weights (docs/design.md §3.2): per-image probabilities, truth and pseudonymous
        keys that the sweeper stores: the test fold's for curves and the patient-clustered bootstrap, the inner
        validation split's for operating points and calibration (fitted there, never on test). The outer
        training part is inner-train plus inner-validation: everything the trial saw.

        `best_val_auc` becomes the validation AUC of exactly these (kept, half-precision) weights, so that
        the trial selected on it is judged on the predictions its thresholds are fitted on; the epoch's
        full-precision value stays in the learning curve."""
        model = copy.deepcopy(self.trainer.model)
        model.load_state_dict(self.best_model, strict=True)
        parts = {"outer_train": np.sort(np.concatenate([self.split.train, self.split.val])), "test": self.split.test,
                 "val": self.split.val}
        splits, predicted, best_val_auc = {}, {}, last.best_val_auc
        for split in dict.fromkeys((*FINAL_SPLITS, *PREDICTION_SPLITS)):
            indices = parts[split]
            probs = self.trainer.predict(indices, model)
            if split in FINAL_SPLITS:
                splits[split] = self.score(indices, probs)
            if split == "val":  # what selection, Optuna and the stored validation predictions share
                best_val_auc = self.score(indices, probs).macro["auc"]
            if split in PREDICTION_SPLITS:
                predicted[split] = {"image_keys": [str(k) for k in self.data.image_keys[indices]],
                                    "patient_keys": [str(k) for k in self.data.patient_keys[indices]],
                                    "labels": self.data.labels[indices],  # NaN: unknown
                                    "probs": np.ascontiguousarray(probs, dtype=np.float32)}
        result = TrialResult(**{**dict(last), "best_val_auc": best_val_auc}, splits=splits, completed=True,
                             thresholds=[float(t) for t in self.thresholds], stop_reason=stop_reason)
        return result, TrialPredictions(label_names=list(self.data.label_names), best_epoch=self.stopper.best_epoch,
                                        runtime=self.runtime(), splits=predicted)


def fit(cfg: FitConfig, report: Report = _print_report, state: dict | None = None, log=print) -> dict:
    """Train; call `report(metrics, state)` after every epoch; return the last metrics. `metrics` is the epoch's
    EpochReport, or at the end the TrialResult, as its flat report (`to_report()`: what Ray is given).

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
        final = TrialResult.from_report(state["final_metrics"]).to_report()
        report(final, state)
        return final
    run = _Run(cfg, log)
    if state is not None:
        run.restore(state)
    metrics: dict = {}
    while run.epoch < cfg.epochs and not (run.epoch and run.stopper.should_stop):
        epoch = run.train_epoch()
        done = run.epoch >= cfg.epochs or run.stopper.should_stop
        if not done:
            metrics = epoch.to_report()
            report(metrics, run.state())
            continue
        kept = half_precision(run.best_model)
        run.best_model = {k: v.to(run.best_model[k].dtype) for k, v in kept.items()}  # evaluated as it is kept
        result, predictions = run.final_evaluation(epoch, "early_stopping" if run.epoch < cfg.epochs else "epochs")
        metrics = result.to_report()
        # what is kept of a finished trial: only what predict and the report read (its best weights, the
        # predictions, and the manifest that sweeper.predict decodes new images with); not the optimiser's
        # moments and the last weights, three quarters of a training checkpoint
        report(metrics, {"config": cfg.as_dict(), "epoch": run.epoch, "best_model": kept,
                         "predictions": predictions.to_state(torch.from_numpy), "final_metrics": metrics,
                         "manifest": run.data.manifest})
    return metrics
