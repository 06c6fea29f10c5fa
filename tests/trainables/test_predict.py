"""Applying a trained trial to new files: the same probabilities as the trial's own evaluation, rejected
files with data_prep's reason, and the choice of model from the results DB."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data_prep.pseudonym import Pseudonymizer
from results.choose import choose_trial
from results.query import QueryError, run_query
from tests.conftest import TEST_KEY
from tests.handmade_sweep import build_sweep
from tests.helpers import fit_config, fit_reports
from trainables.predict import PredictError, TrainedModel, image_files
from trainables.tune_adapter import STATE_FILE


@pytest.mark.parametrize("strategy", ["regular", "mixed"])
def test_a_trained_model_predicts_files_exactly_as_its_trial_evaluated_them(strategy, prepared_dir, phantom_dir,
                                                                            chexpert_prepared_dir, tmp_path):
    extra = {} if strategy == "regular" else dict(strategy="mixed", pretrain_epochs=1, pretrain_cache=str(tmp_path),
                                                  pretrain_dirs=(str(chexpert_prepared_dir),))
    state = fit_reports(fit_config(prepared_dir, epochs=1, **extra))[-1][1]
    (tmp_path / "checkpoint").mkdir()
    torch.save(state, tmp_path / "checkpoint" / STATE_FILE)  # as the Ray adapter saves it
    model = TrainedModel.load(tmp_path / "checkpoint", device="cpu")
    assert len(model.model.branches) == (2 if strategy == "mixed" else 1)

    evaluated = state["predictions"]["test"]
    by_key = dict(zip(evaluated["image_keys"], evaluated["probs"].numpy()))
    files = pd.read_csv(phantom_dir / "labels.csv")["file"]
    pseudonym = Pseudonymizer(TEST_KEY)
    tested = [phantom_dir / f for f in files if pseudonym("image", f) in by_key]
    (tmp_path / "broken.dcm").write_bytes(b"not a DICOM file")
    results = list(model.predict([tmp_path / "broken.dcm", *tested], batch_size=5, workers=1))
    assert results[0].probs is None and "not a readable DICOM file" in results[0].reason
    assert len(results) == len(tested) + 1 and len(tested) == len(by_key) > 5
    for path, probs, reason, _ in results[1:]:
        assert reason is None
        np.testing.assert_allclose(probs, by_key[pseudonym("image", path.relative_to(phantom_dir).as_posix())],
                                   atol=1e-5, err_msg=str(path))


def test_a_checkpoint_that_is_not_a_final_one_is_refused_clearly_and_an_older_final_one_still_loads(prepared_dir,
                                                                                                   tmp_path):
    states = [state for _, state in fit_reports(fit_config(prepared_dir, epochs=2))]
    without_manifest = {k: v for k, v in states[-1].items() if k != "manifest"}  # the data set's size and bits
    for state in (states[0], without_manifest):
        torch.save(state, tmp_path / STATE_FILE)
        with pytest.raises(PredictError, match="not the final checkpoint of a completed trial"):
            TrainedModel.load(tmp_path)
    # a final result as versions before typed records wrote it (val_hamming; before schema 7 no seed-003 curves)
    final = states[-1]["final_metrics"]
    older = {**{k: v for k, v in final.items() if k not in ("val_binary_acc", "val_exact_match", "val_fnr")},
             "val_hamming": 0.2}
    torch.save({**states[-1], "final_metrics": older}, tmp_path / STATE_FILE)
    assert TrainedModel.load(tmp_path, "cpu").thresholds.tolist() == final["thresholds"]
    torch.save({**states[-1], "final_metrics": {**final, "thresholds": final["thresholds"][:-1]}}, tmp_path / STATE_FILE)
    with pytest.raises(PredictError, match=f"holds {len(final['thresholds']) - 1} fitted thresholds for "
                                           f"{len(final['thresholds'])} labels"):
        TrainedModel.load(tmp_path, "cpu")
    (tmp_path / STATE_FILE).write_bytes(b"truncated")
    with pytest.raises(PredictError, match="cannot read the checkpoint"):
        TrainedModel.load(tmp_path)
    with pytest.raises(PredictError, match="no checkpoint at"):
        TrainedModel.load(tmp_path / "elsewhere")


def test_folders_are_searched_for_image_files_and_a_missing_input_is_named(tmp_path):
    for name in ("a.dcm", "b.PNG", "sub/c.jpg", "sub/IM0001", "notes.txt", ".hidden.dcm"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in image_files([tmp_path])]
    assert found == ["a.dcm", "b.PNG", "sub/IM0001", "sub/c.jpg"]
    assert image_files([tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]  # a file named is taken as given
    with pytest.raises(PredictError, match="nowhere.dcm: no such file or folder"):
        image_files([tmp_path / "nowhere.dcm"])


def test_the_model_applied_is_chosen_on_inner_validation_only(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    build_sweep(url)
    selected = run_query(url, "SELECT backbone, recipe, fold, val_auc FROM selected_trials")
    means = selected.groupby(["backbone", "recipe"])["val_auc"].mean()
    backbone, recipe = means.idxmax()
    best = choose_trial(url)
    assert (best.backbone, best.recipe) == (backbone, recipe) and best.sweep == "handmade"
    in_cell = selected[(selected.backbone == backbone) & (selected.recipe == recipe)]
    assert best.val_auc == in_cell["val_auc"].max() and best.fold == in_cell.loc[in_cell.val_auc.idxmax(), "fold"]
    assert best.checkpoint == f"/ray/handmade/{best.trial_key}/checkpoint_000002"

    other = choose_trial(url, "handmade", "densenet121/nih")
    part = selected[(selected.backbone == "densenet121") & (selected.recipe == "nih")]
    assert other.cell == "densenet121/nih" and other.val_auc == part["val_auc"].max()
    with pytest.raises(QueryError, match=r"no cell 'resnet50/nope' .*'densenet121/imagenet'"):
        choose_trial(url, None, "resnet50/nope")
    with pytest.raises(QueryError, match="no sweep|has no completed trial"):
        choose_trial(url, "other")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_predicts_on_the_gpu_as_on_the_cpu(prepared_dir, phantom_dir, tmp_path):
    state = fit_reports(fit_config(prepared_dir, epochs=1))[-1][1]
    torch.save(state, tmp_path / STATE_FILE)
    files = [phantom_dir / f for f in pd.read_csv(phantom_dir / "labels.csv")["file"][:12]]
    cpu = np.stack([p.probs for p in TrainedModel.load(tmp_path, "cpu").predict(files, workers=1)])
    gpu_model = TrainedModel.load(tmp_path, "cuda")
    assert gpu_model.device.type == "cuda"
    gpu = np.stack([p.probs for p in gpu_model.predict(files, batch_size=4, workers=1)])
    np.testing.assert_allclose(gpu, cpu, atol=2e-2)  # bf16 autocast on the GPU when the trial chose it
