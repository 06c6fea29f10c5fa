"""Pretraining stages on source data sets, each run once and cached under a content hash.

- regular: the branch trains on the sources one after another (ImageNet -> CheXpert -> NIH);
  every prefix of the chain is its own cached stage, so chains that share a start share it.
- co-trained: the branch trains on all sources at once, one head per source, and the loss
  is masked where a label does not exist in an image's source or is unknown (U-Ignore).

The first trial that needs a stage trains it under a file lock; the others wait and load it.
The cached file holds the branch's state dict (trunk, pooling and input adapter), loaded
with `strict=True` and `weights_only=True`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from data_prep.dataset import PreparedDataset, read_manifest
from data_prep.node_copy import node_local
from trainables import engine
from trainables.feed import ImageFeed
from trainables.losses import make_loss
from trainables.metrics import multilabel_metrics
from trainables.models import Branch, MultiSourceClassifier, build_branch
from vocab.errors import CxrSweepError

STRATEGIES = ("regular", "mixed", "co_trained")


@dataclass(frozen=True)
class Stage:
    backbone: str
    init: str
    strategy: str  # "regular" (sources in sequence) or "co_trained" (sources jointly)
    sources: tuple[str, ...]  # prepared data set directories
    epochs: int
    lr: float
    batch_size: int
    loss: str
    seed: int


def stage_key(stage: Stage, source_ids: list[str]) -> str:
    spec = {**asdict(stage), "sources": source_ids}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _check_sizes(sets: list[PreparedDataset]) -> None:
    sizes = {d.root.name: d.images.shape[1:] for d in sets}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"co-trained sources must share one image size; got {sizes}")


def _union_labels(sets: list[PreparedDataset], offsets: np.ndarray) -> tuple[list[str], list[list[int]], np.ndarray]:
    """Union label names, each source's columns in it, and all labels (NaN where a source lacks one)."""
    names = list(dict.fromkeys(n for d in sets for n in d.label_names))
    columns = [[names.index(n) for n in d.label_names] for d in sets]
    labels = np.full((offsets[-1], len(names)), np.nan, np.float32)
    for d, cols, start in zip(sets, columns, offsets):
        labels[start:start + len(d.labels), cols] = d.labels
    return names, columns, labels


def _train(stage: Stage, branch: Branch, sets: list[PreparedDataset], device: torch.device, log,
           partial: Path | None = None) -> None:
    """Train `branch` (with throwaway heads, one per source) on `sets` jointly for the stage's epochs.

    After every epoch the whole training state goes to `partial` (written whole, then renamed); a stage
    that finds one (its process was killed, or it failed and the sweep was run again) continues after
    that epoch instead of starting again: a CheXpert stage at 512 px is hours of GPU time."""
    feed = ImageFeed([d.images for d in sets], device)
    offsets = feed.offsets  # where each source's rows start in the joint index
    names, columns, labels = _union_labels(sets, offsets)
    model = MultiSourceClassifier(branch, columns, len(names), dropout=0.0).to(device)
    splits = [d.all_for_training(seed=stage.seed) for d in sets]
    train = np.concatenate([start + split.train for start, split in zip(offsets, splits)])
    val = np.concatenate([start + split.val for start, split in zip(offsets, splits)])
    source_of = torch.as_tensor(np.repeat(np.arange(len(sets)), np.diff(offsets)), device=device)
    trainer = engine.Trainer(model, feed, labels, train, make_loss(stage.loss, labels[train], device), stage.lr,
                             stage.batch_size, engine.Precision.choose("auto", device), stage.seed,
                             source_of=source_of)
    if partial is not None and partial.is_file():
        trainer.restore(torch.load(partial, weights_only=True, map_location="cpu"))
        log(f"[pretrain]   resuming after epoch {trainer.epoch}/{stage.epochs} ({partial.name})")
    while trainer.epoch < stage.epochs:
        loss = trainer.train_epoch()
        auc = multilabel_metrics(labels[val], trainer.predict(val))["auc"]
        log(f"[pretrain]   epoch {trainer.epoch}/{stage.epochs}: train loss {loss:.4f}, validation AUC {auc:.3f}")
        if partial is not None and trainer.epoch < stage.epochs:
            tmp = partial.with_suffix(".partial-tmp")
            torch.save(trainer.state(), tmp)
            os.replace(tmp, partial)


def chain_prefix(stage: Stage) -> Stage | None:
    """A regular chain's prefix (the chain without its last source) is a stage of its own, cached and
    shared by every chain that starts the same way; None for a single source or a co-trained stage."""
    if stage.strategy != "regular" or len(stage.sources) < 2:
        return None
    return replace(stage, sources=stage.sources[:-1])


def trained_sources(stage: Stage) -> tuple[str, ...]:
    """What the stage itself trains on: a regular chain's last source (its prefix did the rest), or
    every source at once (co-trained)."""
    return stage.sources[-1:] if stage.strategy == "regular" else stage.sources


class StageFailed(CxrSweepError, RuntimeError):
    """A pretraining stage failed earlier in this sweep; its error is in the `.failed` file beside it."""


def stage_path(stage: Stage, cache_dir: Path) -> Path:
    """Where the stage's weights are (or will be): named by backbone, strategy, sources and content hash."""
    manifests = [read_manifest(s) for s in stage.sources]  # not the tables: trials call this at start
    key = stage_key(stage, [m["dataset_id"] for m in manifests])
    tag = "+".join(m["name"] for m in manifests)
    return Path(cache_dir) / f"{stage.backbone}-{stage.strategy}-{tag}-{key}.pt"


def failure_marker(path: Path) -> Path:
    return path.with_suffix(".failed")


def partial_path(path: Path) -> Path:
    """The training state of an unfinished stage, after its last completed epoch."""
    return path.with_suffix(".partial")


def ensure_stage(stage: Stage, cache_dir: Path, device: torch.device, log=print) -> Path:
    """Path of the stage's branch weights, training them (and any earlier stage) first if needed.

    A failure is written beside the weights (`.failed`), so trials waiting for the stage fail
    at once with its error instead of training it again; the sweeper clears it on the next run.
    """
    path = stage_path(stage, cache_dir)
    if failure_marker(path).is_file():
        raise StageFailed(f"pretraining stage {path.name} failed: {failure_marker(path).read_text()[-2000:]}")
    try:
        return _ensure_stage(stage, path, cache_dir, device, log)
    except Exception as exc:
        if not path.is_file():
            failure_marker(path).write_text(f"{type(exc).__name__}: {exc}")
        raise


def _ensure_stage(stage: Stage, path: Path, cache_dir: Path, device: torch.device, log) -> Path:
    if path.is_file():  # cached: no data set, prefix stage or lock to touch
        return path
    prefix = chain_prefix(stage)
    previous = ensure_stage(prefix, cache_dir, device, log) if prefix is not None else None
    key = path.stem.rsplit("-", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return path
        trained_on = [PreparedDataset(node_local(s, log=log)) for s in trained_sources(stage)]  # data_prep.node_copy
        if stage.strategy == "co_trained":
            _check_sizes(trained_on)
        log(f"[pretrain] {stage.backbone} ({stage.init}) on {'+'.join(d.manifest['name'] for d in trained_on)} "
            f"for {stage.epochs} epoch(s) -> {path.name}")
        with torch.random.fork_rng():  # the caller's random state is the same whether or not we train
            torch.manual_seed(stage.seed)
            branch = build_branch(stage.backbone, stage.init)
            if previous is not None:
                load_branch(branch, previous)
            _train(stage, branch, trained_on, device, log, partial_path(path))
        tmp = path.with_suffix(".tmp")
        torch.save({"branch": branch.state_dict(), "key": key, "stage": asdict(stage)}, tmp)
        os.replace(tmp, path)
        partial_path(path).unlink(missing_ok=True)
    return path


def load_branch(branch: Branch, path: Path) -> None:
    """Load a cached stage into `branch`: strict, and without running pickled code."""
    state = torch.load(path, weights_only=True, map_location="cpu")
    branch.load_state_dict(state["branch"], strict=True)
