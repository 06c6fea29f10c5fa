"""Both studies end to end: `--spec paper --smoke` and `--spec zhou2020 --smoke` through the CLI, offline,
with ImageNet weights in torchvision's published layout in a temporary cache, and their reports checked
row by row against the seeds' tables (seed 000's three perspectives; seed 003's loss comparison, its
curves over epochs and its learning-rate study)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd
import pytest

from results.query import run_query

pytestmark = pytest.mark.slow
BACKBONES_000 = ("densenet121", "resnet50")
BACKBONES_003 = ("alexnet_style", "mobilenet_v2")


@pytest.fixture
def studies(smoke_sweeps) -> dict:
    """{spec: its report folder, "db": the DB}: the session's smoke sweeps (tests/smoke_sweeps.py)."""
    return {**{spec: smoke_sweeps.report(spec) for spec in ("paper", "zhou2020")}, "db": smoke_sweeps.db}


def _table(report: Path, stem: str) -> pd.DataFrame:
    return pd.read_csv(report / "tables" / f"{stem}.csv", dtype={"variant": str}, keep_default_na=False)


def test_seed_000_backbone_model_selection_covers_the_three_strategies_for_both_backbones(studies):
    table = _table(studies["paper"], "backbone_selection")
    for backbone in BACKBONES_000:
        assert set(table.loc[table.backbone == backbone, "strategy"]) == {"regular", "mixed", "co_trained"}
    assert len(table) == 16 and (table.folds_done == 2).all()


@pytest.mark.parametrize("backbone", BACKBONES_000)
def test_seed_000_source_data_selection_has_the_imagenet_chexpert_and_nih_rows(studies, backbone):
    table = _table(studies["paper"], f"source_selection_{backbone}")
    assert sorted(table.dataset) == ["ImageNet", "chexpert", "nih"]
    for column in ("train_binary_acc_mean", "train_mae_mean", "ap_mean", "auc_mean"):  # the seed's columns
        assert table[column].notna().all(), column
    assert "| Recipe | Dataset | Training binary accuracy | Training MAE | Test AP" in \
        (studies["paper"] / "report.md").read_text()


@pytest.mark.parametrize("backbone", BACKBONES_000)
def test_seed_000_combination_method_selection_has_its_five_rows(studies, backbone):
    table = _table(studies["paper"], f"combination_selection_{backbone}")
    assert sorted(zip(table.strategy, table.dataset)) == [
        ("co_trained", "chexpert + nih"), ("mixed", "ImageNet + chexpert"), ("mixed", "ImageNet + nih"),
        ("regular", "ImageNet + chexpert"), ("regular", "ImageNet + nih")]


def test_seed_000_conclusion_names_a_best_recipe_per_backbone(studies):
    table = _table(studies["paper"], "conclusion")  # the best recipe and its runner-up, per backbone
    assert sorted(table.backbone) == sorted(BACKBONES_000 * 2) and table.recipe.ne("").all()
    shown = (studies["paper"] / "report.md").read_text().split("### Conclusion")[1].split("\n\n")[1]
    assert [line.split(" | ")[0].strip("| ") for line in shown.splitlines()[2:]] == list(BACKBONES_000)


def test_seed_003_loss_comparison_tells_every_cell_apart_for_both_backbones(studies):
    table = _table(studies["zhou2020"], "loss_comparison")
    assert sorted(set(table.backbone)) == list(BACKBONES_003) and len(table) == 16
    assert not table.duplicated(["backbone", "recipe", "variant"]).any()
    for column in ("binary_acc_mean", "exact_match_mean", "fnr_mean"):
        assert table[column].notna().all(), column
    shown = (studies["zhou2020"] / "report.md").read_text()
    assert "| alexnet_style | scratch | weighted_bce | lr=0.01,input_size=32 |" in shown  # the rate is named


def test_seed_003_curves_over_epochs_and_learning_rate_study_for_its_four_rates(studies):
    figures = {p.stem for p in (studies["zhou2020"] / "figures").glob("*.png")}
    for backbone in BACKBONES_003:
        assert {f"accuracy_over_epochs_{backbone}", f"learning_rate_{backbone}"} <= figures
    cells = run_query(studies["db"], "SELECT c.backbone, c.variant FROM cells c JOIN sweeps s ON s.id = c.sweep_id "
                                     "WHERE s.name = 'zhou2020-smoke'")
    for backbone in BACKBONES_003:
        variants = cells.variant[cells.backbone == backbone]
        assert {v.split("lr=")[1].split(",")[0] for v in variants} == {"0.01", "0.001", "0.0001", "1e-05"}


def test_each_smoke_report_says_so_and_the_db_keeps_the_spec_as_it_ran(studies):
    for spec in ("paper", "zhou2020"):
        assert "SMOKE RUN (python -m sweeper.run --smoke)" in (studies[spec] / "report.md").read_text()
    ran = run_query(studies["db"], "SELECT name, spec_text FROM sweeps ORDER BY name")
    for name, text in zip(ran.name, ran.spec_text):  # --smoke, then the fixture's --set on top
        spec = tomllib.loads(text)
        assert spec["smoke"] is True and spec["data"]["size"] == 32 and spec["data"]["phantom"]["n_patients"] == 40
        assert spec["train"]["epochs"] == {"paper-smoke": 1, "zhou2020-smoke": 2}[name]
