"""Run `fit` as a Ray Tune function trainable: report every epoch with a checkpoint,
and resume from the last checkpoint when Ray restarts the trial."""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from trainables.fit import FitConfig, fit

STATE_FILE = "state.pt"
_FIELDS = {f.name for f in dataclasses.fields(FitConfig)}


def fit_config(config: dict) -> FitConfig:
    """The FitConfig part of a trial config (the sweeper adds bookkeeping keys of its own)."""
    return FitConfig(**{k: v for k, v in config.items() if k in _FIELDS})


def _report(metrics: dict, state: dict) -> None:
    node = ray.get_runtime_context().get_node_id()  # which machine ran it: Ray's results name the IP only
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state, Path(tmp) / STATE_FILE)
        tune.report({**metrics, "node_id": node}, checkpoint=tune.Checkpoint.from_directory(tmp))


def tune_fit(config: dict) -> None:
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one line per checkpoint
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, weights_only=True, map_location="cpu")
    fit(fit_config(config), report=_report, state=state)
