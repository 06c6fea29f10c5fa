"""The typed records a trial hands on (vocab.records): flat reports under vocab.names' keys, read back with Ray's
own keys left out by name and anything else unknown, or missing, refused naming it."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from vocab.names import EPOCH_METRICS, FINAL_SPLITS, MACRO_METRICS, PER_CLASS_METRICS, POOLED_METRICS, SPLIT_METRICS
from vocab.records import (RAY_KEYS, EpochReport, RecordError, SplitMetrics, TrialPredictions, TrialResult,
                           parse_report)

LABELS = 3


def _split(value: float = 0.5) -> SplitMetrics:
    return SplitMetrics(macro={m: value for m in SPLIT_METRICS}, per_class={m: [value, np.nan, value] for m in PER_CLASS_METRICS},
                        classes={m: 2 for m in MACRO_METRICS}, undefined=["auc, ap [b]: no positive images among 4"])


def _epoch(epoch: int = 2) -> EpochReport:
    return EpochReport(epoch=epoch, train_loss=0.4, val={m: 0.6 for m in EPOCH_METRICS}, lr=1e-3, best_epoch=1,
                       best_val_auc=0.7, epoch_seconds=3.5, train_images_per_second=90.0, data_wait_seconds=0.1)


def _result() -> TrialResult:
    return TrialResult(**{**dict(_epoch()), "best_val_auc": 0.71}, thresholds=[0.1, 0.2, 0.3], completed=True,
                       splits={"test": _split(0.25), "outer_train": _split(0.75)}, stop_reason="early_stopping")


RAY = {"training_iteration": 2, "time_total_s": 7.1, "time_this_iter_s": 3.5, "done": False, "trial_id": "a1b2",
       "timestamp": 1_700_000_000, "date": "2026-12-07_05-02-44", "pid": 4242, "hostname": "node1", "node_ip": "10.0.0.2",
       "time_since_restore": 7.1, "iterations_since_restore": 2, "checkpoint_dir_name": None,
       "experiment_tag": "1_lr=0.001", "config": {"lr": 1e-3, "study": "resnet18/scratch/fold0"},
       "config/lr": 1e-3, "config/study": "resnet18/scratch/fold0"}


def test_a_trials_result_is_one_flat_report_under_the_metric_keys_and_reads_back_from_rays_result():
    result = _result()
    report = result.to_report()
    assert report["test_auc"] == 0.25 and report["outer_train_fnr_per_class"][0] == 0.75
    assert report["test_auc_classes"] == 2 and report["test_undefined"] == ["auc, ap [b]: no positive images among 4"]
    assert report["val_fnr"] == 0.6 and report["best_val_auc"] == 0.71 and report["completed"] is True
    assert not any(isinstance(v, dict) for v in report.values())  # Ray flattens nested dicts: none
    assert len(report) == 14 + 1 + len(FINAL_SPLITS) * (len(SPLIT_METRICS) + len(PER_CLASS_METRICS)
                                                        + len(MACRO_METRICS) + 1) + 2
    assert TrialResult.from_report({**report, **RAY}) == result
    assert parse_report({**report, **RAY, "node_id": "n1"}) == result.model_copy(update={"node_id": "n1"})
    assert parse_report({**_epoch().to_report(), **RAY}) == _epoch()
    assert parse_report({**RAY, "val_hamming": 0.2}) is None  # nothing of ours: failed before its first report
    assert parse_report({**_epoch().to_report(), "val_hamming": 0.2}) == _epoch()  # an earlier version's key


def test_an_unknown_or_missing_key_is_refused_naming_it():
    report = _result().to_report()
    with pytest.raises(RecordError, match="TrialResult report: unknown key.s. test_miss_rate; missing test_fnr$"):
        TrialResult.from_report({**{k: v for k, v in report.items() if k != "test_fnr"}, "test_miss_rate": 0.1})
    with pytest.raises(RecordError, match="EpochReport report: missing val_auc"):
        parse_report({k: v for k, v in _epoch().to_report().items() if k != "val_auc"})
    with pytest.raises(RecordError, match="EpochReport report: unknown key.s. completed"):
        parse_report({**_epoch().to_report(), "completed": False})
    with pytest.raises(RecordError, match=r"EpochReport: val: unknown metric\(s\) hamming; missing fnr"):
        EpochReport(**{**dict(_epoch()), "val": {**{m: 0.5 for m in EPOCH_METRICS if m != "fnr"}, "hamming": 0.1}})
    with pytest.raises(RecordError, match=r"TrialResult: splits.test: SplitMetrics: per_class: missing mae \(expected exactly ap, auc"):
        TrialResult(**{**dict(_result()), "splits": {"outer_train": _split(), "test": {
            **_split().model_dump(), "per_class": {m: [0.5] * LABELS for m in PER_CLASS_METRICS if m != "mae"}}}})
    with pytest.raises(RecordError, match=r"2 thresholds, but per-class metrics of \{'test': 3, 'outer_train': 3\}"):
        TrialResult(**{**dict(_result()), "thresholds": [0.1, 0.2]})
    with pytest.raises(RecordError, match="auc_classes is 3, but auc is defined for 2 classes"):
        SplitMetrics(**{**_split().model_dump(), "classes": {**{m: 2 for m in MACRO_METRICS}, "auc": 3}})
    with pytest.raises(RecordError, match="stop_reason: Input should be 'epochs' or 'early_stopping'"):
        TrialResult(**{**dict(_result()), "stop_reason": "pruned"})


def test_the_keys_left_out_as_rays_are_rays_and_none_of_ours():
    from ray.tune.result import AUTO_RESULT_KEYS, DEBUG_METRICS, DONE, EXPERIMENT_TAG, SHOULD_CHECKPOINT

    assert {*AUTO_RESULT_KEYS, *DEBUG_METRICS, DONE, EXPERIMENT_TAG, SHOULD_CHECKPOINT} <= RAY_KEYS
    assert not RAY_KEYS & set(TrialResult.layout())


def test_the_metric_names_are_one_list_each():
    assert set(EPOCH_METRICS) <= set(SPLIT_METRICS) and not set(MACRO_METRICS) & set(POOLED_METRICS)
    assert SPLIT_METRICS[:len(PER_CLASS_METRICS)] == PER_CLASS_METRICS == (*MACRO_METRICS, *POOLED_METRICS)


def test_predictions_keep_the_checkpoints_layout_and_refuse_what_does_not_fit():
    rng = np.random.default_rng(0)
    split = {"image_keys": ["i1", "i2"], "patient_keys": ["p1", "p1"], "labels": np.array([[1.0, np.nan, 0.0]] * 2),
             "probs": rng.random((2, LABELS)).astype(np.float32)}
    state = {"label_names": ["a", "b", "c"], "best_epoch": 3, "runtime": {
        "threads": 1, "device": "cpu", "precision": "float32", "torch": "2.14", "torchvision": "0.29", "numpy": "2.4",
        "dataset_id": "target-0123", "folds_sha256": "ab" * 32, "pretrained_sha256": None}, "test": split, "val": split}
    kept = TrialPredictions.from_state(state)
    again = kept.to_state()
    assert again.keys() == state.keys() and again["runtime"] == state["runtime"]
    np.testing.assert_array_equal(again["test"]["labels"], split["labels"])
    assert again["val"]["probs"].dtype == np.float32 and kept.splits["val"].probs is split["probs"]  # no copy
    with pytest.raises(RecordError, match=r"unknown key.s. \['outer_train'\], missing \['val'\]"):
        TrialPredictions.from_state({**{k: v for k, v in state.items() if k != "val"}, "outer_train": split})
    with pytest.raises(RecordError, match=r"probs of shape \(2, 2\) and labels of shape \(2, 3\) do not match 2 image"):
        TrialPredictions.from_state({**state, "val": {**split, "probs": np.zeros((2, 2))}})
    with pytest.raises(RecordError, match="test: probabilities for 3 labels, but 2 label names"):
        TrialPredictions.from_state({**state, "label_names": ["a", "b"]})
    with pytest.raises(RecordError, match="TrialPredictions: runtime: Runtime: threads: Field required"):
        TrialPredictions.from_state({**state, "runtime": {k: v for k, v in state["runtime"].items() if k != "threads"}})


def test_records_import_neither_torch_nor_ray():
    """results reads them and must stay importable without torch (a report from a copied DB)."""
    code = "import sys, vocab.records; assert not {'torch', 'ray'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
