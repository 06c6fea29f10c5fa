"""Sweep specs: TOML files validated completely before Ray starts.

Every problem is reported with its key (pydantic's locations), unknown keys included.
Built-in specs live in sweeper/specs/ and are named by `--spec NAME`; any other value is
a path to a TOML file.
"""
from __future__ import annotations

import itertools
import tomllib
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from data_prep.errors import DataPrepError
from data_prep.settings import BuildSettings, fields
from data_prep.sources import KINDS, OPTIONS, ChexpertOptions, option_names, policy_kinds, source_options
from data_prep.sources.options import Policy
from phantom.settings import PhantomSettings
from sweeper.overrides import OverrideError, apply, as_text
from trainables.config import RecipeSettings, Strict, TrainSettings, TrialMetadata
from trainables.models import BACKBONES, IMAGENET_BACKBONES, no_imagenet_weights
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


# A table that sets build settings takes them from data_prep.settings.BuildSettings (type, default, range, check and
# description written once): [data] the target's split and the seed of every built set, [data.prepare.NAME] how
# one set's files become pixels. A sweep cannot set the build's worker count (every core).
DATA_SETTINGS = ("size", "folds", "split", "holdout", "seed")
PREPARE_SETTINGS = ("bits", "near_duplicates", "allow_missing")
SOURCE_SETTINGS = {"policy": "data.chexpert_policy", "seed": "data.seed"}  # source options [data] sets for every set


class Prepare(create_model("PrepareSettings", __config__=ConfigDict(extra="allow", frozen=True),
                           **fields(*PREPARE_SETTINGS))):
    """How a raw location (`KIND:FOLDER`) of one data set is built. The build's own settings are fields
    here; every other key is an option of the data set's source kind, defined once in data_prep.sources
    (the same options, defaults and checks as `python -m data_prep.build KIND`): checked at once against
    the options any kind has, and fully once the location says which kind it is. Size, folds, holdout,
    the seed and the uncertainty policy (of the kinds that have one) come from [data] itself."""

    @model_validator(mode="after")
    def _source_options_exist(self):
        known = sorted({n for kind in KINDS for n in option_names(kind)} - set(SOURCE_SETTINGS))
        for key in self.model_extra or {}:
            if key in SOURCE_SETTINGS:
                raise ValueError(f"{key}: set {SOURCE_SETTINGS[key]}, which every data set the sweep builds follows")
            if key not in known:
                raise ValueError(f"{key}: unknown option; expected {', '.join(PREPARE_SETTINGS)} or an option of a "
                                 f"source kind: {known}")
        return self

    def source(self, kind: str, data: "Data", where: str):
        """The kind's options (data_prep.sources) from this table and [data]'s policy and seed."""
        values = dict(self.model_extra or {})
        if kind in OPTIONS:
            given = {"policy": data.chexpert_policy, "seed": data.seed}
            values.update({k: v for k, v in given.items() if k in OPTIONS[kind].model_fields})
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


class Data(create_model("DataSettings", __base__=Strict, **fields(*DATA_SETTINGS))):
    target: str = Field(PHANTOM, description="'phantom', a prepared data set's path, KIND:FOLDER of a raw source, "
                                             "or '' (given with --data)")
    sources: dict[str, str] = Field({}, description="source name -> 'phantom:nih', a prepared data set's path, "
                                                    "or '' (given with --data NAME=PATH or CXR_SWEEP_DATA_NAME)")
    chexpert_policy: Policy = Field(
        ChexpertOptions.model_fields["policy"].default,
        description=f"uncertain labels of every {' and '.join(policy_kinds())} set: sets the sweep builds are built "
                    "with it, prepared ones must have been")
    phantom: PhantomSettings = PhantomSettings()
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
                    how.source(kind, self, f"prepare.{name}")
                except DataPrepError as exc:
                    raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _builds(self):
        """What BuildSettings checks across fields (an official split and a holdout exclude each other)."""
        try:
            self.settings()
        except ValidationError as exc:
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        return self

    def settings(self, how: Prepare | None = None, source=None, is_target: bool = True) -> BuildSettings:
        """How a data set is built: [data]'s settings (a source's, an external set's: folds of the whole set), the
        set's [data.prepare.NAME] ones and its kind's options."""
        values = {**self.model_dump(include=set(DATA_SETTINGS)), **(how or Prepare()).model_dump(
            include=set(PREPARE_SETTINGS))}
        if not is_target:
            values.update(holdout=None, split="random")
        return BuildSettings(**values, **({} if source is None else {"source": source}))


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
            if cell["backbone"] not in IMAGENET_BACKBONES and "imagenet" in (recipe.init, recipe.pretrain_init):
                problems.append(f"grid: cell {cell_name(cell)} needs ImageNet weights: "
                                f"{no_imagenet_weights(cell['backbone'])}; leave it out with grid.exclude = "
                                f"[{{ backbone = \"{cell['backbone']}\", recipe = \"{cell['recipe']}\" }}]")
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
        known = _keys_of_table(error["loc"][:-1])
        return "unknown key" + (f"; expected any of {', '.join(known)}" if known else "")
    return error["msg"].removeprefix("Value error, ")


def _keys_of_table(loc: tuple) -> list[str]:
    """The keys a spec's table at `loc` takes (e.g. ("data",) -> Data's fields), following tables and named
    tables ({NAME: table}); [] where the location is not a table of keys."""
    model, parts = SweepSpec, list(loc)
    while parts:
        field = model.model_fields.get(parts.pop(0)) if isinstance(model, type) else None
        model = None if field is None else field.annotation
        if typing.get_origin(model) is dict and parts:  # a named table: its name, then the table
            parts.pop(0)
            model = typing.get_args(model)[1]
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


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
