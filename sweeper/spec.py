"""Sweep specs: TOML files validated completely before Ray starts.

Every problem is reported with its key (pydantic's locations), unknown keys included.
Built-in specs live in sweeper/specs/ and are named by `--spec NAME`; any other value is
a path to a TOML file.
"""
from __future__ import annotations

import itertools
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data_prep.errors import DataPrepError
from sweeper.overrides import OverrideError, apply, as_text
from data_prep.sources import KINDS, OPTIONS, SPLITS, official_help, option_names, policy_kinds, source_options
from trainables.config import RecipeSettings, Strict, TrainSettings, TrialMetadata
from trainables.models import BACKBONES
from trainables.recipe import check_recipe
from vocab import names
from vocab.errors import CxrSweepError

PHANTOM = "phantom"


class SpecError(CxrSweepError):
    """A spec cannot be used; the message names the file and every bad key."""


class Range(Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Search(Strict):
    trials: int = Field(4, ge=1, description="Optuna trials per (cell, fold)")
    lr: Range = Range(low=1e-4, high=1e-2, log=True)
    dropout: Range = Range(low=0.0, high=0.5)
    seed: int = 0


class Asha(Strict):
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class Train(TrainSettings):
    """The [train] table: trainables' TrainSettings, and how often a trial checkpoints."""

    checkpoint_every: int = TrialMetadata.model_fields["checkpoint_every"]


class Recipe(RecipeSettings):
    """A recipe: trainables' RecipeSettings, with its sources named as the spec's data sets."""

    sources: list[str] = Field([], description="source data sets to pretrain on (regular: in this order)")

    @model_validator(mode="after")
    def _sources_fit_the_strategy(self):
        check_recipe(self.strategy, self.sources)
        return self


class Phantom(Strict):
    n_patients: int = Field(120, ge=4)
    source_patients: int | None = Field(None, ge=4, description="patients of each phantom source (NIH, CheXpert); "
                                                                "default n_patients. Real sources are far larger "
                                                                "than a hospital's set, and transfer needs that")
    image_px: int | Literal["real"] = Field(128, description="largest side of the generated films, or 'real' for "
                                                             "the real sources' sizes (seed 000: 1,536-2,688 px)")
    prevalence: float | Literal["real"] = Field(
        0.3, description="share of films positive for each label, or 'real' for the real sources' shares "
                         "(seed 000's table, NIH's and CheXpert's; rare labels then need many patients)")
    label_noise: float = Field(0.0, ge=0, lt=0.5, description="share of positive labels written negative (and as "
                                                               "many negatives positive): noisier sources")
    seed: int = 0

    @field_validator("image_px")
    @classmethod
    def _side(cls, value):
        if value != "real" and value < 16:
            raise ValueError("must be at least 16 pixels, or 'real'")
        return value

    @field_validator("prevalence")
    @classmethod
    def _share(cls, value):
        if value != "real" and not 0 < value < 1:
            raise ValueError("must be between 0 and 1 (exclusive), or 'real'")
        return value


class Prepare(BaseModel):
    """How a raw location (`KIND:FOLDER`) of one data set is built. The build's own settings are fields
    here; every other key is an option of the data set's source kind, defined once in data_prep.sources
    (the same options, defaults and checks as `python -m data_prep.build KIND`): checked at once against
    the options any kind has, and fully once the location says which kind it is. Size, folds, holdout
    and the uncertainty policy (of the kinds that have one) come from [data] itself."""

    model_config = ConfigDict(extra="allow", frozen=True)
    bits: Literal[8, 16] = 8
    near_duplicates: float | Literal["off"] = Field(0.9, description="detail correlation of one exposure, or 'off'")
    allow_missing: bool = Field(False, description="build even when more than 1% of the listed images are not "
                                                   "found (the count goes into the manifest)")

    @field_validator("near_duplicates")
    @classmethod
    def _correlation(cls, value):
        if value != "off" and not 0 < value <= 1:
            raise ValueError("expected a correlation in (0, 1], or 'off'")
        return value

    @model_validator(mode="after")
    def _source_options_exist(self):
        known = sorted({n for kind in KINDS for n in option_names(kind)} - {"policy"})
        for key in self.model_extra or {}:
            if key == "policy":
                raise ValueError(f"policy: set data.chexpert_policy, which every {' and '.join(policy_kinds())} set "
                                 "follows")
            if key not in known:
                raise ValueError(f"{key}: unknown option; expected bits, near_duplicates, allow_missing or an "
                                 f"option of a source kind: {known}")
        return self

    def source(self, kind: str, policy: str, where: str):
        """The kind's options (data_prep.sources) from this table and the data's CheXpert policy."""
        values = dict(self.model_extra or {})
        if kind in OPTIONS and "policy" in OPTIONS[kind].model_fields:
            values["policy"] = policy
        return source_options(kind, values, where)


class External(Strict):
    """A test set from elsewhere that no trial trains, tunes or early-stops on: after the sweep, each cell's
    fold models and fold ensemble are applied to it (sweeper.evaluate) and the report compares."""

    location: str = Field("", description="'phantom:target' (films of other patients), a prepared data set's path, "
                                          "KIND:FOLDER of a raw source, or '' (given with --data NAME=...)")
    labels: str | None = Field(None, description="how its labels map onto the target's: a .toml file or a shipped "
                                                 "mapping (nih_as_seed000_target); default: labels of the same name")
    tta: list[Literal["none", "hflip"]] = Field(["none"], min_length=1,
                                                description="test-time augmentations to evaluate, each rows of its own")


class Data(Strict):
    target: str = Field(PHANTOM, description="'phantom', a prepared data set's path, KIND:FOLDER of a raw source, "
                                             "or '' (given with --data)")
    sources: dict[str, str] = Field({}, description="source name -> 'phantom:nih', a prepared data set's path, "
                                                    "or '' (given with --data NAME=PATH or CXR_SWEEP_DATA_NAME)")
    size: int = Field(64, ge=16)
    folds: int = Field(5, ge=2)
    split: Literal[SPLITS] = Field(  # type: ignore[valid-type]
        "random", description="random: patient-grouped data.folds of the whole target; official: the target "
                              f"source's own test set ({official_help()}) as the test part of one fold")
    holdout: list[float] | None = Field(
        None, description="train/val/test percentages, e.g. [60, 20, 20]: one fixed split of the target instead of "
                          "folds (seed 003); the validation part is what tuning sees")
    chexpert_policy: Literal["u_ignore", "u_zeros", "u_ones", "u_mixed"] = Field(
        "u_ones", description=f"uncertain labels of every {' and '.join(policy_kinds())} set: sets the sweep builds "
                              "are built with it, prepared ones must have been")
    phantom: Phantom = Phantom()
    external: dict[str, External] = Field({}, description="external test set name -> where it is and how its "
                                                           "labels map onto the target's")
    prepare: dict[str, Prepare] = Field({}, description="data set name -> how its raw location is built")
    expected_images: dict[str, int] = Field(
        {}, description="data set name -> its image count, for --dry-run's estimate when no location is given")

    @model_validator(mode="after")
    def _prepare_names_data_sets(self):
        for table in ("prepare", "expected_images"):
            unknown = sorted(set(getattr(self, table)) - {"target", *self.sources, *self.external})
            if unknown:
                raise ValueError(f"{table}.{unknown[0]}: no such data set; expected 'target' or one of "
                                 f"{sorted({*self.sources, *self.external})}")
        clash = sorted(set(self.external) & {"target", *self.sources})
        if clash:
            raise ValueError(f"external.{clash[0]}: a name of the target or a source; an external set is one no "
                             f"trial trains on")
        bad = sorted(name for name, n in self.expected_images.items() if n < 1)
        if bad:
            raise ValueError(f"expected_images.{bad[0]}: expected a positive image count")
        for name, how in self.prepare.items():  # a location written in the spec says the kind: check it all now
            location = self.target if name == "target" else self.sources[name]
            kind = location.partition(":")[2] if location.startswith(f"{PHANTOM}:") else location.partition(":")[0]
            if ":" in location and kind in OPTIONS:
                try:
                    how.source(kind, self.chexpert_policy, f"prepare.{name}")
                except DataPrepError as exc:
                    raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _one_kind_of_split(self):
        if self.split == "official" and self.holdout:
            raise ValueError("split = 'official' and holdout exclude each other: the official split's test set is "
                             "the source's own; leave holdout out")
        return self

    @field_validator("holdout")
    @classmethod
    def _percentages(cls, value):
        if value is not None and (len(value) != 3 or min(value) <= 0 or abs(sum(value) - 100) > 1e-6):
            raise ValueError("expected three positive percentages that sum to 100, e.g. [60, 20, 20]")
        return value

    @property
    def holdout_fractions(self) -> tuple[float, float, float] | None:
        return tuple(v / 100 for v in self.holdout) if self.holdout else None


SEARCHED = ("lr", "dropout")  # a grid axis over one of these fixes it instead of searching it
# A grid axis may vary any [train] setting but the two that are tables or seeds of their own.
TRAIN_AXES = tuple(name for name in Train.model_fields if name not in ("augment", "seed"))


class Grid(BaseModel):
    """backbone x recipe x any further axes (a [train] option, or lr / dropout fixed per cell) x fold.

    `exclude` drops the cells that match every key of one of its tables.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    backbone: list[str] = Field(min_length=1)
    recipe: list[str] = Field(min_length=1)
    fold: list[int] | None = Field(None, min_length=1, description="outer folds to run (default: all)")
    exclude: list[dict[str, Any]] = Field([], description="cells to leave out, e.g. {backbone = 'x', recipe = 'y'}")

    @model_validator(mode="after")
    def _axes_are_known_and_valid(self):
        for axis, values in self.axes.items():
            if axis not in TRAIN_AXES + SEARCHED:
                raise ValueError(f"unknown grid axis {axis!r}; expected backbone, recipe, fold, exclude or one of "
                                 f"{list(TRAIN_AXES + SEARCHED)}")
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{axis}: expected a non-empty list of values")
            for value in values:
                if axis == "lr" and not (isinstance(value, (int, float)) and value > 0):
                    raise ValueError(f"grid.lr: {value!r} is not a positive learning rate")
                if axis == "dropout" and not (isinstance(value, (int, float)) and 0 <= value < 1):
                    raise ValueError(f"grid.dropout: {value!r} is not a dropout rate in [0, 1)")
                if axis in TRAIN_AXES:
                    Train.model_validate({axis: value})  # its own checks, e.g. a known loss
        names = {"backbone", "recipe", *self.axes}
        for rule in self.exclude:
            if not rule or set(rule) - names:
                raise ValueError(f"grid.exclude: {rule!r} must name some of the grid's axes {sorted(names)}")
        return self

    @property
    def axes(self) -> dict[str, list]:
        """The further axes, in the spec's order."""
        return dict(self.model_extra or {})

    def cells(self) -> list[dict]:
        """Every {backbone, recipe, axis: value, ...} not excluded."""
        keys = ["backbone", "recipe", *self.axes]
        values = [self.backbone, self.recipe, *self.axes.values()]
        cells = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
        return [c for c in cells if not any(all(c.get(k) == v for k, v in rule.items()) for rule in self.exclude)]

    @field_validator("backbone")
    @classmethod
    def _known_backbones(cls, names):
        unknown = [n for n in names if n not in BACKBONES]
        if unknown:
            raise ValueError(f"unknown backbone(s) {unknown}; expected any of {sorted(BACKBONES)}")
        return names


class Resources(Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    cpus_per_stage: float | None = Field(None, gt=0, description="a pretraining stage's CPUs (default: a trial's)")
    gpus_per_stage: float | None = Field(None, ge=0, description="a pretraining stage's GPUs (default: a trial's)")
    max_concurrent: int | None = Field(None, ge=1, description="fine-tuning trials at once (default: what fits)")
    max_failures: int = Field(1, ge=0, description="retries of a failed trial from its last checkpoint")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where trials and stages compute; auto: cuda when they are given GPUs, else cpu")

    def compute_device(self, gpus: float) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if gpus > 0 else "cpu"

    @property
    def stage_cpus(self) -> float:
        return self.cpus_per_stage or self.cpus_per_trial

    @property
    def stage_gpus(self) -> float:
        return self.gpus_per_trial if self.gpus_per_stage is None else self.gpus_per_stage


class SweepSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    smoke: bool = Field(False, description="set by --smoke: the grid shrunk to try the pipeline, not the recipes")
    data: Data = Data()
    grid: Grid
    recipes: dict[str, Recipe]
    search: Search = Search()
    asha: Asha = Asha()
    train: Train = Train()
    resources: Resources = Resources()

    @model_validator(mode="after")
    def _references(self):
        problems = [f"grid.recipe: {r!r} is not defined; defined recipes: {sorted(self.recipes)}"
                    for r in self.grid.recipe if r not in self.recipes]
        for name, recipe in self.recipes.items():
            problems += [f"recipes.{name}.sources: {s!r} is not in data.sources ({sorted(self.data.sources)})"
                         for s in recipe.sources if s not in self.data.sources]
        single = self.data.holdout or self.data.split == "official"
        n_folds = 1 if single else self.data.folds
        problems += [f"grid.fold: {f} is outside 0..{n_folds - 1} (data.folds = {self.data.folds}"
                     + (", or 1 with data.holdout or data.split = 'official')" if single else ")")
                     for f in self.grid.fold or [] if not 0 <= f < n_folds]
        if self.asha.grace_period > self.train.epochs:
            problems.append(f"asha.grace_period ({self.asha.grace_period}) exceeds train.epochs ({self.train.epochs})")
        if not problems:
            problems += self._cell_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _cell_problems(self) -> list[str]:
        cells = self.grid.cells()
        if not cells:
            return ["grid.exclude leaves no cell to run"]
        problems = []
        for cell in cells:
            recipe = self.recipes[cell["recipe"]]
            if cell["backbone"] == "alexnet_style" and "imagenet" in (recipe.init, recipe.pretrain_init):
                problems.append(f"grid: cell {cell_name(cell)} needs ImageNet weights, which alexnet_style has not; "
                                f"leave it out with grid.exclude = [{{ backbone = \"alexnet_style\", "
                                f"recipe = \"{cell['recipe']}\" }}]")
        if all(p in self.grid.axes for p in SEARCHED) and self.search.trials > 1:
            problems.append(f"grid fixes both lr and dropout, so the {self.search.trials} trials per cell would be "
                            f"identical; set search.trials = 1")
        return sorted(set(problems))

    @property
    def folds(self) -> list[int]:
        if self.grid.fold is not None:
            return list(self.grid.fold)
        return [0] if self.data.holdout or self.data.split == "official" else list(range(self.data.folds))


def cell_name(cell: dict) -> str:
    """backbone/recipe, then axis=value for each further axis: the cell's key in studies and the DB."""
    return names.cell_name(cell["backbone"], cell["recipe"], variant(cell))


def variant(cell: dict) -> str:
    """The further axes' values of a cell ("" for a backbone x recipe grid)."""
    return ",".join(f"{k}={v}" for k, v in cell.items() if k not in ("backbone", "recipe"))


def builtin_specs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("sweeper.specs").iterdir() if p.name.endswith(".toml"))


def read_spec_text(name_or_path: str) -> tuple[str, str]:
    """(source description, TOML text) of a built-in spec name or a file path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SpecError(f"spec file {path} does not exist")
        return str(path), path.read_text(encoding="utf-8")
    if name_or_path in builtin_specs():
        return f"built-in spec {name_or_path!r}", resources.files("sweeper.specs").joinpath(f"{name_or_path}.toml").read_text()
    raise SpecError(f"no spec named {name_or_path!r}; built-in specs: {', '.join(builtin_specs())}; "
                    f"or pass the path of a .toml file")


def parse_spec(text: str, origin: str = "<spec>") -> SweepSpec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{origin}: not valid TOML: {exc}") from exc
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(top level)'}: {_message(e)}" for e in exc.errors()]
        raise SpecError(f"{origin}: {len(lines)} problem(s):\n" + "\n".join(lines)) from None


def _message(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return error["msg"].removeprefix("Value error, ")


def load_spec(name_or_path: str, overrides: list[str] = (), smoke: bool = False) -> tuple[SweepSpec, str]:
    """(validated spec, its TOML text as it runs, kept in the DB): the file verbatim, or with --smoke and each
    --set KEY=VALUE applied (sweeper.overrides) and validated like the file itself."""
    origin, text = read_spec_text(name_or_path)
    if not overrides and not smoke:
        return parse_spec(text, origin), text
    try:
        raw = apply(tomllib.loads(text), list(overrides), smoke, Data.model_fields["size"].default)
    except (tomllib.TOMLDecodeError, OverrideError) as exc:
        raise SpecError(f"{origin}: {exc}") from None
    shown = " ".join(["--smoke"] * smoke + [f"--set {o}" for o in overrides])
    text = f"# {origin} with {shown}\n" + as_text(raw)
    return parse_spec(text, f"{origin} with {shown}"), text
