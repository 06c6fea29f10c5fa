"""Turn a validated spec and its data sets into study plans: one per (backbone, recipe, fold)."""
from __future__ import annotations

from pathlib import Path

from optuna.distributions import FloatDistribution

from sweeper.search import StudyPlan
from sweeper.spec import SweepSpec


def search_space(spec: SweepSpec) -> dict[str, FloatDistribution]:
    s = spec.search
    return {"lr": FloatDistribution(s.lr.low, s.lr.high, log=s.lr.log),
            "dropout": FloatDistribution(s.dropout.low, s.dropout.high, log=s.dropout.log)}


def study_plans(spec: SweepSpec, data: dict[str, Path], pretrain_cache: Path) -> list[StudyPlan]:
    plans = []
    for backbone in spec.grid.backbone:
        for recipe_name in spec.grid.recipe:
            recipe = spec.recipes[recipe_name]
            for fold in spec.folds:
                config = {
                    "backbone": backbone, "recipe": recipe_name, "outer_fold": fold,
                    "data_dir": str(data["target"]), "init": recipe.init, "strategy": recipe.strategy,
                    "pretrain_dirs": [str(data[source]) for source in recipe.sources],
                    "pretrain_init": recipe.pretrain_init,
                    "pretrain_epochs": recipe.pretrain_epochs, "pretrain_lr": recipe.pretrain_lr,
                    "pretrain_cache": str(pretrain_cache),
                    "epochs": spec.train.epochs, "batch_size": spec.train.batch_size, "loss": spec.train.loss,
                    "schedule": spec.train.schedule, "schedule_patience": spec.train.schedule_patience,
                    "early_stopping": spec.train.early_stopping, "precision": spec.train.precision,
                    "augment": spec.train.augment,
                    "val_fraction": spec.train.val_fraction, "seed": spec.train.seed,
                    "threads": max(1, int(spec.resources.cpus_per_trial)),
                    "device": "cuda" if spec.resources.gpus_per_trial > 0 else "cpu",
                }
                plans.append(StudyPlan(key=f"{backbone}/{recipe_name}/fold{fold}", config=config,
                                       n_trials=spec.search.trials, seed=spec.search.seed))
    return plans
