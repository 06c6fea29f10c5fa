"""Regular-transfer pretraining on a source data set, run once and cached by content hash.

The first trial that needs a (backbone, source, settings) checkpoint trains it under a file
lock; the others wait for it and load it. Trials that need no pretraining never touch it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from data_prep.dataset import PreparedDataset
from trainables import engine
from trainables.losses import make_loss
from trainables.models import build_model


def pretrain_key(backbone: str, init: str, source: PreparedDataset, epochs: int, lr: float,
                 batch_size: int, seed: int) -> str:
    spec = {"backbone": backbone, "init": init, "source": source.dataset_id, "epochs": epochs,
            "lr": lr, "batch_size": batch_size, "seed": seed}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def ensure_pretrained(cache_dir: Path, backbone: str, init: str, source_dir: str, epochs: int, lr: float,
                      batch_size: int, seed: int, device: torch.device, log=print) -> Path:
    """Path of the pretrained trunk weights, training them first if no one has yet."""
    source = PreparedDataset(source_dir)
    key = pretrain_key(backbone, init, source, epochs, lr, batch_size, seed)
    path = Path(cache_dir) / f"{backbone}-{source.manifest['name']}-{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return path
        log(f"[pretrain] {backbone} on {source.manifest['name']} for {epochs} epochs -> {path.name}")
        torch.manual_seed(seed)
        model = build_model(backbone, len(source.label_names), dropout=0.0, init=init).to(device)
        split = source.all_for_training(seed=seed)
        images = torch.from_numpy(np.array(source.images))
        loss_fn = make_loss("bce", source.labels[split.train], device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            engine.train_one_epoch(model, loss_fn, optimizer, images, source.labels, split.train,
                                   batch_size, device, generator)
        tmp = path.with_suffix(".tmp")
        torch.save({"trunk": model.trunk.state_dict(), "key": key}, tmp)
        os.replace(tmp, path)
    return path
