"""Reading side of a prepared data set: what trainables may import from data_prep."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.errors import DataPrepError
from data_prep.folds import inner_split
from data_prep.labelset import age_band
from data_prep.table_layout import TEXT


@dataclass(frozen=True)
class Split:
    """Image indices of one outer fold: train and val come from the outer training part."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def read_manifest(root: Path | str) -> dict:
    """A prepared data set's manifest alone (ids, names, parameters), without loading its tables."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise DataPrepError(f"{root} is not a prepared data set (no manifest.json); build it with data_prep.build")
    return json.loads(path.read_text())


class PreparedDataset:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.label_names: list[str] = self.manifest["label_names"]
        table = pd.read_csv(self.root / "labels.csv", dtype={c: str for c in TEXT},
                            keep_default_na=False, na_values={n: [""] for n in self.label_names})
        folds = pd.read_csv(self.root / "folds.csv", dtype={"image_key": str, "split": str})
        self.images = np.load(self.root / "images.npy", mmap_mode="r")
        size = self.manifest["size"]
        if self.images.shape != (len(table), size, size) or not table["image_key"].equals(folds["image_key"]):
            raise DataPrepError(f"{self.root}: images.npy {self.images.shape}, labels.csv ({len(table)} rows) and "
                                f"folds.csv disagree; expected ({len(table)}, {size}, {size}) with matching keys")
        self.image_keys = table["image_key"].to_numpy()
        self.patient_keys = table["patient_key"].to_numpy()
        self.labels = table[self.label_names].to_numpy(np.float32)  # NaN = masked (unknown)
        self.folds = folds["fold"].to_numpy()
        self.holdout = folds["split"].to_numpy() if "split" in folds else None  # train / val / test
        self._table = table

    def groups(self) -> pd.DataFrame:
        """Each image's subgroups for fairness results: `image_key`, `sex` (M, F), `age_band` (data_prep's
        AGE_BANDS, never the age itself) and `view` (PA, AP, ...); "" where unknown."""
        table = self._table
        column = lambda name: table[name].fillna("").astype(str) if name in table else pd.Series("", table.index)  # noqa: E731
        return pd.DataFrame({"image_key": table["image_key"].astype(str), "sex": column("sex"),
                             "age_band": [age_band(v) for v in column("age")], "view": column("view").str[:64]})

    @property
    def dataset_id(self) -> str:
        return self.manifest["dataset_id"]

    @property
    def num_folds(self) -> int:
        return int(self.manifest["params"]["folds"])

    @property
    def split_name(self) -> str:
        """How its test parts were chosen: random (patient-grouped folds), holdout or official (the source's own)."""
        params = self.manifest["params"]
        return "official" if params.get("split") == "official" else "holdout" if params.get("holdout") else "random"

    @property
    def folds_sha256(self) -> str:
        """The SHA-256 of folds.csv: two results share their test parts only when this agrees."""
        return hashlib.sha256((self.root / "folds.csv").read_bytes()).hexdigest()

    @property
    def is_holdout(self) -> bool:
        """Built with one fixed train/val/test split (seed 003) rather than K folds."""
        return self.holdout is not None

    def split(self, outer_fold: int, val_fraction: float = 0.2, seed: int = 0) -> Split:
        """Outer test fold, plus a patient-grouped inner validation split of the rest."""
        if not 0 <= outer_fold < self.num_folds:
            raise DataPrepError(f"outer fold {outer_fold} does not exist; {self.root.name} has folds 0..{self.num_folds - 1}")
        if self.is_holdout:  # the split is part of the data set; val_fraction does not apply
            return Split(*(np.flatnonzero(self.holdout == part) for part in ("train", "val", "test")))
        test = np.flatnonzero(self.folds == outer_fold)
        train, val = inner_split(self.patient_keys, self.labels, np.flatnonzero(self.folds != outer_fold),
                                 val_fraction, seed)
        return Split(train=train, val=val, test=test)

    def all_for_training(self, val_fraction: float = 0.1, seed: int = 0) -> Split:
        """Every image for a pretraining stage: no test part, a small validation split."""
        train, val = inner_split(self.patient_keys, self.labels, np.arange(len(self.labels)), val_fraction, seed)
        return Split(train=train, val=val, test=np.empty(0, np.int64))
