"""fit as a plain function: per-epoch reports, schedule, early stopping, exact resume, end-of-trial
evaluation of the best-on-validation weights, pretraining stages and a run that learns."""
from __future__ import annotations

import shutil
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from data_prep.build import build
from data_prep.settings import BuildSettings
from data_prep.dataset import PreparedDataset
from tests.conftest import TEST_KEY
from tests.helpers import fit_config, fit_reports
from trainables import engine
from trainables.feed import ImageFeed
from trainables.fit import fit
from trainables.models import build_model
from vocab.records import EpochReport, RecordError, TrialPredictions, TrialResult, parse_report

AUGMENT = {"rotate_p": 0.5, "shift_p": 0.5, "zoom_p": 0.5, "noise_p": 0.5, "hflip_p": 0.2}


def test_fit_reports_every_epoch_and_evaluates_the_best_weights_at_the_end(prepared_dir):
    reports = fit_reports(fit_config(prepared_dir))
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    assert [type(parse_report(m)) for m, _ in reports] == [EpochReport, EpochReport, TrialResult]  # typed records
    assert all("val_hamming" not in m for m, _ in reports)  # computed, never read: not reported (issue 29)
    assert all(np.isfinite(m[k]) for m, _ in reports for k in ("val_binary_acc", "val_exact_match", "val_fnr"))
    assert all("test_auc" not in m for m, _ in reports[:-1])  # the test fold is not looked at while training
    final, state = reports[-1]
    assert final["completed"] and final["stop_reason"] == "epochs"
    for split in ("test", "outer_train"):
        for metric in ("auc", "ap", "prevalence", "hamming", "hamming_05", "binary_acc", "mae", "fnr", "exact_match"):
            assert f"{split}_{metric}" in final
    data = PreparedDataset(prepared_dir)
    split = data.split(0, 0.2, seed=0)
    predictions = state["predictions"]
    assert predictions["test"]["image_keys"] == list(data.image_keys[split.test])
    assert predictions["val"]["image_keys"] == list(data.image_keys[split.val])  # what operating points fit on
    assert set(predictions) == {"label_names", "best_epoch", "runtime", "test", "val"}
    assert predictions["runtime"]["dataset_id"] == data.dataset_id and predictions["runtime"]["threads"] >= 1
    probs = predictions["test"]["probs"].numpy()
    assert probs.shape == (len(split.test), len(data.label_names)) and ((probs >= 0) & (probs <= 1)).all()
    # the probabilities are those of the best-on-validation weights, not of the last epoch's
    model = build_model("resnet18", len(data.label_names), 0.2)
    model.load_state_dict(state["best_model"])
    again = engine.predict(model, ImageFeed(data.images, torch.device("cpu")), split.test, 8,
                           engine.Precision.choose("fp32", torch.device("cpu")))
    np.testing.assert_allclose(again, probs, atol=1e-6)
    on_val = engine.predict(model, ImageFeed(data.images, torch.device("cpu")), split.val, 8,
                            engine.Precision.choose("fp32", torch.device("cpu")))
    np.testing.assert_allclose(on_val, predictions["val"]["probs"].numpy(), atol=1e-6)
    # what selection reads: the validation AUC of the weights kept, not of the epoch's full-precision ones
    truth, kept = data.labels[split.val], predictions["val"]["probs"].numpy()
    aucs = [roc_auc_score(truth[:, j], kept[:, j]) for j in range(truth.shape[1]) if 0 < truth[:, j].sum() < len(truth)]
    assert final["best_val_auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert predictions["best_epoch"] == final["best_epoch"]
    assert TrialPredictions.from_state(predictions).splits["val"].image_keys == predictions["val"]["image_keys"]


@pytest.mark.parametrize("metric, renamed", [("auc", "roc_auc"), ("ap", "average_precision")])
def test_a_metric_renamed_where_it_is_computed_stops_the_trial_there_naming_it(prepared_dir, monkeypatch, metric,
                                                                               renamed):
    """Typed results (issue 29): a metric renamed in trainables/metrics.py, as an edit would. A renamed metric
    (`mae`, `fnr`) used to reach Ray and the store, which dropped it without a word, or meet a KeyError; now the
    trial's first evaluation refuses it, naming both names, before it reports. Since the metric registry
    (vocab.metrics) every other metric is computed under its registered name: the ranking scores are the names
    left in trainables/metrics.py."""
    import trainables.fit as fitting
    import trainables.metrics as metrics

    source = Path(metrics.__file__).read_text()
    assert f'"{metric}"' in source
    edited = types.ModuleType(metrics.__name__)
    exec(compile(source.replace(f'"{metric}"', f'"{renamed}"'), metrics.__file__, "exec"), edited.__dict__)
    for name, value in list(vars(fitting).items()):  # what fit took from trainables.metrics
        if callable(value) and getattr(metrics, name, None) is value:
            monkeypatch.setattr(fitting, name, getattr(edited, name))
    reports = []
    with pytest.raises(RecordError, match=rf"SplitMetrics: macro: unknown metric\(s\) {renamed}; missing {metric} "):
        fit(fit_config(prepared_dir, epochs=1), report=lambda m, s: reports.append(m), log=lambda *_: None)
    assert reports == []


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result(prepared_dir):
    cfg = fit_config(prepared_dir, augment=AUGMENT, schedule="cosine", dropout=0.5)
    uninterrupted = fit_reports(cfg)
    state = uninterrupted[0][1]  # as saved by the Ray adapter after epoch 1
    resumed = fit_reports(cfg, state=state)
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    for key in ("train_loss", "val_auc", "test_auc", "test_ap", "outer_train_mae", "lr"):
        assert resumed[-1][0][key] == uninterrupted[-1][0][key], key
    probs = [run[-1][1]["predictions"]["test"]["probs"] for run in (resumed, uninterrupted)]
    assert torch.equal(*probs)


def test_resuming_survives_a_round_trip_through_torch_save_with_weights_only(prepared_dir, tmp_path):
    cfg = fit_config(prepared_dir, epochs=2, augment=AUGMENT)
    reports = fit_reports(cfg)
    torch.save(reports[0][1], tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = fit_reports(cfg, state=state)
    assert resumed[-1][0]["test_auc"] == reports[-1][0]["test_auc"]
    torch.save(resumed[-1][1], tmp_path / "final.pt")  # predictions are weights_only-loadable too
    assert torch.load(tmp_path / "final.pt", weights_only=True)["predictions"]["test"]["image_keys"]


def test_resuming_from_the_final_checkpoint_reports_the_end_of_trial_result_again(prepared_dir, tmp_path):
    """A driver killed between a trial's last report and Ray's next snapshot restarts it from there."""
    cfg = fit_config(prepared_dir, epochs=2)
    reports = fit_reports(cfg)
    torch.save(reports[-1][1], tmp_path / "final.pt")
    resumed = fit_reports(cfg, state=torch.load(tmp_path / "final.pt", weights_only=True))
    assert len(resumed) == 1  # nothing trained again
    metrics = resumed[0][0]
    assert metrics["completed"] and metrics["epoch"] == 2 and metrics["test_auc"] == reports[-1][0]["test_auc"]
    assert torch.equal(resumed[0][1]["predictions"]["test"]["probs"], reports[-1][1]["predictions"]["test"]["probs"])


def test_early_stopping_stops_at_the_first_epoch_without_improvement(prepared_dir):
    reports = fit_reports(fit_config(prepared_dir, epochs=8, early_stopping=1, lr=3e-3))
    aucs = [m["val_auc"] for m, _ in reports]
    best, stop = aucs[0], None
    for epoch, auc in enumerate(aucs[1:], start=2):
        if not auc > best:
            stop = epoch
            break
        best = auc
    assert stop is not None, f"validation AUC rose for 8 epochs: {aucs}"  # this data and seed do plateau
    assert len(reports) == stop and reports[-1][0]["stop_reason"] == "early_stopping"
    assert reports[-1][0]["best_epoch"] == stop - 1 and reports[-1][0]["completed"]


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_learning_rate_schedules(prepared_dir, schedule):
    reports = fit_reports(fit_config(prepared_dir, epochs=4, schedule=schedule, schedule_patience=0, lr=1e-3))
    rates = [m["lr"] for m, _ in reports]
    if schedule == "cosine":
        assert rates == pytest.approx([1e-3 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(1, 5)])
    else:  # patience 0: every epoch without a new best (ReduceLROnPlateau: above best * (1 + 1e-4)) cuts tenfold
        aucs = [m["val_auc"] for m, _ in reports]
        cuts = sum(not aucs[i] > max(aucs[:i]) * (1 + 1e-4) for i in range(1, 4))
        assert rates[-1] == pytest.approx(1e-3 * 0.1 ** cuts)


def test_mobilenet_v3_predictions_vary_after_a_short_run(prepared_dir):
    # Its batch-norm momentum of 0.01 leaves running statistics at their initial values after a few
    # steps; without re-estimating them every test image got the same probabilities.
    reports = fit_reports(fit_config(prepared_dir, backbone="mobilenet_v3_small", epochs=1, dropout=0.0))
    probs = reports[-1][1]["predictions"]["test"]["probs"]
    assert probs.std(dim=0).mean() > 0.01


def test_batch_norm_statistics_are_exact_averages_over_the_training_images(prepared_dir):
    data = PreparedDataset(prepared_dir)
    split = data.split(0, 0.2, seed=0)
    reports = fit_reports(fit_config(prepared_dir, epochs=2, bn_recalibration=10_000))
    model = build_model("resnet18", len(data.label_names), 0.2)
    model.load_state_dict(reports[0][1]["model"])  # after epoch 1, recalibrated (a training checkpoint)
    first_bn = model.branches[0].trunk[1]
    conv = model.branches[0].trunk[0]
    branch = model.branches[0]
    train = split.train[:len(split.train) - (len(split.train) % 8 == 1)]
    x = torch.from_numpy(data.images[np.sort(train)].astype(np.float32) / 255).unsqueeze(1)
    with torch.no_grad():
        activations = conv((x - branch.mean) / branch.std)
    torch.testing.assert_close(first_bn.running_mean, activations.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_unknown_options_list_the_valid_ones(prepared_dir):
    with pytest.raises(ValueError, match="expected one of .*cosine"):
        fit_reports(fit_config(prepared_dir, schedule="step"))
    with pytest.raises(ValueError, match="expected one of .*co_trained"):
        fit_reports(fit_config(prepared_dir, strategy="ensemble"))


def test_a_validation_split_without_a_defined_auc_stops_with_a_clear_error(prepared_dir, tmp_path):
    copy = tmp_path / "all_negative"
    shutil.copytree(prepared_dir, copy)
    labels = pd.read_csv(copy / "labels.csv")
    labels[PreparedDataset(copy).label_names] = 0
    labels.to_csv(copy / "labels.csv", index=False)
    with pytest.raises(ValueError, match="outer fold 0: the inner validation split .* validation AUC is undefined"):
        fit_reports(fit_config(copy))


def test_masked_labels_train_with_finite_losses(prepared_dir, tmp_path):
    copy = tmp_path / "masked"
    shutil.copytree(prepared_dir, copy)
    labels = pd.read_csv(copy / "labels.csv")
    first = PreparedDataset(copy).label_names[0]
    labels.loc[::3, first] = np.nan  # a third of the first label unknown (e.g. CheXpert U-Ignore)
    labels.to_csv(copy / "labels.csv", index=False)
    assert np.isnan(PreparedDataset(copy).labels[::3, 0]).all()
    for loss in ("bce", "weighted_bce", "batch_weighted_bce"):
        final = fit_reports(fit_config(copy, epochs=1, loss=loss))[-1][0]
        assert np.isfinite(final["train_loss"]) and np.isfinite(final["val_loss"]) and np.isfinite(final["val_auc"])


def test_streamed_and_resident_feeds_train_identically(prepared_dir):
    resident = fit_reports(fit_config(prepared_dir, epochs=1, feed="resident"))[-1][0]
    streamed = fit_reports(fit_config(prepared_dir, epochs=1, feed="stream"))[-1][0]
    assert streamed["train_loss"] == resident["train_loss"] and streamed["test_auc"] == resident["test_auc"]


def test_regular_transfer_pretrains_each_stage_of_the_chain_once(prepared_dir, chexpert_prepared_dir, tmp_path):
    cache, logs = tmp_path / "pretrained", []
    chain = (str(chexpert_prepared_dir), str(prepared_dir))
    for dirs in (chain[:1], chain, chain):
        fit(fit_config(prepared_dir, epochs=1, pretrain_dirs=dirs, pretrain_epochs=1, pretrain_cache=str(cache)),
            report=lambda m, s: None, log=logs.append)
    assert len(list(cache.glob("*.pt"))) == 2  # chexpert, then chexpert -> target
    assert sum(line.startswith("[pretrain] resnet18") for line in logs) == 2


def test_co_trained_pretraining_uses_one_head_per_source(prepared_dir, chexpert_prepared_dir, tmp_path):
    cache = tmp_path / "pretrained"
    final = fit_reports(fit_config(prepared_dir, epochs=1, strategy="co_trained", pretrain_epochs=1, pretrain_cache=str(cache),
                         pretrain_dirs=(str(chexpert_prepared_dir), str(prepared_dir))))[-1][0]
    assert np.isfinite(final["test_auc"])
    (path,) = cache.glob("*co_trained*.pt")
    stage = torch.load(path, weights_only=True)
    assert stage["stage"]["strategy"] == "co_trained" and "trunk.0.weight" in stage["branch"]


def test_mixed_strategy_fine_tunes_two_branches(prepared_dir, chexpert_prepared_dir, tmp_path):
    reports = fit_reports(fit_config(prepared_dir, epochs=1, strategy="mixed", pretrain_epochs=1,
                           pretrain_cache=str(tmp_path), pretrain_dirs=(str(chexpert_prepared_dir),)))
    model = reports[-1][1]["best_model"]
    assert "branches.1.trunk.0.weight" in model and model["head.weight"].shape[1] == 2 * 512
    assert np.isfinite(reports[-1][0]["test_auc"])


def test_a_tiny_run_learns_a_phantom_label(learned_run):
    learnable_dir, final, _ = learned_run
    data = PreparedDataset(learnable_dir)
    per_label = dict(zip(data.label_names, final["test_auc_per_class"]))
    assert max(per_label.values()) > 0.85 and final["test_auc"] > 0.7, f"too little learned: {per_label}"


def test_a_failed_stage_is_recorded_beside_its_weights_and_not_trained_again(prepared_dir, phantom_dir, tmp_path):
    from trainables.pretrain import Stage, StageFailed, ensure_stage, failure_marker, stage_path

    small = build(phantom_dir, phantom_dir / "labels.csv", tmp_path / "small", BuildSettings(size=16, folds=3, seed=0,
                  workers=1), key=TEST_KEY, log=lambda *_: None)
    stage = Stage("resnet18", "scratch", "co_trained", (str(prepared_dir), str(small)), 1, 1e-3, 8, "bce", 0)
    with pytest.raises(ValueError, match="co-trained sources must share one image size"):
        ensure_stage(stage, tmp_path / "cache", torch.device("cpu"), log=lambda *_: None)
    marker = failure_marker(stage_path(stage, tmp_path / "cache"))
    assert "must share one image size" in marker.read_text()
    with pytest.raises(StageFailed, match="failed: ValueError: co-trained sources must share one image size"):
        ensure_stage(stage, tmp_path / "cache", torch.device("cpu"), log=lambda *_: None)


def test_a_finished_trials_checkpoint_keeps_only_what_predict_and_the_report_read(prepared_dir, tmp_path):
    from ray import tune

    from sweeper.callbacks import read_predictions
    from trainables.tune_adapter import PREDICTIONS_FILE, save_checkpoint

    reports = fit_reports(fit_config(prepared_dir, epochs=2))
    training, final = reports[0][1], reports[-1][1]
    assert {"model", "optimizer", "best_model"} <= set(training)  # enough to resume
    assert set(final) == {"config", "epoch", "best_model", "predictions", "final_metrics", "manifest"}
    size = (lambda state: sum(t.numel() * t.element_size() for t in state.values()))
    assert size(final["best_model"]) < 0.51 * size(training["model"])  # half precision
    assert all(t.dtype == torch.float16 for t in final["best_model"].values() if t.is_floating_point())
    # the driver reads the predictions saved beside it as the trainable made them (a TrialPredictions), and a
    # predictions file from before typed records (no best epoch) as before
    save_checkpoint(final, tmp_path)
    kept = final["predictions"]
    old = {k: v for k, v in kept.items() if k != "best_epoch"}
    for saved in (None, old):
        if saved is not None:
            torch.save(saved, tmp_path / PREDICTIONS_FILE)
        splits, runtime = read_predictions(tune.Checkpoint.from_directory(tmp_path))
        assert runtime == kept["runtime"] and set(splits) == {"test", "val"}
        for split, predictions in splits.items():
            predictions = dict(predictions) if isinstance(predictions, dict) else predictions.model_dump()
            assert predictions["image_keys"] == kept[split]["image_keys"]
            np.testing.assert_array_equal(predictions["probs"], kept[split]["probs"].numpy())
            np.testing.assert_array_equal(predictions["labels"], kept[split]["labels"].numpy())


def test_input_size_resizes_what_the_model_sees_and_predict_rebuilds_it_so(prepared_dir):
    from trainables.predict import TrainedModel

    reports = fit_reports(fit_config(prepared_dir, epochs=1, input_size=48))
    final, state = reports[-1]
    assert final["completed"] and state["config"]["input_size"] == 48
    trained = TrainedModel.from_state(state, "cpu")
    assert trained.model.input_size == 48
    data = PreparedDataset(prepared_dir)
    test = data.split(0, 0.2, seed=0).test
    again = engine.predict(trained.model, ImageFeed(data.images, torch.device("cpu")), test, 8,
                           engine.Precision.choose("fp32", torch.device("cpu")))
    np.testing.assert_allclose(again, state["predictions"]["test"]["probs"].numpy(), atol=1e-5)


def test_a_stage_killed_after_its_first_epoch_resumes_there_and_ends_as_an_uninterrupted_one(
        chexpert_prepared_dir, tmp_path):
    """The stage runs in a process that is SIGKILLed once the first epoch's state is on disk; run again, it
    continues after that epoch (it says so) and its weights equal those of a stage never interrupted."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO
    from trainables.pretrain import Stage, ensure_stage, partial_path, stage_path

    stage = Stage("resnet18", "scratch", "regular", (str(chexpert_prepared_dir),), 3, 1e-3, 8, "bce", 0)
    whole = ensure_stage(stage, tmp_path / "whole", torch.device("cpu"), log=lambda *_: None)
    cache = tmp_path / "killed"
    partial = partial_path(stage_path(stage, cache))
    code = (f"import torch; torch.set_num_threads(1)\nfrom trainables.pretrain import Stage, ensure_stage\n"
            f"ensure_stage(Stage(*{tuple(stage.__dict__.values())!r}), {str(cache)!r}, torch.device('cpu'))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not partial.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.is_file() and not stage_path(stage, cache).is_file(), proc.stderr.read()[-2000:]
    assert torch.load(partial, weights_only=True)["epoch"] in (1, 2)
    logs = []
    resumed = ensure_stage(stage, cache, torch.device("cpu"), log=logs.append)
    assert any("resuming after epoch" in line for line in logs), logs
    assert not partial.exists()  # the finished stage does not keep its training state
    a, b = (torch.load(p, weights_only=True)["branch"] for p in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
