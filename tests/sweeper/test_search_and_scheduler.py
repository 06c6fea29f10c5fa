"""One Optuna study per (cell, fold), asked round-robin; ASHA brackets never mix studies."""
from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from sweeper.scheduler import PerStudyASHA
from sweeper.search import PerStudyOptunaSearcher, StudyPlan, study_seed
from tests.handmade_sweep import epoch_report, trial_result
from vocab.records import RecordError

SPACE = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "dropout": FloatDistribution(0.0, 0.5)}


def _ended(best_val_auc: float) -> dict:
    """A completed trial's result as Ray passes it to the searcher."""
    return trial_result(2, best_val_auc=best_val_auc)


def _searcher(n_studies=2, n_trials=2):
    plans = [StudyPlan(key=f"cell{i}/fold0", config={"backbone": f"b{i}"}, n_trials=n_trials) for i in range(n_studies)]
    return PerStudyOptunaSearcher(plans, SPACE, "val_auc", "max")


def test_every_study_gets_its_budget_round_robin_then_finished():
    searcher = _searcher()
    configs = [searcher.suggest(f"t{i}") for i in range(4)]
    assert [c["study"] for c in configs] == ["cell0/fold0", "cell1/fold0"] * 2
    assert all(1e-4 <= c["lr"] <= 1e-2 and 0 <= c["dropout"] <= 0.5 for c in configs)
    assert configs[0]["backbone"] == "b0" and configs[1]["backbone"] == "b1"
    assert searcher.suggest("t4") == "FINISHED"


def test_studies_are_seeded_from_their_key_so_first_suggestions_differ():
    searcher = _searcher()
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert study_seed("cell0/fold0", 0) != study_seed("cell1/fold0", 0)
    assert first["lr"] != second["lr"]


def test_completed_pruned_and_failed_trials_are_told_to_optuna():
    searcher = _searcher(n_studies=1, n_trials=3)
    for t in ("done", "stopped", "broken"):
        searcher.suggest(t)
    for epoch in (1, 2):
        searcher.on_trial_result("stopped", {"epoch": epoch, "val_auc": 0.6})
    searcher.on_trial_complete("done", trial_result(2, epoch=4, best_val_auc=0.9, val_auc=0.85))
    searcher.on_trial_complete("stopped", epoch_report(epoch=2, best_val_auc=0.6, val_auc=0.6))
    searcher.on_trial_complete("broken", None, error=True)
    trials = searcher.studies["cell0/fold0"].trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].value == 0.9 and trials[1].intermediate_values == {1: 0.6, 2: 0.6}


def test_a_trial_end_that_is_not_a_trainables_record_is_refused_naming_the_key():
    """What used to be told COMPLETE as long as it had `best_val_auc` and `completed` (issue 29)."""
    searcher = _searcher(n_studies=1, n_trials=1)
    searcher.suggest("t0")
    with pytest.raises(RecordError, match="TrialResult report: missing epoch, train_loss, val_ap, "):
        searcher.on_trial_complete("t0", {"best_val_auc": 0.8, "completed": True})


def test_searcher_state_survives_save_and_restore(tmp_path):
    searcher = _searcher()
    searcher.suggest("t0")
    searcher.save(str(tmp_path / "s.pkl"))
    restored = PerStudyOptunaSearcher.__new__(PerStudyOptunaSearcher)  # Ray restores without __init__
    restored.restore(str(tmp_path / "s.pkl"))
    assert [restored.suggest(f"t{i}")["study"] for i in (1, 2, 3)] == ["cell1/fold0", "cell0/fold0", "cell1/fold0"]
    assert restored.suggest("t4") == "FINISHED"


def _trial(trial_id, study):
    return SimpleNamespace(trial_id=trial_id, config={"study": study, "recipe": "r"})


def test_asha_compares_trials_only_within_their_study():
    scheduler = PerStudyASHA("val_auc", "max", max_t=4, grace_period=1, reduction_factor=2)
    strong = [_trial(f"s{i}", "strong/fold0") for i in range(3)]
    weak = [_trial(f"w{i}", "weak/fold0") for i in range(3)]
    for trial in strong + weak:
        scheduler.on_trial_add(None, trial)
    for i, trial in enumerate(strong):
        scheduler.on_trial_result(None, trial, {"training_iteration": 1, "val_auc": 0.90 + 0.01 * i})
    # The weak study's trials score far below the strong study's cutoff, but each is judged only
    # against its own study: the first one at a rung always continues.
    assert scheduler.on_trial_result(None, weak[0], {"training_iteration": 1, "val_auc": 0.55}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, weak[1], {"training_iteration": 1, "val_auc": 0.60}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, weak[2], {"training_iteration": 1, "val_auc": 0.50}) == TrialScheduler.STOP


def test_studies_live_in_the_results_db_and_orphans_are_failed_on_restore(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path}/results.db"
    plans = [StudyPlan(key="cell0/fold0", config={}, n_trials=3)]
    searcher = PerStudyOptunaSearcher(plans, SPACE, "val_auc", "max", storage=url, prefix="sweep1/")
    searcher.suggest("t0")
    snapshot = tmp_path / "searcher.pkl"
    searcher.save(str(snapshot))  # Ray's last experiment snapshot ...
    searcher.suggest("t1")  # ... then the driver dies after asking once more
    restored = PerStudyOptunaSearcher.__new__(PerStudyOptunaSearcher)  # Ray restores without __init__
    restored.restore(str(snapshot))
    study = optuna.load_study(study_name="sweep1/cell0/fold0", storage=url)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.RUNNING, TrialState.FAIL]  # t0 will be re-run by Ray; t1 is an orphan
    restored.on_trial_complete("t0", _ended(0.8))
    assert [t.state for t in optuna.load_study(study_name="sweep1/cell0/fold0", storage=url).get_trials()] == \
        [TrialState.COMPLETE, TrialState.FAIL]


def test_a_cell_waits_for_its_pretraining_stage_while_others_run(tmp_path):
    weights = tmp_path / "resnet18-regular-nih-abc.pt"
    plans = [StudyPlan(key="needs/fold0", config={}, n_trials=1, needs=str(weights)),
             StudyPlan(key="free/fold0", config={}, n_trials=2)]
    searcher = PerStudyOptunaSearcher(plans, SPACE, "val_auc", "max")
    assert [searcher.suggest(t)["study"] for t in ("a", "b")] == ["free/fold0", "free/fold0"]
    assert searcher.suggest("c") is None  # not FINISHED: Ray asks again later
    weights.write_bytes(b"trained")
    assert searcher.suggest("c")["study"] == "needs/fold0"
    assert searcher.suggest("d") == "FINISHED"


def test_a_failed_stage_releases_its_cells_so_they_fail_and_are_recorded(tmp_path):
    weights = tmp_path / "stage.pt"
    searcher = PerStudyOptunaSearcher([StudyPlan(key="needs/fold0", config={}, n_trials=1, needs=str(weights))],
                                      SPACE, "val_auc", "max")
    assert searcher.suggest("a") is None
    (tmp_path / "stage.failed").write_text("ValueError: sources differ in size")
    assert searcher.suggest("a")["study"] == "needs/fold0"


def test_optunas_studies_share_the_results_dbs_sqlite_settings_also_after_a_pickle(tmp_path):
    import pickle

    from sqlalchemy import text

    from results.store import ResultsStore
    from sweeper.search import _rdb_storage

    url = f"sqlite:///{tmp_path}/results.db"
    store = ResultsStore(url)
    storage = _rdb_storage(url)
    for engine in (store.engine, storage.engine, pickle.loads(pickle.dumps(storage)).engine):  # Ray pickles it
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL: no fsync per commit in WAL
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    study = optuna.create_study(storage=storage, study_name="s")
    study.tell(study.ask(SPACE), 0.5)
    assert optuna.load_study(study_name="s", storage=url).best_value == 0.5


def test_an_errored_trial_run_again_by_resume_is_recorded_as_a_new_optuna_trial_with_its_parameters():
    searcher = _searcher(n_studies=1, n_trials=1)
    config = searcher.suggest("t0")
    searcher.on_trial_complete("t0", error=True)
    searcher.on_trial_complete("t0", _ended(0.8))  # resume_errored ran it again
    trials = searcher.studies["cell0/fold0"].trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params == {"lr": config["lr"], "dropout": config["dropout"]}
    assert trials[1].value == 0.8
    searcher.on_trial_complete("t0", _ended(0.9))  # told once only
    assert len(searcher.studies["cell0/fold0"].trials) == 2


def test_a_searcher_whose_saved_state_is_unreadable_rebuilds_its_counts_from_the_studies(tmp_path):
    """A full disk truncated Ray's copy of the searcher's state; Ray would start the whole experiment again."""
    url = f"sqlite:///{tmp_path}/results.db"
    plans = [StudyPlan(key="cell0/fold0", config={}, n_trials=2)]
    searcher = PerStudyOptunaSearcher(plans, SPACE, "val_auc", "max", storage=url, prefix="s/")
    config = searcher.suggest("t0")
    searcher.on_trial_complete("t0", error=True)
    (tmp_path / "searcher.pkl").write_bytes(b"")  # what the full disk left
    restored = PerStudyOptunaSearcher(plans, SPACE, "val_auc", "max", storage=url, prefix="s/")  # as at start
    with pytest.warns(RuntimeWarning, match="cannot be read.*rebuilt from the Optuna studies"):
        restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t1")["optuna_number"] == 1 and restored.suggest("t2") == "FINISHED"  # no extra asks
    # the errored trial, run again by --resume, is found by the study and number in its config, which Ray
    # passes flattened (ray.tune.utils.flatten_dict: "config/study", ...)
    from ray.tune.utils import flatten_dict

    restored.on_trial_complete("t0", flatten_dict({**_ended(0.7), "config": config}))
    assert [t.state.name for t in restored.studies["cell0/fold0"].trials] == ["FAIL", "RUNNING", "COMPLETE"]


def test_the_searchers_state_is_replaced_whole(tmp_path):
    searcher = _searcher(n_studies=1, n_trials=1)
    searcher.suggest("t0")
    searcher.save(str(tmp_path / "state.pkl"))
    assert not list(tmp_path.glob("*.partial"))
    restored = PerStudyOptunaSearcher.__new__(PerStudyOptunaSearcher)
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.suggest("t1") == "FINISHED"


def test_a_trial_replayed_after_a_resume_is_not_told_twice():
    """Ray re-runs the work done after its last snapshot: a trial already COMPLETE in Optuna ends again."""
    searcher = _searcher(n_studies=1, n_trials=1)
    config = searcher.suggest("t0")
    searcher.on_trial_complete("t0", _ended(0.8))
    replay = {**_ended(0.8), **{f"config/{k}": v for k, v in config.items()}}
    searcher.on_trial_complete("t0", replay)  # as Ray passes it: flattened
    assert [t.state.name for t in searcher.studies["cell0/fold0"].trials] == ["COMPLETE"]


def test_continuing_from_the_studies_alone_runs_what_is_missing_failed_parameters_first(tmp_path):
    """Ray's experiment state is lost: a new searcher over the same studies asks only for what they lack."""
    url = f"sqlite:///{tmp_path}/results.db"

    def searcher():
        plans = [StudyPlan(key="cell0/fold0", config={}, n_trials=4)]
        return PerStudyOptunaSearcher(plans, SPACE, "val_auc", "max", storage=url, prefix="s/")

    first = searcher()
    asked = {t: first.suggest(t) for t in ("done", "broken", "running")}
    first.on_trial_complete("done", _ended(0.8))
    first.on_trial_complete("broken", None, error=True)  # "running" was in progress when the record was lost

    again = searcher()
    todo, retried = again.continue_from_studies()
    assert todo == {"cell0/fold0": 3} and retried == {"cell0/fold0": [1, 2]}
    study = again.studies["cell0/fold0"]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "FAIL", "WAITING", "WAITING"]
    assert searcher().continue_from_studies()[0] == todo  # the driver died again before asking: nothing queued twice
    assert sum(t.state.name == "WAITING" for t in study.trials) == 2

    configs = [again.suggest(f"n{i}") for i in range(3)]
    assert again.suggest("n3") == "FINISHED"
    params = [(c["lr"], c["dropout"]) for c in configs]
    assert params[:2] == [(asked[t]["lr"], asked[t]["dropout"]) for t in ("broken", "running")]
    assert params[2] not in [(a["lr"], a["dropout"]) for a in asked.values()]  # a new draw, not the lost sampler's first


def test_an_orphan_whose_end_reached_the_results_db_is_told_that_end_not_fail(tmp_path):
    """The driver died after the results callback recorded a trial's end and before the searcher told Optuna:
    on restore Optuna is told what the DB holds (COMPLETE with its value, PRUNED), and only the others FAIL."""
    from results.store import ResultsStore

    url = f"sqlite:///{tmp_path}/results.db"
    store = ResultsStore(url)
    sweep = store.start_sweep("sweep1", "spec", "", "test", [0], 4)
    plans = [StudyPlan(key="cell0/fold0", config={}, n_trials=4)]
    searcher = PerStudyOptunaSearcher(plans, SPACE, "val_auc", "max", storage=url, prefix="sweep1/")
    snapshot = tmp_path / "searcher.pkl"
    searcher.save(str(snapshot))  # Ray's last snapshot, before any trial was asked
    for n, (status, best) in enumerate([("COMPLETE", 0.81), ("PRUNED", 0.6), (None, None)]):
        config = searcher.suggest(f"t{n}")
        info = {"backbone": "b", "recipe": "r", "variant": "", "fold": 0, "study": config["study"],
                "optuna_number": config["optuna_number"], "params": {}}
        store.trial_started(sweep, f"t{n}", info)
        if status:  # the results callback recorded its end; the driver died before the searcher heard of it
            store.trial_finished(sweep, f"t{n}", status, epoch_report(epoch=2, best_val_auc=best), None, [], None,
                                 None)
    restored = PerStudyOptunaSearcher.__new__(PerStudyOptunaSearcher)  # Ray restores without __init__
    restored.restore(str(snapshot))
    trials = optuna.load_study(study_name="sweep1/cell0/fold0", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].value == pytest.approx(0.81)
    store.engine.dispose()


def test_a_trial_that_ended_after_rays_last_snapshot_can_be_replayed_epoch_by_epoch(tmp_path):
    """Ray's snapshot still holds the trial as running; the searcher had told Optuna its end before the
    driver died. On resume Ray runs it again: its epochs' reports must not stop the sweep."""
    url = f"sqlite:///{tmp_path}/results.db"
    plans = [StudyPlan(key="cell0/fold0", config={}, n_trials=2)]
    searcher = PerStudyOptunaSearcher(plans, SPACE, "val_auc", "max", storage=url, prefix="s/")
    searcher.suggest("t0")
    snapshot = tmp_path / "searcher.pkl"
    searcher.save(str(snapshot))
    searcher.on_trial_complete("t0", _ended(0.7))  # told, then the driver dies
    restored = PerStudyOptunaSearcher.__new__(PerStudyOptunaSearcher)
    restored.restore(str(snapshot))
    restored.on_trial_result("t0", {"val_auc": 0.6, "epoch": 1})  # the replay's first epoch
    restored.on_trial_complete("t0", _ended(0.72))
    (trial,) = optuna.load_study(study_name="s/cell0/fold0", storage=url).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.7)  # the first end stands
