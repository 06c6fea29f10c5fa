"""Learning-rate schedules and early stopping, both stepped once per epoch on inner validation.

Seed 000 uses "a learning rate scheduler to speed up convergence" without saying which;
reduce-on-plateau of the validation AUC is the default, cosine annealing over the planned
epochs the option. Both keep their state in `state_dict()` for exact resume.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

SCHEDULES = ("plateau", "cosine", "constant")


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int, patience: int = 2, factor: float = 0.1):
    """The named per-epoch schedule; `step(val_auc)` after each epoch."""
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=patience)
    if name == "cosine":
        return _IgnoringMetric(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1)))
    if name == "constant":
        return _IgnoringMetric(torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0))
    raise ValueError(f"unknown learning-rate schedule {name!r}; expected one of {SCHEDULES}")


class _IgnoringMetric:
    """Lets every schedule be stepped as `step(val_auc)`."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def step(self, metric: float | None = None) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


@dataclass
class EarlyStopping:
    """Stop when validation AUC has not improved by `min_delta` for `patience` epochs (0: never)."""

    patience: int = 0
    min_delta: float = 0.0
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, epoch: int, value: float) -> bool:
        """Record this epoch; True when it is the new best. NaN never improves."""
        if value > self.best + self.min_delta or (self.best_epoch == 0 and not math.isnan(value)):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
