"""Training and prediction over an `ImageFeed`: the functions, and `Trainer`, the loop state that
fine-tuning and pretraining share.

`Precision` bundles what the device allows: fp32 on the CPU; on CUDA bf16 autocast (no
scaler needed) or, on GPUs without bf16, fp16 autocast with a gradient scaler; and
channels_last. The loss is only read back to the host once per epoch, so the GPU is never
made to wait for the host inside an epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from trainables.feed import ImageFeed
from vocab.errors import CxrSweepError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RECALIBRATION_IMAGES = 2048  # training images that re-estimate batch-norm statistics before each evaluation


class NonFiniteLoss(CxrSweepError, RuntimeError):
    """The loss became NaN or infinite: the learning rate is too high or the data is broken."""


@dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: fp32

    @classmethod
    def choose(cls, name: str, device: torch.device) -> "Precision":
        if name not in PRECISIONS:
            raise ValueError(f"unknown precision {name!r}; expected one of {PRECISIONS}")
        if name == "auto":
            if device.type != "cuda":
                return cls(device, None)
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return cls(device, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name])

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


def adam(parameters, lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel: on the CPU the default per-tensor loop took 114 ms a step for
    resnet18 and the fused one 19 ms, half of a small trial's training time (BENCHMARKS.md)."""
    return torch.optim.Adam(parameters, lr=lr, fused=True)


def targets_and_mask(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """0/1 targets, and a 0/1 mask where labels are NaN (unknown, e.g. CheXpert U-Ignore); None if none are."""
    known = ~torch.isnan(labels)
    if bool(known.all()):
        return labels, None
    return torch.nan_to_num(labels, nan=0.0), known.float()


def _sources(source_of: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """The source number of each image of a batch (co-trained pretraining)."""
    return source_of[torch.as_tensor(idx, device=source_of.device)]


def _without_lone_last(indices: np.ndarray, batch_size: int) -> np.ndarray:
    """Drop a last batch of one image: batch norm cannot train on it (it is seen in another epoch)."""
    return indices[:-1] if len(indices) % batch_size == 1 and len(indices) > 1 else indices


def _forward(model, x: torch.Tensor, idx: np.ndarray, precision: Precision, source_of: torch.Tensor | None):
    with precision.autocast():
        if source_of is None:
            return model(precision.prepare(x)).float()
        return model(precision.prepare(x), _sources(source_of, idx)).float()


def train_one_epoch(model, loss_fn, optimizer, scaler, feed: ImageFeed, labels: torch.Tensor, indices: np.ndarray,
                    batch_size: int, precision: Precision, generator: torch.Generator, augment=None,
                    source_of: torch.Tensor | None = None) -> float:
    """Mean training loss; `labels` (all images, NaN = unknown) already on the device.

    `source_of` (co-trained pretraining): each image's source number, passed to the model.
    """
    model.train()
    order = _without_lone_last(indices[torch.randperm(len(indices), generator=generator).numpy()], batch_size)
    total = torch.zeros((), device=precision.device)
    for x, idx in feed.batches(order, batch_size):
        if augment is not None:
            x = augment(x, generator)
        y, mask = targets_and_mask(labels[torch.as_tensor(idx, device=labels.device)])
        loss = loss_fn(_forward(model, x, idx, precision, source_of), y, mask)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach() * len(idx)
    mean = total.item() / max(len(order), 1)
    if not math.isfinite(mean):
        raise NonFiniteLoss(f"training loss is {mean} in this epoch; lower the learning rate")
    return mean


def spread(indices: np.ndarray, n: int) -> np.ndarray:
    """Up to `n` of `indices`, evenly spaced: a fixed sample across the whole set (every source)."""
    if len(indices) <= n:
        return indices
    return indices[np.linspace(0, len(indices) - 1, n).astype(np.int64)]


def recalibrate_batch_norm(model, feed: ImageFeed, indices: np.ndarray, batch_size: int, precision: Precision,
                           source_of: torch.Tensor | None = None) -> None:
    """Replace every batch-norm layer's running statistics by their average over `indices` (precise BN).

    Running averages lag the weights: on short runs (and with MobileNetV3's momentum at any
    length) eval-mode activations shrink layer by layer until every image gets the same
    prediction. Like torch's `update_bn`, but each batch weighs by its images, not as one
    batch: a short last batch would otherwise count as much as a full one.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    indices = _without_lone_last(indices, batch_size)
    momenta, was_training = [m.momentum for m in layers], model.training
    for layer in layers:
        layer.reset_running_stats()
    forward = model if source_of is None else _WithSources(model, source_of)
    model.train()
    seen = 0
    with torch.no_grad(), precision.autocast():
        for x, idx in feed.batches(indices, batch_size):
            seen += len(idx)
            for layer in layers:  # running = old + n/seen * (batch - old): the average over every image so far
                layer.momentum = len(idx) / seen
            forward(precision.prepare(x) if source_of is None else (precision.prepare(x), idx))
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.train(was_training)


class _WithSources(torch.nn.Module):
    def __init__(self, model, source_of):
        super().__init__()
        self.model, self.source_of = model, source_of

    def forward(self, batch):
        x, idx = batch
        return self.model(x, _sources(self.source_of, idx))


@torch.no_grad()
def predict(model, feed: ImageFeed, indices: np.ndarray, batch_size: int, precision: Precision,
            source_of: torch.Tensor | None = None) -> np.ndarray:
    """Sigmoid probabilities (float32), one row per index, in `indices`' order."""
    model.eval()
    out = []
    for x, idx in feed.batches(indices, batch_size):
        out.append(torch.sigmoid(_forward(model, x, idx, precision, source_of)))
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), np.float32)


class Trainer:
    """One model's training, shared by fine-tuning (trainables.fit) and pretraining (trainables.pretrain):
    Adam, the precision and its gradient scaler, the seeded batch order and augmentation, an epoch
    (training, then batch-norm recalibration on a fixed sample of the training images), prediction, and
    the checkpoint of all of it, so that either resumes exactly after the last epoch it saved.

    `labels`: every image's labels (NaN: unknown); `train`: the indices it trains on; `source_of`
    (co-trained pretraining): each image's source number, passed to the model."""

    def __init__(self, model: torch.nn.Module, feed: ImageFeed, labels: np.ndarray, train: np.ndarray, loss_fn,
                 lr: float, batch_size: int, precision: Precision, seed: int, augment=None,
                 source_of: torch.Tensor | None = None, recalibration: int = RECALIBRATION_IMAGES):
        self.model, self.feed, self.train_indices, self.loss_fn = model, feed, train, loss_fn
        self.labels = torch.as_tensor(labels, device=precision.device)
        self.optimizer = adam(model.parameters(), lr)
        self.scaler, self.generator = precision.scaler(), torch.Generator().manual_seed(seed)
        self.batch_size, self.precision, self.augment, self.source_of = batch_size, precision, augment, source_of
        self.recalibration = recalibration
        self.epoch = 0

    def train_epoch(self) -> float:
        """One epoch; its mean training loss."""
        loss = train_one_epoch(self.model, self.loss_fn, self.optimizer, self.scaler, self.feed, self.labels,
                               self.train_indices, self.batch_size, self.precision, self.generator, self.augment,
                               self.source_of)
        self.epoch += 1
        if self.recalibration:
            recalibrate_batch_norm(self.model, self.feed, spread(self.train_indices, self.recalibration),
                                   self.batch_size, self.precision, self.source_of)
        return loss

    def predict(self, indices: np.ndarray, model: torch.nn.Module | None = None) -> np.ndarray:
        """Probabilities of `indices` by the model trained (or another of the same inputs, e.g. its best weights)."""
        return predict(self.model if model is None else model, self.feed, indices, self.batch_size, self.precision,
                       self.source_of)

    def state(self) -> dict:
        """The checkpoint: live tensors, to be saved before training goes on."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),  # dropout draws from the global generators
                "cuda_rng": torch.cuda.get_rng_state_all() if self.precision.device.type == "cuda" else []}

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and self.precision.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
