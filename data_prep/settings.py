"""How a prepared data set is built: one strict, frozen, typed model (`BuildSettings`) whose fields are the
build's settings wherever they are set. `cxr-sweep prepare` and `cxr-sweep folds` generate their flags from
it (vocab.cli), a spec's [data] and [data.prepare.NAME] tables take their fields from it (sweeper.spec), and
the builder reads it; so each setting has one name, one default, one range and one description, and
`hashed()` is what the prepared set's content address sees.

Every check of a single value is part of its type (an `Annotated` validator or constraint), not a
`field_validator` of the class, so that a table that takes the field (the spec's) takes its check with it.
"""
from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from data_prep.sources import SPLITS, SourceOptions, TargetOptions


def _percentages(value):
    """'60/20/20' (the command line's form) or three numbers (a spec's [60, 20, 20]), as three percentages."""
    parts = value.split("/") if isinstance(value, str) else value
    try:
        numbers = tuple(float(part) for part in parts)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or min(numbers) <= 0 or abs(sum(numbers) - 100) > 1e-6:
        raise ValueError(f"{value!r}: expected three positive percentages that sum to 100, like 60/20/20")
    return numbers


def _correlation(value):
    if value != "off" and not 0 < value <= 1:
        raise ValueError(f"{value}: expected a correlation in (0, 1], or 'off' to keep every film")
    return value


N, PX = {"metavar": "N"}, {"metavar": "PX"}  # how --help shows a flag's value
def known_keys(model: type[BaseModel], values):
    """`values` as given when every key is a field of `model`; else a ValueError naming the first unknown key and
    the fields there are (pydantic's own message names the key alone)."""
    unknown = sorted(set(values) - set(model.model_fields)) if isinstance(values, dict) else []
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown setting; expected any of {', '.join(model.model_fields)}")
    return values


Percentages = Annotated[tuple[float, float, float], BeforeValidator(_percentages)]
Correlation = Annotated[float | Literal["off"], AfterValidator(_correlation)]


class BuildSettings(BaseModel):
    """One prepared data set's build settings (its source kind's options in `source`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(512, ge=16, description="side of the prepared (square) images in pixels", json_schema_extra=PX)
    folds: int = Field(5, ge=2, description="patient-grouped outer folds", json_schema_extra=N)
    split: Literal[SPLITS] = Field(  # type: ignore[valid-type]
        "random", description="random: patient-grouped folds of the whole set; official: the source's own test "
                              "set as the test part of one fold (data-sets.md: Official splits)")
    holdout: Percentages | None = Field(
        None, description="one patient-grouped train/val/test split in percent instead of folds, e.g. 60/20/20 "
                          "(seed 003)", json_schema_extra={"metavar": "TRAIN/VAL/TEST"})
    seed: int = Field(0, description="seed of the folds or holdout split and of any sampling (NIH's undersampling)",
                      json_schema_extra=N)
    bits: Literal[8, 16] = Field(8, description="bits per prepared pixel")
    near_duplicates: Correlation = Field(
        0.9, description="fine-detail correlation at which two films count as one exposure filed twice ('off': "
                         "keep them all)", json_schema_extra={"metavar": "CORR|off"})
    allow_missing: bool = Field(False, description="build even when more than 1% of the listed images are not "
                                                   "found (the count goes into the manifest and the summary)")
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=0,
                         description="decoding processes, one per core unless told; 0 or 1 decodes in this process",
                         json_schema_extra=N)
    source: SourceOptions = Field(TargetOptions(), description="the source kind's options (data_prep.sources)")

    @model_validator(mode="before")
    @classmethod
    def _known(cls, values):
        return known_keys(cls, values)

    @model_validator(mode="after")
    def _one_kind_of_split(self):
        if self.split == "official" and self.holdout is not None:
            raise ValueError("split = 'official' and holdout exclude each other: the official split's test set is "
                             "the source's own; leave holdout out")
        return self

    @property
    def holdout_fractions(self) -> tuple[float, float, float] | None:
        return None if self.holdout is None else tuple(v / 100 for v in self.holdout)

    def hashed(self) -> dict:
        """The settings that change the output, as every prepared set's id has hashed them (the worker count and
        allow_missing do not change it; holdout and split only where set, so that folds-only sets keep their ids)."""
        hashed = {"size": self.size, "folds": self.folds, "seed": self.seed, "bits": self.bits,
                  "source": self.source.hashed(),
                  "near_duplicates": None if self.near_duplicates == "off" else self.near_duplicates}
        if self.holdout is not None:
            hashed.update(folds=1, holdout=list(self.holdout_fractions))
        if self.split == "official":
            hashed.update(folds=1, split="official")
        return hashed


def fields(*names: str) -> dict[str, tuple]:
    """{name: (type, field)} of BuildSettings' fields `names`, for pydantic.create_model: a table that takes them
    takes their type, default, range, checks and description, written once here."""
    return {name: (BuildSettings.model_fields[name].annotation, BuildSettings.model_fields[name]) for name in names}
