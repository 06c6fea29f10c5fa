"""Turn a validated spec and its data sets into study plans: one per (cell, fold)."""
from __future__ import annotations

from pathlib import Path

from optuna.distributions import FloatDistribution

from sweeper.search import StudyPlan
from sweeper.spec import SEARCHED, SweepSpec, cell_name, variant
from sweeper.weights import needs_imagenet
from trainables.config import fit_config
from vocab.names import study_key


def search_space(spec: SweepSpec) -> dict[str, FloatDistribution]:
    s = spec.search
    return {"lr": FloatDistribution(s.lr.low, s.lr.high, log=s.lr.log),
            "dropout": FloatDistribution(s.dropout.low, s.dropout.high, log=s.dropout.log)}


def _trial_config(spec: SweepSpec, cell: dict, fold: int, data: dict[str, Path], pretrain_cache: Path) -> dict:
    """A trial's config less what its study and Optuna fill in (study, optuna_number, the searched lr and
    dropout): FitConfig's fields and the trial metadata, flat, as Ray Tune passes configs."""
    recipe = spec.recipes[cell["recipe"]]
    train = spec.train.model_copy(update={k: v for k, v in cell.items() if k in type(spec.train).model_fields})
    config = {
        "backbone": cell["backbone"], "recipe": cell["recipe"], "variant": variant(cell), "outer_fold": fold,
        "data_dir": str(data["target"]),
        **recipe.model_dump(exclude={"sources"}),  # init, strategy, pretrain_*: trainables' RecipeSettings
        "pretrain_dirs": [str(data[source]) for source in recipe.sources],
        "pretrain_cache": str(pretrain_cache),
        **train.model_dump(),  # epochs, batch_size, loss, ...: trainables' TrainSettings, and checkpoint_every
        "threads": max(1, int(spec.resources.cpus_per_trial)),
        "device": spec.resources.compute_device(spec.resources.gpus_per_trial),
        **{p: cell[p] for p in SEARCHED if p in cell},  # fixed by the grid, not searched
    }
    fit_config(config)  # the contract, checked as planned: a key training does not know stops before Ray
    return config


def study_plans(spec: SweepSpec, data: dict[str, Path], pretrain_cache: Path) -> list[StudyPlan]:
    space = search_space(spec)
    plans = []
    for cell in spec.grid.cells():
        cell_space = {p: d for p, d in space.items() if p not in cell}
        for fold in spec.folds:
            plans.append(StudyPlan(key=study_key(cell_name(cell), fold),
                                   config=_trial_config(spec, cell, fold, data, pretrain_cache),
                                   n_trials=spec.search.trials, seed=spec.search.seed, space=cell_space))
    return plans


def cell_rows(spec: SweepSpec, plans: list[StudyPlan], imagenet: dict[str, dict] | None = None) -> list[dict]:
    """The planned cells as the results DB describes them: recipe strategy, init, source names, the
    fixed training settings, the pretraining artefact (weights file name) the cell starts from and the
    ImageNet weights file it starts from (`imagenet`: backbone -> {"file", "sha256"}, sweeper.weights)."""
    imagenet = imagenet or {}
    needs = {(p.config["backbone"], p.config["recipe"], p.config["variant"]): p.needs for p in plans}
    rows = []
    for cell in spec.grid.cells():
        recipe = spec.recipes[cell["recipe"]]
        train = spec.train.model_copy(update={k: v for k, v in cell.items() if k in type(spec.train).model_fields})
        need = needs.get((cell["backbone"], cell["recipe"], variant(cell)))
        rows.append({"backbone": cell["backbone"], "recipe": cell["recipe"], "variant": variant(cell),
                     "strategy": recipe.strategy, "init": recipe.init, "sources": list(recipe.sources),
                     "settings": {**train.model_dump(), **{p: cell[p] for p in SEARCHED if p in cell}},
                     "pretrain_artefact": Path(need).name if need else None,
                     **_weights_columns(imagenet.get(cell["backbone"]) if needs_imagenet(spec, cell) else None)})
    return rows


def _weights_columns(weights: dict | None) -> dict:
    return {"weights_file": weights["file"] if weights else None, "weights_sha256": weights["sha256"] if weights else None}
