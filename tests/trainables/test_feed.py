"""Image feeds: resident and streamed give the same batches, several arrays index as one, and a
streaming reader's failure or an abandoned epoch neither hangs nor is lost."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from trainables.feed import ImageFeed

CPU = torch.device("cpu")


def _images(n, seed=0, dtype=np.uint8):
    top = 255 if dtype == np.uint8 else 65535
    return np.random.default_rng(seed).integers(0, top, (n, 8, 6), dtype=dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_streamed_and_resident_batches_are_identical_and_scaled_to_0_1(dtype, tmp_path):
    images = _images(23, dtype=dtype)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    order = np.random.default_rng(1).permutation(23)
    resident = list(ImageFeed(mapped, CPU, "resident").batches(order, 5))
    streamed = list(ImageFeed(mapped, CPU, "stream").batches(order, 5))
    assert [len(i) for _, i in streamed] == [5, 5, 5, 5, 3]
    for (a, ia), (b, ib) in zip(resident, streamed):
        assert torch.equal(a, b) and (ia == ib).all()
    top = 255.0 if dtype == np.uint8 else 65535.0
    x, idx = streamed[0]
    assert x.shape == (5, 1, 8, 6) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], torch.from_numpy(images[idx].astype(np.float32) / top))


@pytest.mark.parametrize("mode", ["resident", "stream"])
def test_several_arrays_are_indexed_as_one(mode):
    a, b = _images(4, 1), _images(6, 2)
    feed = ImageFeed([a, b], CPU, mode)
    assert len(feed) == 10
    (x, _), = feed.batches(np.array([9, 0, 4, 3]), 4)
    expected = np.stack([b[5], a[0], b[0], a[3]]).astype(np.float32) / 255
    assert torch.equal(x[:, 0], torch.from_numpy(expected))


class _Broken(np.ndarray):
    """An array whose rows cannot be read (a disk error in the middle of an epoch)."""

    def __getitem__(self, item):
        raise OSError("read error on images.npy")


def test_a_streaming_read_error_reaches_the_training_loop():
    images = np.zeros((3, 4, 4), np.uint8)
    feed = ImageFeed([images, images.view(_Broken)], CPU, "stream")
    with pytest.raises(OSError, match="read error on images.npy"):
        list(feed.batches(np.array([0, 1, 4, 5]), 2))


def test_abandoning_a_streamed_epoch_stops_its_reader():
    feed = ImageFeed(_images(200), CPU, "stream")
    before = threading.active_count()
    batches = feed.batches(np.arange(200), 2)
    next(batches)
    batches.close()  # e.g. the trial raised NonFiniteLoss mid-epoch
    assert threading.active_count() == before


def test_unknown_feed_lists_the_valid_ones():
    with pytest.raises(ValueError, match="expected one of .*stream"):
        ImageFeed(_images(2), CPU, "mmap")
