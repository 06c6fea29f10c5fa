"""The names that cross package boundaries, composed and parsed in one place: a cell's name, a
study's key, a metric's key in a trial's report. Trainables write `test_auc`, the store reads it
back into (split, metric); the sweeper names a study `resnet50/imagenet/fold0`, the dry run and
the report take it apart. A change here changes every side at once."""
from __future__ import annotations

# The metric lists are the metric registry's (vocab.metrics defines them), importable from here too
from vocab.metrics import (EPOCH_METRICS, IMAGE_METRICS, MACRO_METRICS, PER_CLASS_METRICS,  # noqa: F401
                           POOLED_METRICS, SPLIT_METRICS)

FINAL_SPLITS = ("test", "outer_train")  # what a trial's end-of-trial evaluation reports (docs/design.md §3.2)
# whose per-image predictions a completed trial keeps: the outer test fold, and the inner validation split that
# operating points and calibration are fitted on
PREDICTION_SPLITS = ("test", "val")
FOLD_MARK = "/fold"
TTA = ("none", "hflip")  # test-time augmentation: none, or the mean with the horizontally flipped image

def cell_name(backbone: str, recipe: str, variant: str = "") -> str:
    """BACKBONE/RECIPE, or BACKBONE/RECIPE/VARIANT (the further axes, `loss=bce,lr=0.01`): how the DB,
    the studies, `--cell` and the report's lists name a cell."""
    return "/".join(part for part in (backbone, recipe, variant) if part)


def row_name(recipe: str, variant: str = "") -> str:
    """A cell within one backbone's table or figure: RECIPE, or RECIPE (VARIANT)."""
    return recipe + (f" ({variant})" if variant else "")


def study_key(cell: str, fold: int) -> str:
    """One Optuna study per (cell, outer fold): CELL/foldN."""
    return f"{cell}{FOLD_MARK}{fold}"


def cell_of_study(key: str) -> str:
    """The cell a study key belongs to (the inverse of `study_key`)."""
    cell, mark, fold = key.rpartition(FOLD_MARK)
    if not mark or not fold.isdigit():
        raise ValueError(f"{key!r} is not a study key (CELL{FOLD_MARK}N)")
    return cell


def metric_key(split: str, metric: str) -> str:
    """A metric's key in a trial's report: SPLIT_METRIC (`test_auc`, `outer_train_binary_acc`,
    `test_auc_per_class`)."""
    return f"{split}_{metric}"
