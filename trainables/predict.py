"""Apply a trained trial to new images, exactly as it was evaluated.

The model is rebuilt from the trial's final checkpoint (its configuration and its best-on-
validation weights; no pretrained weights are needed). Images are decoded and resized by
data_prep's own decoder with the size and bit depth of the data set the model was trained on,
read from that data set's manifest (stored in the checkpoint), then fed through the same feed,
precision and batching as the trial's own evaluation. Test-time augmentation (`tta="hflip"`) averages
each image's probabilities with those of its mirror image.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from data_prep.dataset import PreparedDataset
from data_prep.decode import DTYPES, decoded
from trainables import engine
from trainables.config import FitConfig, fit_config
from trainables.feed import ImageFeed, to_unit
from trainables.fit import choose_device
from trainables.models import Classifier
from trainables.recipe import recipe_architecture
from trainables.tune_adapter import STATE_FILE
from vocab.errors import CxrSweepError
from vocab.names import TTA

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}


class HorizontalFlip(torch.nn.Module):
    """A model applied to the mirror image of its input (left and right swapped)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, *rest) -> torch.Tensor:
        return self.model(torch.flip(x, dims=[-1]), *rest)


class PredictError(CxrSweepError):
    """A model or input that cannot be used; the message says which and why."""


def _thresholds(final_metrics: dict, n_labels: int, source: str) -> np.ndarray:
    """The fitted thresholds of a final checkpoint's TrialResult, read alone: a model needs nothing else of it,
    and checkpoints of earlier versions hold other metrics than today's record (`val_hamming`; before schema 7
    no `val_fnr`), which would refuse them."""
    thresholds = np.asarray(final_metrics.get("thresholds", ()), dtype=np.float64)
    if thresholds.shape != (n_labels,):
        raise PredictError(f"{source}: its result holds {thresholds.size} fitted thresholds for {n_labels} labels")
    return thresholds


class Prediction(NamedTuple):
    path: Path
    probs: np.ndarray | None  # one per label; None: the file was rejected
    reason: str | None  # data_prep's reason for a rejected file
    image: np.ndarray | None  # as decoded and resized (the data set's dtype), for explanations


@dataclass
class TrainedModel:
    model: Classifier
    config: FitConfig
    label_names: list[str]
    thresholds: np.ndarray  # fitted on the trial's training labels; a label is predicted above it
    size: int  # the prepared data set's side in pixels
    bits: int  # and its bits per pixel
    device: torch.device
    precision: engine.Precision

    @classmethod
    def from_state(cls, state: dict, device: str = "auto", source: str = "checkpoint") -> "TrainedModel":
        """From the training state of a completed trial's final checkpoint."""
        if not {"final_metrics", "best_model", "manifest"} <= set(state):
            raise PredictError(f"{source} is not the final checkpoint of a completed trial (no final evaluation)")
        cfg = fit_config(state["config"])
        manifest = state["manifest"]  # of the data set it was trained on: label names, size and bits
        label_names = list(manifest["label_names"])
        model = recipe_architecture(cfg.backbone, cfg.init, cfg.strategy, cfg.stage(), len(label_names), cfg.dropout,
                                    cfg.input_size)
        model.load_state_dict(state["best_model"], strict=True)
        chosen = choose_device(device)
        return cls(model=model.to(chosen).eval(), config=cfg, label_names=label_names,
                   thresholds=_thresholds(state["final_metrics"], len(label_names), source),
                   size=int(manifest["size"]), bits=int(manifest["params"]["bits"]), device=chosen,
                   precision=engine.Precision.choose(cfg.precision, chosen))

    @classmethod
    def load(cls, data: bytes | Path, device: str = "auto", source: str | None = None) -> "TrainedModel":
        """From a checkpoint directory, or the bytes of its state file (read from remote storage)."""
        if isinstance(data, Path):
            source = source or str(data)
            path = data / STATE_FILE if data.is_dir() else data
            if not path.is_file():
                raise PredictError(f"no checkpoint at {path}; was the sweep's storage moved or deleted?")
            data = path.read_bytes()
        try:
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - truncated, not ours: one clear message
            raise PredictError(f"{source}: cannot read the checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from exc
        return cls.from_state(state, device, source or "checkpoint")

    def predict(self, paths: list[Path], batch_size: int = 64, workers: int | None = None,
                tta: str = "none") -> Iterator[Prediction]:
        """A Prediction per file, in order (a rejected one with data_prep's reason), decoded on `workers`
        processes and predicted `batch_size` at a time."""
        workers = workers if workers is not None else max(1, (os.cpu_count() or 1) - 1)
        pending: list[tuple[Path, np.ndarray | None, str | None]] = []
        results = decoded(list(paths), self.size, workers, self.bits)
        for path, result in zip(paths, results):  # nothing from a header is used
            pending.append((path, result.pixels, result.reason))
            if sum(image is not None for _, image, _ in pending) == batch_size:
                yield from self._batch(pending, tta)
                pending = []
        yield from self._batch(pending, tta)

    def probabilities(self, images: np.ndarray, tta: str = "none", batch_size: int = 64) -> np.ndarray:
        """(images x labels) probabilities of decoded images (the data set's size and dtype), through the
        trial's own evaluation path; with tta="hflip", the mean with those of the mirror images."""
        if tta not in TTA:
            raise PredictError(f"unknown test-time augmentation {tta!r}; expected one of {', '.join(TTA)}")
        feed = ImageFeed(images, self.device)
        indices = np.arange(len(images))
        probs = engine.predict(self.model, feed, indices, batch_size, self.precision)
        if tta == "hflip":
            probs = (probs + engine.predict(HorizontalFlip(self.model), feed, indices, batch_size, self.precision)) / 2
        return probs

    def predict_prepared(self, data: PreparedDataset, tta: str = "none", batch_size: int = 64) -> np.ndarray:
        """Probabilities of every image of a prepared data set (an external test set), which must have been
        built at this model's size and bit depth: its pixels are then what the model's own test fold had."""
        size, bits = int(data.manifest["size"]), int(data.manifest["params"]["bits"])
        if (size, bits) != (self.size, self.bits):
            raise PredictError(f"{data.root}: prepared at {size} px, {bits}-bit, but the model was trained at "
                               f"{self.size} px, {self.bits}-bit; build the set again with --size {self.size} "
                               f"--bits {self.bits}")
        return self.probabilities(data.images, tta, batch_size)

    def _batch(self, pending: list[tuple[Path, np.ndarray | None, str | None]], tta: str = "none"):
        decodable = [image for _, image, _ in pending if image is not None]
        probs = iter([])
        if decodable:
            images = np.stack(decodable).astype(DTYPES[self.bits], copy=False)
            probs = iter(self.probabilities(images, tta, len(images)))
        for path, image, reason in pending:
            yield Prediction(path, next(probs), None, image) if image is not None else Prediction(path, None, reason, None)

    def tensor(self, image: np.ndarray) -> torch.Tensor:
        """One decoded image as the model's input (1, 1, H, W) on its device, scaled as in training."""
        return to_unit(torch.from_numpy(np.array(image))[None]).to(self.device)  # a copy: images may be read-only


def image_files(inputs: list[Path]) -> list[Path]:
    """Files as given, and the image files under folders (DICOM, PNG, JPG; DICOM often has no suffix),
    sorted; a path that does not exist is an error naming it."""
    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith(".")
                            and (p.suffix.lower() in IMAGE_SUFFIXES or not p.suffix))
        elif item.is_file():
            found.append(item)
        else:
            raise PredictError(f"{item}: no such file or folder")
    return found
