"""docs/design.md §5, "A metric": a toy metric declared in a test (specificity at 0.5, tests/results/toy_metric.py)
and registered flows from a real fit to the results DB, the report's tables, its CSV and the pooled statistics, with
no other edit, and equals scikit-learn's on the trial's own predictions. About 4 s: one 2-epoch resnet18 fit on the
conftest's prepared set (24 patients at 32 px), a report without figures and the figure over epochs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import recall_score

from results import stats
from results.analysis import Analysis
from results.figures import accuracy_over_epochs, over_epochs
from results.load import load
from results.query import run_query
from results.render import write
from results.report import build
from results.store import ResultsStore
from tests.helpers import fit_config, fit_reports
from vocab.records import TrialPredictions


def _specificity(truth: np.ndarray, probs: np.ndarray) -> list[float]:
    """scikit-learn's recall of the negatives at 0.5, per class on its known labels (NaN without negatives)."""
    out = []
    for k in range(truth.shape[1]):
        known = ~np.isnan(truth[:, k])
        y, said = truth[known, k], probs[known, k] > 0.5
        out.append(recall_score(y, said, pos_label=0) if (y == 0).any() else np.nan)
    return out


@pytest.fixture
def fitted(toy_metric, prepared_dir):
    """A real trial with the toy metric registered: its epoch reports, result and predictions."""
    reports = fit_reports(fit_config(prepared_dir, epochs=2))
    state = reports[-1][1]
    return [m for m, _ in reports], TrialPredictions.from_state(state["predictions"])


def _stored(url: str, epochs: list[dict], predictions: TrialPredictions) -> None:
    """The trial as the sweep's results callback writes it: started, each epoch, finished with its predictions."""
    store = ResultsStore(url)
    sweep = store.start_sweep("toy", "toy", "", "test", [0], 1, split="random", folds_sha256="ab" * 32)
    store.register_cells(sweep, [{"backbone": "resnet18", "recipe": "scratch", "variant": ""}])
    store.trial_started(sweep, "t", {"backbone": "resnet18", "recipe": "scratch", "variant": "", "fold": 0,
                                     "study": "resnet18/scratch/fold0", "optuna_number": 0, "params": {}})
    for report in epochs:
        store.epoch_reported(sweep, "t", report)
    store.trial_finished(sweep, "t", "COMPLETE", epochs[-1], None, predictions.label_names, dict(predictions.splits))
    store.finish_sweep(sweep, "FINISHED")
    store.engine.dispose()


def test_a_registered_metric_flows_from_a_fit_to_the_db_the_report_and_its_csv(fitted, tmp_path):
    epochs, predictions = fitted
    test = predictions.splits["test"]
    expected = _specificity(test.labels, test.probs.astype(np.float64))
    final = epochs[-1]
    # the trainable computed it, per class and macro, every epoch and at the end
    assert final["test_specificity_per_class"] == pytest.approx(expected, nan_ok=True)
    assert final["test_specificity"] == pytest.approx(np.nanmean(expected))
    assert final["test_specificity_classes"] == int(np.isfinite(expected).sum())
    assert all(0 <= m["val_specificity"] <= 1 for m in epochs)

    url = f"sqlite:///{tmp_path}/results.db"
    _stored(url, epochs, predictions)
    rows = run_query(url, "SELECT split, class_name, value FROM trial_metrics WHERE metric = 'specificity'")
    assert len(rows) == 2 * (1 + len(predictions.label_names))  # test and outer_train, macro and per class
    macro = rows[(rows.split == "test") & (rows.class_name == "__macro__")].value.iloc[0]
    assert macro == pytest.approx(np.nanmean(expected))
    curve = run_query(url, "SELECT epoch, value FROM curve_metrics WHERE metric = 'specificity' ORDER BY epoch")
    assert curve.value.tolist() == pytest.approx([m["val_specificity"] for m in epochs])

    built = build(url, n_boot=20, figures=False)
    tables = {t.key: t for _, part, _ in built.sections for t in part}
    shown = tables["all_metrics_resnet18"]
    assert shown.display["Test specificity at 0.5"].iloc[0] == f"{macro * 100:.2f}%"  # percent, as declared
    assert shown.numbers["specificity_mean"].iloc[0] == pytest.approx(macro)
    write(built, tmp_path / "report")
    csv = pd.read_csv(tmp_path / "report" / "tables" / "source_selection_resnet18.csv")  # every ranked table's CSV
    assert csv["specificity_mean"].iloc[0] == pytest.approx(macro)
    assert list(over_epochs()) == ["val_binary_acc", "val_exact_match", "val_fnr", "val_specificity"]
    analysis = Analysis(load(url), n_boot=0)
    assert analysis.data.curves.val_specificity.tolist() == pytest.approx([m["val_specificity"] for m in epochs])
    assert [f.key for f in accuracy_over_epochs(analysis)] == ["accuracy_over_epochs_resnet18"]  # a panel each

    # the report's pooled statistics compute it from the same counts, with bootstrap weights
    assert stats.point_estimate("specificity", test.labels, test.probs) == pytest.approx(np.nanmean(expected))
    interval = stats.cluster_bootstrap("specificity", test.labels, test.probs, test.patient_keys, n_boot=50)
    assert interval.low <= interval.estimate <= interval.high
