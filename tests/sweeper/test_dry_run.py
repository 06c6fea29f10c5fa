"""--dry-run prints the plan (cells, folds, trials, pretraining jobs, GPU estimate) without Ray or data."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torchvision

from sweeper import estimate
from sweeper.driver import pending_trials
from sweeper.dry_run import dry_run
from sweeper.spec import load_spec, parse_spec
from tests.conftest import REPO


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "sweeper.run", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_paper_dry_run_json_lists_cells_folds_trials_and_unique_pretraining_jobs(tmp_path):
    proc = _cli("--spec", "paper", "--dry-run", "--json", "--home", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    assert len(plan["cells"]) == 16 and plan["folds"] == [0, 1, 2, 3, 4]
    assert plan["trials"] == 16 * 5 * 8 and plan["studies"] == 80
    assert {(c["backbone"], c["recipe"], c["strategy"]) for c in plan["cells"]} >= {
        ("resnet50", "imagenet_nih_mixed", "mixed"), ("densenet121", "chexpert_nih_cotrained", "co_trained")}
    # per backbone: scratch->chexpert and scratch->nih (shared by the mixed rows), imagenet->chexpert,
    # imagenet->nih, and the co-trained pair: 5 jobs, not one per cell, fold or trial
    assert len(plan["pretrain"]) == 2 * 5
    shared = next(j for j in plan["pretrain"] if j["backbone"] == "resnet50" and j["init"] == "scratch"
                  and j["sources"] == ["chexpert"])
    assert shared["cells"] == ["resnet50/chexpert", "resnet50/imagenet_chexpert_mixed"]
    e = plan["estimate"]
    assert e["gpu_hours"] > 0 and e["gpu_hours"] == pytest.approx(e["pretrain_gpu_hours"] + e["fine_tune_gpu_hours"],
                                                                  rel=1e-3)
    assert plan["data"]["nih"] == {"location": None, "images": 112120, "images_from": "spec data.expected_images"}
    assert not any(tmp_path.iterdir())  # no Ray results, no data, no DB


def test_the_estimate_scales_with_the_assumed_throughput_and_the_data_given(tmp_path, prepared_dir):
    spec = parse_spec(f"""
name = "t"
[data]
target = "{prepared_dir}"
size = 32
folds = 3
[grid]
backbone = ["resnet18"]
recipe = ["scratch"]
[recipes.scratch]
[search]
trials = 2
""")
    plan = dry_run(spec, tflops=100)
    assert plan["data"]["target"]["images_from"] == "prepared manifest" and plan["data"]["target"]["images"] > 0
    assert dry_run(spec, tflops=50)["estimate"]["gpu_hours"] == pytest.approx(2 * plan["estimate"]["gpu_hours"],
                                                                              rel=1e-3)
    n = plan["data"]["target"]["images"]
    parts = estimate.Parts.of(n, 3, None, spec.train.val_fraction)
    assert parts.train + parts.val + parts.test == pytest.approx(n)
    expected = 3 * 2 * estimate.fit_flops(estimate.forward_flops("resnet18", 32), parts, spec.train.epochs)
    assert plan["estimate"]["fine_tune_gpu_hours"] == pytest.approx(estimate.gpu_hours(expected, 100), rel=1e-3)


@pytest.mark.parametrize("backbone", ["resnet50", "densenet121", "mobilenet_v2"])
def test_forward_flops_agree_with_torchvisions_published_cost_at_224(backbone):
    published_macs = torchvision.models.get_model_weights(backbone).DEFAULT.meta["_ops"] * 1e9
    # ours takes one grey channel, so its first convolution costs a third of the RGB one
    assert 0.95 < estimate.forward_flops(backbone, 224) / (2 * published_macs) < 1.01


def test_a_mixed_model_costs_two_branches():
    assert estimate.forward_flops("resnet18", 64, branches=2) == pytest.approx(
        2 * estimate.forward_flops("resnet18", 64), rel=1e-3)


def test_dry_run_text_and_max_concurrent(tmp_path):
    proc = _cli("--spec", "zhou2020", "--dry-run", "--max-concurrent", "3", "--gpu-tflops", "75")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "16 cells x 1 fold(s) = 16 studies, 32 fine-tuning trials" in proc.stdout
    assert "0 pretraining job(s)" in proc.stdout and "GPU hours at 75 TFLOP/s" in proc.stdout
    assert "alexnet_style/scratch/loss=weighted_bce,lr=0.0001,input_size=256: regular from scratch" in proc.stdout


@pytest.mark.parametrize("args, expected", [
    (("--json",), "--json and --gpu-tflops go with --dry-run"),
    (("--dry-run", "--resume"), "--dry-run plans a new sweep"),
    (("--max-concurrent", "0", "--dry-run"), "0: expected a positive number"),
])
def test_dry_run_option_mistakes_are_one_line_errors(args, expected, capsys):
    from sweeper.run import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--spec", "tiny", *args])
    assert exit_.value.code == 2 and expected in capsys.readouterr().err


def test_trials_queued_ahead_are_what_fits_or_max_concurrent():
    r = load_spec("paper")[0].resources  # 4 CPUs and 1 GPU per trial
    assert pending_trials({"CPU": 64, "GPU": 8}, r, None) == 8
    assert pending_trials({"CPU": 16, "GPU": 8}, r, None) == 4
    assert pending_trials({"CPU": 2}, r, None) == 1  # an autoscaling cluster before its first GPU node
    assert pending_trials({"CPU": 2}, r, 12) == 12  # --max-concurrent: the demand the autoscaler sees


def test_a_regular_chain_counts_each_prefix_once_and_a_co_trained_stage_none():
    from sweeper.dry_run import pretraining_jobs
    from trainables.pretrain import Stage

    chain = Stage("resnet18", "imagenet", "regular", ("chexpert", "nih", "target2"), 2, 1e-3, 8, "bce", 0)
    shorter = Stage("resnet18", "imagenet", "regular", ("chexpert", "nih"), 2, 1e-3, 8, "bce", 0)
    joint = Stage("resnet18", "scratch", "co_trained", ("chexpert", "nih"), 2, 1e-3, 8, "bce", 0)
    jobs = pretraining_jobs({chain, shorter, joint})
    assert sorted(j.sources for j in jobs if j.strategy == "regular") == [
        ("chexpert",), ("chexpert", "nih"), ("chexpert", "nih", "target2")]  # the shared prefix once
    assert [j.sources for j in jobs if j.strategy == "co_trained"] == [("chexpert", "nih")]
