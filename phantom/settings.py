"""What a phantom set looks like: one strict, frozen, typed model (`PhantomSettings`) that `cxr-sweep phantom`
generates its flags from, a spec's [data.phantom] table is, and `make_phantom_set` reads; so each setting
has one name, one default, one range and one description.

The defaults are a small world to learn from in minutes (120 patients, 128 px films, every label on 30% of
the films); `image_px = "real"` and `prevalence = "real"` give the real sources' film sizes and label shares
(the `paper` spec's phantom).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from data_prep.settings import known_keys

N, X = {"metavar": "N"}, {"metavar": "X"}  # how --help shows a flag's value


def _side(value):
    if value != "real" and value < 16:
        raise ValueError("must be at least 16 pixels, or 'real'")
    return value


def _range(value):
    low, high = value
    if not 1 <= low <= high:
        raise ValueError(f"{low} {high}: expected MIN MAX with 1 <= MIN <= MAX")
    return value


def _share(value):
    if value != "real" and not 0 < value < 1:
        raise ValueError("must be between 0 and 1 (exclusive), or 'real'")
    return value


def _fraction(value):
    if value != "real" and not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1, or 'real'")
    return value


Side = Annotated[int | Literal["real"], AfterValidator(_side)]
Share = Annotated[float | Literal["real"], AfterValidator(_share)]
Fraction = Annotated[float | Literal["real"], AfterValidator(_fraction)]
Range = Annotated[tuple[int, int], AfterValidator(_range)]


class PhantomSettings(BaseModel):
    """One phantom set's settings (in a spec: every phantom set's, the seed offset per set by sweeper.datasets)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_patients: int = Field(120, ge=1, description="patients (in a spec: of the target and of a phantom external "
                                                   "set)", json_schema_extra=N)
    source_patients: int | None = Field(None, ge=1, description="a spec's phantom sources' patients (NIH-, "
                                                                "CheXpert-like; default n_patients): real sources "
                                                                "are far larger than a hospital's set, and transfer "
                                                                "needs that", json_schema_extra=N)
    image_px: Side = Field(128, description="largest side of the films in pixels, or 'real' for the real sources' "
                                            "sizes (seed 000: 1,536-2,688 px)", json_schema_extra={"metavar": "PX|real"})
    prevalence: Share = Field(0.3, description="share of films positive for each label, or 'real' for the real "
                                               "sources' shares (seed 000's table, NIH's and CheXpert's; rare labels "
                                               "then need many patients)", json_schema_extra={"metavar": "X|real"})
    label_noise: float = Field(0.0, ge=0, lt=0.5, description="share of positive labels written negative (and as "
                                                              "many negatives positive): noisier sources",
                               json_schema_extra=X)
    seed: int = Field(0, description="seed of everything generated: the same seed writes the same bytes",
                      json_schema_extra=N)
    images_per_patient: Range = Field((1, 3), description="films per patient, drawn uniformly from MIN "
                                                                    "to MAX (both included)",
                                                json_schema_extra={"metavar": ("MIN", "MAX")})
    persist: float = Field(0.9, gt=0, le=1, description="chance that a patient's finding shows on each of their "
                                                        "films", json_schema_extra=X)
    uncertain: Fraction = Field("real", description="chexpert: share of each label written -1, or 'real' for "
                                                    "CheXpert's shares", json_schema_extra={"metavar": "X|real"})
    blank_share: float = Field(0.8, ge=0, le=1, description="chexpert: share of negative labels left blank "
                                                            "(unmentioned)", json_schema_extra=X)
    refiled: float = Field(0.0, ge=0, le=1, description="share of films filed a second time, re-exported (another "
                                                        "matrix size and grey curve): near-duplicates to find",
                           json_schema_extra=X)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, values):
        return known_keys(cls, values)

    def patients(self, kind: str) -> int:
        """How many patients a phantom set of `kind` has: the target's (and a phantom external set's) n_patients,
        a source's source_patients where given."""
        return self.n_patients if kind == "target" or self.source_patients is None else self.source_patients

    def of_set(self, kind: str, seed_offset: int = 0) -> PhantomSettings:
        """The settings one set of `kind` is generated with: its patient count, and the seed moved by
        `seed_offset` (every set of a sweep has patients of its own)."""
        return self.model_copy(update={"n_patients": self.patients(kind), "source_patients": None,
                                       "seed": self.seed + seed_offset})

    @property
    def films_per_patient(self) -> float:
        """Films per patient on average, refiled copies included: an estimate made without generating."""
        return sum(self.images_per_patient) / 2 * (1 + self.refiled)
