"""What one fit is told: the one typed contract between a spec, a trial and a checkpoint.

`TrainSettings` are what a spec's [train] table and its grid axes set, `RecipeSettings` what a
spec's recipe sets, and `FitConfig` is both plus what the sweep fills in (the data, backbone and
fold, the searched lr and dropout, the resources). The spec's tables derive from the first two
(sweeper.spec), so each field, default, range and description is written once. Every model is
strict: a key it does not know is an error naming it, never silently dropped. `TrialMetadata` is
what a trial carries beside its FitConfig for the sweeper's bookkeeping.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.augment import AugmentConfig
from trainables.engine import PRECISIONS, RECALIBRATION_IMAGES
from trainables.losses import LOSSES
from trainables.models import INITS
from trainables.pretrain import STRATEGIES, Stage
from trainables.recipe import check_recipe
from trainables.schedule import SCHEDULES
from vocab.errors import CxrSweepError

FEEDS = ("auto", "resident", "stream")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSettings(Strict):
    """How a cell trains: a spec's [train] table; each field can also be a grid axis."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=2)
    loss: Literal[LOSSES] = "bce"  # type: ignore[valid-type]
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the outer training part held out for "
                                                             "tuning (inner validation)")
    schedule: Literal[SCHEDULES] = "plateau"  # type: ignore[valid-type]
    schedule_patience: int = Field(2, ge=0, description="plateau: epochs without improvement before the rate drops")
    early_stopping: int = Field(0, ge=0, description="epochs without validation improvement before stopping; 0: never")
    precision: Literal[PRECISIONS] = "auto"  # type: ignore[valid-type]
    input_size: int | None = Field(None, ge=16, description="the side the model sees, resized from data.size on "
                                                           "the device; a grid axis gives each backbone its own")
    augment: dict[str, Any] | None = Field(
        None, description="trainables.augment.AugmentConfig fields ({} for its defaults); absent: no augmentation")
    seed: int = 0

    @field_validator("augment")
    @classmethod
    def _augment(cls, value):
        if value is not None:
            known = [f.name for f in fields(AugmentConfig)]
            unknown = sorted(set(value) - set(known))
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; expected any of {known}")
            AugmentConfig(**value)  # its own range checks, with the field named
        return value


class RecipeSettings(Strict):
    """Where a cell's weights start and how its pretraining runs: a spec's recipe (less its source names)."""

    init: Literal[INITS] = "scratch"  # type: ignore[valid-type]
    strategy: Literal[STRATEGIES] = "regular"  # type: ignore[valid-type]
    pretrain_init: Literal[INITS] | None = Field(  # type: ignore[valid-type]
        None, description="mixed only: the init of the pretrained branch (default: init)")
    pretrain_epochs: int = Field(2, ge=1)
    pretrain_lr: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _pretrain_init_is_for_mixed(self):
        if self.pretrain_init is not None and self.strategy != "mixed":
            raise ValueError("pretrain_init is for strategy 'mixed' (the pretrained branch's init); "
                             "regular and co_trained recipes pretrain from init")
        return self


class FitConfig(TrainSettings, RecipeSettings):
    """One fit of one (backbone, recipe, outer fold, hyperparameters)."""

    data_dir: str
    backbone: str
    outer_fold: int = Field(ge=0)
    lr: float = Field(1e-3, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    pretrain_dirs: tuple[str, ...] = Field((), description="prepared source data sets, in order")
    pretrain_cache: str | None = None
    bn_recalibration: int = Field(RECALIBRATION_IMAGES, ge=0, description="training images that re-estimate "
                                                                         "batch norm before evaluating; 0: off")
    threads: int | None = Field(None, ge=1)
    device: str = "auto"
    feed: Literal[FEEDS] = "auto"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _sources_fit_the_strategy(self):
        check_recipe(self.strategy, self.pretrain_dirs)
        return self

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_problems("FitConfig", exc)) from None

    def stage(self) -> Stage | None:
        if not self.pretrain_dirs:
            return None
        strategy = "co_trained" if self.strategy == "co_trained" else "regular"
        return Stage(self.backbone, self.pretrain_init or self.init, strategy, self.pretrain_dirs,
                     self.pretrain_epochs, self.pretrain_lr, self.batch_size, self.loss, self.seed)

    def as_dict(self) -> dict:
        """Plain values (lists, not tuples): what a checkpoint stores and `fit_config` reads back."""
        return {**self.model_dump(), "pretrain_dirs": list(self.pretrain_dirs)}


class TrialMetadata(Strict):
    """What a trial config holds beside its FitConfig: the cell and study it belongs to (read by the
    sweeper's searcher, scheduler and callbacks) and how often the Ray adapter checkpoints."""

    recipe: str
    variant: str = ""
    study: str
    optuna_number: int | None = None  # set by the searcher when it asks Optuna
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (the last epoch always has one); "
                                                      "a retried trial redoes the epochs since its last")


METADATA_FIELDS = tuple(TrialMetadata.model_fields)


class ConfigError(CxrSweepError, ValueError):
    """A config that FitConfig or TrialMetadata does not accept, every bad key named."""


def fit_config(config: dict) -> FitConfig:
    """The FitConfig of a trial config (or of a checkpoint's config). A key that is neither a FitConfig
    field nor trial metadata is an error naming it: training would otherwise ignore it without a word."""
    return FitConfig(**{k: v for k, v in config.items() if k not in METADATA_FIELDS})


def trial_metadata(config: dict) -> TrialMetadata:
    """The sweeper's bookkeeping of a trial config (its FitConfig fields left aside)."""
    try:
        return TrialMetadata.model_validate({k: v for k, v in config.items() if k in METADATA_FIELDS})
    except ValidationError as exc:
        raise ConfigError(_problems("trial metadata", exc)) from None


def _problems(what: str, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(config)"
        if error["type"] == "extra_forbidden":
            lines.append(f"{key}: neither a FitConfig field (trainables/config.py) nor trial metadata "
                         f"{list(METADATA_FIELDS)}; training would ignore it")
        elif error["type"] == "literal_error":
            lines.append(f"{key}: {error['input']!r} is not valid; expected one of {error['ctx']['expected']}")
        else:
            lines.append(f"{key}: {error['msg']}")
    return f"{what}: " + "; ".join(lines)
