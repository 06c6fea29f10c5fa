"""A finished sweep as the CLI leaves it (the session's `--spec paper --smoke`): local Ray, a real SQLite
file, the report, predict, query, resume and the privacy scan; and a sweep whose trials fail."""
from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from sklearn.metrics import roc_curve

from results.operating_points import fit_threshold
from results.query import run_query
from results.load import load
from results.analysis import Analysis
from phantom.generate import PSEUDONYM_KEY

pytestmark = pytest.mark.slow

RECIPES = ("imagenet", "chexpert", "nih", "imagenet_chexpert", "imagenet_nih", "imagenet_chexpert_mixed",
           "imagenet_nih_mixed", "chexpert_nih_cotrained")
CELLS = {(b, r) for b in ("resnet50", "densenet121") for r in RECIPES}  # the paper spec's grid
NAME = "paper-smoke"  # 2 folds at 32 px (sweeper/overrides.py SMOKE), 1 trial of 1 epoch (tests/smoke_sweeps.py)
MINE = f"sweep_id = (SELECT id FROM sweeps WHERE name = '{NAME}')"  # the DB holds zhou2020's smoke sweep too
ZHOU = "zhou2020-smoke"  # 16 studies (variants x the holdout) of 2 trials each: a second trial, and ASHA's pruning


@pytest.fixture
def paper_sweep(smoke_sweeps):
    """(home, DB, the sweeps) of the session's `--spec paper --smoke` (tests/smoke_sweeps.py)."""
    return smoke_sweeps.home, smoke_sweeps.db, smoke_sweeps


def test_db_holds_exactly_one_result_per_cell_fold_and_trial(paper_sweep):
    _, db, _ = paper_sweep
    for sweep, studies, trials in ((NAME, len(CELLS) * 2, 1), (ZHOU, 16, 2)):
        rows = run_query(db, "SELECT backbone, recipe, variant, fold, optuna_number, status, COUNT(*) AS n FROM "
                             f"trial_summary WHERE sweep = '{sweep}' GROUP BY backbone, recipe, variant, fold, "
                             "optuna_number, status")
        assert len(rows) == studies * trials and (rows["n"] == 1).all(), sweep
        assert set(rows["status"]) <= {"COMPLETE", "PRUNED"}
        per_study = rows.groupby(["backbone", "recipe", "variant", "fold"])["optuna_number"].apply(sorted)
        assert len(per_study) == studies and all(numbers == list(range(trials)) for numbers in per_study), sweep
        selected = run_query(db, "SELECT COUNT(*) AS n FROM selected_trials WHERE sweep_id = (SELECT id FROM sweeps "
                                 f"WHERE name = '{sweep}')")
        assert selected.n[0] == studies, sweep


def test_complete_trials_ran_to_their_end_and_carry_the_end_of_trial_evaluation(paper_sweep):
    _, db, _ = paper_sweep
    trials = run_query(db, f"SELECT id, status, epochs_run FROM sweep_trials WHERE {MINE}")
    assert ((trials["status"] == "COMPLETE") == (trials["epochs_run"] == 1)).all(), trials  # 1 epoch (smoke_sweeps)
    evaluated = run_query(db, "SELECT DISTINCT trial_id, split FROM trial_metrics WHERE split != 'val' AND "
                              f"trial_id IN (SELECT id FROM sweep_trials WHERE {MINE})")
    complete = set(trials.loc[trials["status"] == "COMPLETE", "id"])
    assert set(evaluated["trial_id"]) == complete
    assert set(evaluated["split"]) == {"test", "outer_train"}


def test_optuna_studies_live_in_the_results_db_and_agree_with_the_trials(paper_sweep):
    import optuna

    _, db, _ = paper_sweep
    summaries = optuna.get_all_study_summaries(storage=db)
    names = sorted(s.study_name for s in summaries if s.study_name.startswith(f"{NAME}/"))
    assert len(names) == len(CELLS) * 2
    trials = run_query(db, f"SELECT study, optuna_number, status FROM sweep_trials WHERE {MINE}")
    for row in trials.itertuples(index=False):
        frozen = optuna.load_study(study_name=f"{NAME}/{row.study}", storage=db).trials[row.optuna_number]
        assert frozen.state.name == {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED"}[row.status], row


def test_report_lists_every_cell(paper_sweep):
    _, db, sweeps = paper_sweep
    cells = Analysis(load(db, NAME), n_boot=0).cells
    assert set(zip(cells["backbone"], cells["recipe"])) == CELLS
    assert (cells["folds_done"] == 2).all() and cells["auc_mean"].notna().all() and cells["auc_pooled"].notna().all()
    printed = sweeps.cli("results.report", "--db", db, "--sweep", NAME, "--bootstrap", "50").stdout
    assert "### Source data selection: resnet50" in printed and "| 2/2 |" in printed
    assert "### Source data selection: resnet50" in sweeps.stdout["paper"]  # the sweep printed it too
    home, _, _ = paper_sweep
    page = (home / "reports" / NAME / "report.html").read_text()  # and wrote it whole
    assert page.count("<table>") >= 3 and page.count("data:image/png;base64,") >= 4
    assert "<h2>Data set target (" in page and "<h2>Data set nih (" in page  # the data sets it learned from
    assert "<h2>Explanations: Grad-CAM on test images</h2>" in page  # and what each cell's model looks at
    figures = home / "reports" / NAME / "figures"
    assert sorted(p.name for p in figures.glob("gradcam_*.png")) == sorted(
        f"gradcam_{b}_{r}.png" for b, r in CELLS)


def test_every_complete_trial_stored_its_test_and_validation_predictions_and_the_plan_is_recorded(paper_sweep):
    _, db, _ = paper_sweep
    stored = run_query(db, "SELECT t.id, t.status, p.split, p.image_key FROM sweep_trials t "
                           f"LEFT JOIN test_predictions p ON p.trial_id = t.id WHERE t.{MINE}")
    for (trial, status), rows in stored.groupby(["id", "status"]):
        images = {split: set(part["image_key"]) for split, part in rows.dropna(subset=["split"]).groupby("split")}
        if status == "COMPLETE":  # the outer test fold and the inner validation split: disjoint, both there
            assert set(images) == {"test", "val"} and images["test"] and images["val"], trial
            assert not images["test"] & images["val"], trial
        else:
            assert images == {}, trial
    cells = run_query(db, f"SELECT backbone, recipe, strategy, pretrain_artefact FROM cells WHERE {MINE}")
    assert set(zip(cells["backbone"], cells["recipe"])) == CELLS
    artefacts = run_query(db, f"SELECT name, status FROM pretrain_artefacts WHERE {MINE}")
    assert set(artefacts["status"]) == {"READY"}
    assert set(cells["pretrain_artefact"].dropna()) == set(artefacts["name"])
    home, _, _ = paper_sweep
    targets = [d for d in (home / "prepared").iterdir() if d.name.startswith("phantom_target-")]  # zhou2020's too
    digests = {hashlib.sha256((d / "folds.csv").read_bytes()).hexdigest() for d in targets}
    ((split, digest),) = run_query(db, f"SELECT split, folds_sha256 FROM sweeps WHERE name = '{NAME}'").values
    assert split == "random" and digest in digests


def test_learning_curves_hold_seed_003s_metrics_for_every_epoch(paper_sweep):
    _, db, _ = paper_sweep
    epochs = run_query(db, "SELECT COUNT(*) AS n FROM learning_curves").n[0]
    defined = run_query(db, "SELECT metric, COUNT(value) AS n FROM curve_metrics WHERE metric IN ('binary_acc', "
                            "'exact_match') GROUP BY metric ORDER BY metric")  # rows since schema 11
    assert defined.n.tolist() == [epochs] * 2 and epochs > 0


def test_storage_keeps_one_slim_checkpoint_per_completed_trial_and_none_of_a_pruned_one(paper_sweep):
    home, db, _ = paper_sweep
    trials = run_query(db, "SELECT s.name AS sweep, t.trial_key, t.status, t.checkpoint FROM sweep_trials t JOIN "
                           f"sweeps s ON s.id = t.sweep_id WHERE s.name IN ('{NAME}', '{ZHOU}')")
    for trial in trials.itertuples():
        kept = sorted((home / "ray" / trial.sweep).glob(f"{trial.trial_key}/checkpoint_*"))
        if trial.status == "COMPLETE":
            assert [str(k) for k in kept] == [trial.checkpoint]
            state = torch.load(kept[0] / "state.pt", weights_only=True)
            assert set(state) == {"config", "epoch", "best_model", "predictions", "final_metrics", "manifest"}
        else:
            assert kept == [], trial
    assert (trials["status"] == "PRUNED").any()


def test_query_cli_prints_rows(paper_sweep):
    _, db, _ = paper_sweep
    proc = paper_sweep[2].cli("results.query", "--db", db,
                              f"SELECT COUNT(*) AS n FROM sweep_trials t JOIN sweeps s ON s.id = t.sweep_id "
                              f"WHERE s.name = '{NAME}'")
    assert proc.returncode == 0 and proc.stdout.split() == ["n", str(len(CELLS) * 2)]


def test_predict_applies_a_cells_chosen_model_to_files_as_its_trial_evaluated_them(paper_sweep, tmp_path):
    """The CLI from the DB: the cell's trial best on inner validation, its checkpoint in Ray's storage, the raw
    phantom DICOMs decoded as the data set was built; a junk file is rejected and the rest predicted."""
    from data_prep.pseudonym import Pseudonymizer
    from results.choose import choose_trial

    home, db, _ = paper_sweep
    raw = next((home / "phantom").glob("target-*-seed0"))
    (tmp_path / "junk.dcm").write_bytes(b"junk")
    out = tmp_path / "predictions.csv"
    proc = paper_sweep[2].cli("sweeper.predict", "--db", db, "--sweep", NAME, "--cell", "resnet50/chexpert", str(raw), str(tmp_path / "junk.dcm"),
                "--out", str(out), "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen = choose_trial(db, NAME, "resnet50/chexpert")
    assert f"trial {chosen.trial_key}" in proc.stderr and "images decoded at 32 px, 8-bit, on cpu" in proc.stderr
    rows = pd.read_csv(out, keep_default_na=False)
    table = pd.read_csv(raw / "labels.csv")
    assert len(rows) == len(table) + 1 and "not a readable DICOM" in rows.iloc[-1]["rejected"]
    assert f"{len(table)} image(s) predicted, 1 rejected" in proc.stderr
    evaluated = run_query(db, f"SELECT p.image_key, p.class_name, p.prob FROM test_predictions p JOIN sweep_trials t "
                              f"ON t.id = p.trial_id WHERE t.trial_key = '{chosen.trial_key}' AND p.split = 'test'")
    evaluated = evaluated.pivot(index="image_key", columns="class_name", values="prob")
    pseudonym = Pseudonymizer(PSEUDONYM_KEY)  # a sweep's phantom sets: the public phantom key
    rows["image_key"] = [pseudonym("image", Path(f).relative_to(raw).as_posix()) if not r else ""
                         for f, r in zip(rows["file"], rows["rejected"])]
    mine = rows.set_index("image_key").loc[evaluated.index, evaluated.columns].astype(float)
    assert len(mine) > 3
    # float32 noise of other batch compositions through resnet50 reaches 2e-5; a decoding or preprocessing
    # difference moves probabilities by far more than 1e-4
    np.testing.assert_allclose(mine.to_numpy(), evaluated.to_numpy(), atol=1e-4)
    thresholds = run_query(db, f"SELECT m.class_name, m.value FROM trial_metrics m JOIN sweep_trials t ON t.id = "
                               f"m.trial_id WHERE t.trial_key = '{chosen.trial_key}' AND m.metric = 'threshold'")
    predicted = mine.to_numpy() > thresholds.set_index("class_name")["value"].loc[evaluated.columns].to_numpy()
    files = [raw / f for f in table["file"][:2]]
    assert "thresholds: the trial's own (its training prevalence per label)" in proc.stderr
    explained = paper_sweep[2].cli("sweeper.predict", "--db", db, "--sweep", NAME, "--cell", "resnet50/nih", *map(str, files),
                     "--explain", str(tmp_path / "cam"), "--layers", str(tmp_path / "layers"), "--workers", "1",
                     "--threshold", "youden")
    assert explained.returncode == 0, explained.stderr[-3000:]
    # Youden's thresholds, fitted on that trial's inner-validation predictions as the DB holds them
    nih = choose_trial(db, NAME, "resnet50/nih")
    val = run_query(db, f"SELECT p.image_key, p.class_name, p.prob, p.target FROM test_predictions p JOIN sweep_trials t "
                        f"ON t.id = p.trial_id WHERE t.trial_key = '{nih.trial_key}' AND p.split = 'val'")
    fitted = {}
    for name, part in val.groupby("class_name"):
        known = part.dropna(subset=["target"])
        if 0 < known.target.sum() < len(known):
            fitted[name] = fit_threshold("youden", known.target, known.prob)
            fpr, tpr, _ = roc_curve(known.target, known.prob)  # the best point of scikit-learn's curve
            said = known.prob > fitted[name]
            assert (said & (known.target == 1)).sum() / (known.target == 1).sum() - (
                said & (known.target == 0)).sum() / (known.target == 0).sum() == pytest.approx((tpr - fpr).max())
    assert fitted and f"thresholds: youden, fitted on the trial's {val.image_key.nunique()} inner-validation images" \
        in explained.stderr
    assert all(f"{name} {t:.3f}" in explained.stderr for name, t in fitted.items())
    heatmaps = sorted(p.name for p in (tmp_path / "cam").iterdir())
    assert {name[:5] for name in heatmaps} == {"00000", "00001"} and all(n.endswith(".png") for n in heatmaps)
    assert sorted(p.name for p in (tmp_path / "layers").iterdir()) == [f"0000{i}_{f.stem}" for i, f in enumerate(files)]
    assert len(list((tmp_path / "layers").glob("*/branches.0.trunk.*.png"))) == 2 * 6
    labels = rows.set_index("image_key").loc[evaluated.index, "predicted"]
    assert [set(filter(None, p.split("|"))) for p in labels] == [
        {c for c, yes in zip(evaluated.columns, row) if yes} for row in predicted]


def test_the_specs_external_set_was_evaluated_for_every_cell_and_the_report_has_every_section(paper_sweep):
    """--set data.external.elsewhere.location=phantom:target: after the sweep, each cell's fold models and
    fold ensemble on films of other patients; the report then has each of issue 21's sections."""
    _, db, sweeps = paper_sweep
    rows = run_query(db, f"SELECT backbone, recipe, model, COUNT(DISTINCT fold) AS folds, COUNT(DISTINCT image_key) "
                         f"AS images FROM external_results WHERE sweep = '{NAME}' AND external = 'elsewhere' "
                         f"AND tta = 'none' GROUP BY backbone, recipe, model")
    assert set(zip(rows.backbone, rows.recipe)) == CELLS
    assert set(rows[rows.model == "fold"].folds) == {2} and set(rows[rows.model == "ensemble"].folds) == {0}
    (sets,) = run_query(db, "SELECT e.images, e.left_out FROM external_sets e JOIN sweeps s ON s.id = e.sweep_id "
                            f"WHERE s.name = '{NAME}'").values.tolist()
    assert set(rows.images) == {sets[0]} and json.loads(sets[1]) == []  # the target's own labels, none left out
    page = (sweeps.report("paper") / "report.md").read_text()
    for heading in ("## Operating points", "## Calibration", "## Subgroups", "## External validation",
                    "### External validation on elsewhere: resnet50", "vs first: DeLong p (Holm-adjusted)",
                    "bootstrap p, Holm-adjusted", "Reliability diagram"):
        assert heading in page, heading


def test_evaluate_applies_fold_models_and_their_ensemble_to_an_external_set_and_the_report_compares(paper_sweep,
                                                                                                      tmp_path, capsys):
    """NIH-like films (a prepared set no resnet50/chexpert trial saw) as an external set, mapped onto the target's
    labels with the shipped NIH mapping: each fold model's probabilities are its own predict_prepared, the
    ensemble their mean, TTA rows apart, and the report's table shows them."""
    from data_prep.dataset import PreparedDataset
    from results.choose import cell_models
    from results.render import to_markdown
    from results.report import build
    from sweeper.evaluate import main as evaluate_main
    from sweeper.predict import read_checkpoint
    from trainables.predict import TrainedModel

    home, db, sweeps = paper_sweep
    (nih,) = (home / "prepared").glob("phantom_nih-*")
    cell = "resnet50/chexpert"
    for tta in ("none", "hflip"):
        done = sweeps.cli("sweeper.evaluate", "--db", db, "--sweep", NAME, "--external", f"nih={nih}",
                          "--labels", "nih=nih_as_seed000_target", "--cell", cell, "--tta", tta, "--device", "cpu")
        assert done.returncode == 0, done.stderr[-3000:]
    assert "cardiac hypertrophy (as Cardiomegaly)" in done.stdout
    assert "left out (no counterpart): aortic sclerosis/calcification" in done.stdout
    rows = run_query(db, f"SELECT model, fold, tta, image_key, class_name, prob, target FROM external_results "
                         f"WHERE sweep = '{NAME}' AND external = 'nih'")
    data = PreparedDataset(nih)
    members = cell_models(db, NAME, cell)
    assert set(rows.fold.dropna()) == {m.fold for m in members} and set(rows.tta) == {"none", "hflip"}
    for tta in ("none", "hflip"):
        part = rows[rows.tta == tta]
        wide = {(m, f): g.pivot(index="image_key", columns="class_name", values="prob")
                for (m, f), g in part.groupby([part.model, part.fold.fillna(-1)])}
        own = []
        for chosen in members:
            model = TrainedModel.load(read_checkpoint(chosen.checkpoint), "cpu")
            probs = model.predict_prepared(data, tta)
            stored = wide[("fold", chosen.fold)].loc[list(data.image_keys)]
            np.testing.assert_allclose(stored.to_numpy(),
                                       probs[:, [model.label_names.index(c) for c in stored.columns]], atol=1e-6)
            own.append(stored.to_numpy())
        ensemble = wide[("ensemble", -1)].loc[list(data.image_keys)]
        np.testing.assert_allclose(ensemble.to_numpy(), np.mean(own, axis=0), atol=1e-6)
    truth = rows[(rows.model == "ensemble") & (rows.tta == "none") & (rows.class_name == "cardiac hypertrophy")]
    cardiomegaly = dict(zip(data.image_keys, data.labels[:, data.label_names.index("Cardiomegaly")]))
    assert truth.target.tolist() == [cardiomegaly[k] for k in truth.image_key]
    report = to_markdown(build(db, NAME, n_boot=20, figures=False), figure_dir=None)
    assert "### External validation on nih: resnet50" in report
    assert "| chexpert | fold ensemble + TTA hflip |" in report
    capsys.readouterr()
    assert evaluate_main(["--db", db, "--sweep", NAME, "--external", f"nih={nih}", "--cell", cell]) == 2
    assert "give a mapping with --mapping nih=MAPPING.toml" in capsys.readouterr().err
    # predict --ensemble --tta hflip on raw files: the mean of each fold model's own flipped-and-averaged predict
    raw = next((home / "phantom").glob("target-*-seed0"))
    files = sorted(raw.rglob("*.dcm"))[:3]
    out = tmp_path / "ensemble.csv"
    done = sweeps.cli("sweeper.predict", "--db", db, "--sweep", NAME, "--cell", cell, "--ensemble", "--tta", "hflip",
                      *map(str, files), "--out", str(out), "--workers", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"fold ensemble: the mean of {len(members)} models" in done.stderr and "test-time augmentation: hflip" \
        in done.stderr
    each = []
    for chosen in members:
        model = TrainedModel.load(read_checkpoint(chosen.checkpoint), "cpu")
        each.append(np.stack([p.probs for p in model.predict(files, workers=1, tta="hflip")]))
    written = pd.read_csv(out)[model.label_names].to_numpy()
    np.testing.assert_allclose(written, np.mean(each, axis=0), atol=1e-5)


TENSOR_STORAGE = re.compile(r"/data/\d+$")


def _searchable_bytes(path) -> bytes:
    """A file's bytes; for a torch checkpoint (a zip), every member but the raw tensor storages,
    which hold numbers only (strings such as configs live in the member data.pkl)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return b"".join(archive.read(m) for m in archive.namelist() if not TENSOR_STORAGE.search(m))
    return path.read_bytes()


def test_no_planted_identifier_reaches_any_output(paper_sweep):
    home, _, sweeps = paper_sweep
    planted = set()
    for path in (home / "phantom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        planted |= {str(v).encode() for v in (ds.PatientID, ds.PatientName, ds.AccessionNumber, ds.StudyInstanceUID)}
        planted |= {str(v).encode() for v in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.ReferringPhysicianName,
                                               ds.RequestAttributesSequence[0].RequestedProcedureID)}
        # (not the birth date: 8 digits can occur by chance in pixel bytes)
    outputs = [p for p in home.rglob("*") if p.is_file() and "phantom" not in p.relative_to(home).parts]
    logs = [p for p in Path(sweeps.env["RAY_TMPDIR"]).rglob("*") if p.is_file() and not p.is_socket()]
    assert any(p.name == "results.db" for p in outputs) and any(p.suffix == ".npy" for p in outputs)
    assert any(zipfile.is_zipfile(p) for p in outputs)  # checkpoints are among the outputs
    assert any(p.name == "report.html" for p in outputs) and any(p.suffix == ".tex" for p in outputs)
    assert any(p.suffix in (".out", ".err", ".log") for p in logs)  # Ray's worker and driver logs
    for path in outputs + logs:
        data = _searchable_bytes(path)
        assert not [p for p in planted if p in data], f"identifier found in {path}"
    for stream in (*sweeps.stdout.values(), *sweeps.stderr.values()):  # what the sweeps printed
        assert not [p for p in planted if p.decode() in stream]
    print(f"[privacy] {len(planted)} planted identifiers, {len(outputs) + len(logs)} files and the sweep's "
          f"output scanned: none found")


def test_resuming_a_finished_sweep_adds_nothing(paper_sweep):
    """No trial, and no external evaluation: what the first run stored is kept."""
    home, db, sweeps = paper_sweep
    before = run_query(db, f"SELECT COUNT(*) FROM sweep_trials WHERE {MINE}").iloc[0, 0]
    external = f"SELECT COUNT(*) FROM external_predictions e JOIN external_sets s ON s.id = e.external_id WHERE s.{MINE}"
    stored = run_query(db, external).iloc[0, 0]
    proc = sweeps.cli("sweeper.run", *sweeps.run_args("paper"), "--resume", "--bootstrap", "0", "--no-report-images")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_query(db, f"SELECT COUNT(*) FROM sweep_trials WHERE {MINE}").iloc[0, 0] == before == len(CELLS) * 2
    # nor predicts the external set again: every cell's stored predictions come from its selected trials
    assert proc.stdout.count("stored from its selected trials already, kept") == len(CELLS), proc.stdout[-3000:]
    assert run_query(db, external).iloc[0, 0] == stored > 0


# Failing trials (recorded with their error, the rest finish, exit 1): the toy source kind's sweep in
# tests/data_prep/test_source_kinds.py, which fails some of its trials on purpose.


def test_selection_reads_the_validation_auc_of_the_predictions_it_keeps(paper_sweep):
    """The trial a (cell, fold) reports is chosen on the inner-validation AUC of exactly the weights it keeps
    (half precision), recomputed here from the stored validation predictions with scikit-learn; Optuna was
    told the same value."""
    import optuna
    from sklearn.metrics import roc_auc_score

    _, db, _ = paper_sweep
    recorded = run_query(db, "SELECT t.id, t.study, t.optuna_number, m.value FROM sweep_trials t JOIN trial_metrics m "
                             "ON m.trial_id = t.id AND m.split = 'val' AND m.metric = 'auc' AND m.class_name = "
                             f"'__macro__' WHERE t.status = 'COMPLETE' AND t.{MINE}")
    val = run_query(db, "SELECT trial_id, image_key, class_name, prob, target FROM test_predictions WHERE split = 'val'")
    assert len(recorded) > 10
    for row in recorded.itertuples(index=False):
        aucs = [roc_auc_score(part.target, part.prob) for _, part in
                val[val.trial_id == row.id].dropna(subset=["target"]).groupby("class_name")
                if 0 < part.target.sum() < len(part)]
        assert row.value == pytest.approx(np.mean(aucs), abs=1e-12), row
        told = optuna.load_study(study_name=f"{NAME}/{row.study}", storage=db).trials[row.optuna_number].value
        assert told == pytest.approx(row.value, abs=1e-12), row


def test_a_selected_trial_rerun_from_what_the_db_records_gives_the_same_predictions(paper_sweep):
    """sweeper.rerun trains the selected trial of a pretrained cell again outside Ray, from the FitConfig and
    runtime record the DB holds (the pretrained weights checked by their SHA-256), and gets every stored
    test and validation probability back; a prepared set other than the one recorded is refused."""
    home, db, sweeps = paper_sweep
    records = run_query(db, f"SELECT fit_config, runtime FROM sweep_trials WHERE status = 'COMPLETE' AND {MINE}")
    assert records.notna().all().all()
    config, runtime = (json.loads(v) if isinstance(v, str) else v for v in records.iloc[0])
    assert {"threads", "precision", "torch", "dataset_id", "pretrained_sha256"} <= set(runtime)
    again = sweeps.cli("sweeper.rerun", "--db", db, "--sweep", NAME, "--cell", "resnet50/nih", "--fold", "1")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "[rerun] test:" in again.stdout and "[rerun] val:" in again.stdout
    assert "the same predictions (every probability within 1e-06)" in again.stdout
    other = next(d for d in (home / "prepared").iterdir()
                 if (d / "manifest.json").is_file() and d.name != Path(config["data_dir"]).name)
    refused = sweeps.cli("sweeper.rerun", "--db", db, "--sweep", NAME, "--cell", "resnet50/nih", "--fold", "1",
                         "--data", f"target={other}")
    assert refused.returncode == 2 and "give the same prepared set with --data target=DIR" in refused.stderr
