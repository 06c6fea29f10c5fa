"""The CUDA paths of the training core: bf16 autocast, channels_last, the resident uint8 target set,
pinned streaming, exact resume on the device. Skipped on machines without a GPU (CI); run on a
lent GPU machine with `python -m pytest tests/trainables/test_cuda.py`."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.helpers import fit_config
from trainables import engine
from trainables.feed import ImageFeed
from trainables.fit import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda") if torch.cuda.is_available() else None


def _run(cfg, **kwargs):
    reports = []
    fit(cfg, report=lambda m, s: reports.append((m, copy.deepcopy(s))), log=lambda *_: None, **kwargs)
    return reports


def _config(prepared_dir, **overrides):
    return fit_config(prepared_dir, **{"epochs": 2, "device": "cuda", "augment": {}, "threads": None, **overrides})


def test_auto_precision_is_bf16_or_fp16_with_a_scaler():
    precision = engine.Precision.choose("auto", CUDA)
    assert precision.channels_last
    assert precision.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert precision.scaler().is_enabled() == (precision.dtype == torch.float16)


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121", "mobilenet_v3_small", "alexnet_style"])
def test_fit_trains_on_the_gpu_with_finite_losses(prepared_dir, backbone):
    final = _run(_config(prepared_dir, backbone=backbone))[-1][0]
    assert np.isfinite(final["train_loss"]) and np.isfinite(final["test_auc"])  # NaN: a broken path


def test_the_target_set_is_resident_on_the_gpu_as_stored(prepared_dir):
    from data_prep.dataset import PreparedDataset

    images = PreparedDataset(prepared_dir).images
    feed = ImageFeed(images, CUDA)
    assert feed.resident and feed.stored.is_cuda and feed.stored.dtype == torch.uint8


def test_pinned_streaming_gives_the_resident_batches(prepared_dir):
    from data_prep.dataset import PreparedDataset

    images = PreparedDataset(prepared_dir).images
    order = np.random.default_rng(0).permutation(len(images))
    resident = [x for x, _ in ImageFeed(images, CUDA, "resident").batches(order, 7)]
    streamed = [x for x, _ in ImageFeed(images, CUDA, "stream").batches(order, 7)]
    assert all(a.is_cuda and torch.equal(a, b) for a, b in zip(resident, streamed))


def test_resume_on_the_gpu_matches_the_uninterrupted_run(prepared_dir):
    cfg = _config(prepared_dir, epochs=3, precision="fp32")
    torch.backends.cudnn.deterministic = True
    try:
        uninterrupted = _run(cfg)
        resumed = _run(cfg, state=uninterrupted[0][1])
    finally:
        torch.backends.cudnn.deterministic = False
    assert resumed[-1][0]["test_auc"] == pytest.approx(uninterrupted[-1][0]["test_auc"], abs=1e-6)
