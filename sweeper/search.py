"""One Optuna study per (cell, fold), asked and told from a single Ray Tune searcher.

Ray's OptunaSearch keeps one study and cannot take grid_search, so this searcher holds a
study per (cell, fold) (docs/design.md §3.3) and lets Ray schedule every trial of the
whole grid at once. Trials that ASHA stops are told to Optuna as PRUNED; each study's
sampler is seeded from its key so cells do not all start from the same learning rates.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import warnings
from functools import partial
from pathlib import Path
from dataclasses import dataclass, field

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher
from sqlalchemy.engine import make_url

from results.store import sqlite_connection
from sweeper.db_failures import watched
from trainables.pretrain import failure_marker
from vocab.records import TrialResult, parse_report

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class StudyPlan:
    """What one study runs: its key, the fixed part of each trial's config, and its budget."""

    key: str
    config: dict
    n_trials: int
    seed: int = 0
    space: dict | None = None  # what this study searches; None: the searcher's whole space
    needs: str | None = None  # a pretraining stage's weights file that must exist before a trial starts
    asked: int = field(default=0)


def _outcome(result: dict | None, error: bool) -> tuple[TrialState, float | None]:
    """How a Ray trial's end reads in Optuna: FAIL (error, or no finite validation AUC), PRUNED (stopped by
    the scheduler after an epoch's report: Ray sets "done" either way) or COMPLETE with its value (a TrialResult:
    the trainable ended it)."""
    record = None if error else parse_report(result)
    if record is None or not _finite(record.best_val_auc):
        return TrialState.FAIL, None
    if not isinstance(record, TrialResult):
        return TrialState.PRUNED, None
    return TrialState.COMPLETE, record.best_val_auc


def study_seed(key: str, base_seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{base_seed}:{key}".encode()).digest()[:4], "little")


class PerStudyOptunaSearcher(Searcher):
    """`storage`: an Optuna storage (the results DB's URL, so `optuna-dashboard URL` shows the
    studies, each named `prefix + key`); None keeps the studies in memory (tests)."""

    def __init__(self, plans: list[StudyPlan], space: dict[str, BaseDistribution], metric: str = "val_auc",
                 mode: str = "max", storage: str | None = None, prefix: str = ""):
        super().__init__(metric=metric, mode=mode)
        self._db_url, self._sweep = storage, prefix.rstrip("/")  # where the results callback records trials
        self._plans = {p.key: p for p in plans}
        self._space = space
        direction = "maximize" if mode == "max" else "minimize"
        storage = _rdb_storage(storage) if storage else None
        self._studies = {
            p.key: optuna.create_study(study_name=prefix + p.key, direction=direction, storage=storage,
                                       load_if_exists=True,
                                       sampler=optuna.samplers.TPESampler(seed=study_seed(p.key, p.seed)))
            for p in plans
        }
        self._live: dict[str, tuple[str, optuna.Trial]] = {}
        self._failed: dict[str, tuple[str, int]] = {}  # Ray trial id -> (study key, Optuna number) of an error

    @property
    def studies(self) -> dict[str, optuna.Study]:
        return self._studies

    @watched(lambda self: self._db_url)
    def suggest(self, trial_id: str):
        open_plans = [p for p in self._plans.values() if p.asked < p.n_trials]
        if not open_plans:
            return Searcher.FINISHED
        ready = [p for p in open_plans if _ready(p)]
        if not ready:
            return None  # Ray asks again later; the stages these cells need are still training
        plan = min(ready, key=lambda p: p.asked)  # round-robin: every ready cell progresses
        trial = self._studies[plan.key].ask(self._space if plan.space is None else plan.space)
        plan.asked += 1
        self._live[trial_id] = (plan.key, trial)
        return {**plan.config, **trial.params, "study": plan.key, "optuna_number": trial.number}

    @watched(lambda self: self._db_url)
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._live and _finite(result.get(self.metric)):
            _, trial = self._live[trial_id]
            try:
                trial.report(float(result[self.metric]), step=int(result["epoch"]))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # Ray replays a trial that ended (and was told) after its last snapshot: nothing new

    @watched(lambda self: self._db_url)
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        located = self._locate(trial_id, result)
        if located is None:
            return
        key, number = located
        study = self._studies[key]
        state, value = _outcome(result, error)
        told = study.trials[number].state
        if told.is_finished():
            # a FAIL that now ended well: an errored trial that --resume ran again (Ray's resume_errored);
            # anything else already told is Ray replaying work done after its last snapshot: nothing new
            if told == TrialState.FAIL and state != TrialState.FAIL:
                self._record_rerun(study, number, state, value)
        else:
            study.tell(number, value, state=state, skip_if_finished=True)
        if state == TrialState.FAIL:
            self._failed[trial_id] = (key, number)

    def _locate(self, trial_id: str, result: dict | None) -> tuple[str, int] | None:
        """(study key, Optuna number) of a Ray trial: from the live ones, the failed ones, or else from the
        study and number the trial's config carries (a searcher whose saved state was lost)."""
        if trial_id in self._live:
            key, trial = self._live.pop(trial_id)
            return key, trial.number
        if trial_id in self._failed:
            return self._failed.pop(trial_id)
        result = result or {}
        config = result.get("config") or {}  # Ray passes the result flattened: "config/study", ...
        study = result.get("config/study", config.get("study"))
        number = result.get("config/optuna_number", config.get("optuna_number"))
        if study in self._studies and number is not None:
            return study, int(number)
        return None

    @staticmethod
    def _record_rerun(study: optuna.Study, number: int, state: TrialState, value: float | None) -> None:
        """A finished trial cannot change in Optuna: the first attempt stays FAIL and this outcome is added as
        a new trial with the same parameters, which the results callback then records as the row's number."""
        first = study.trials[number]
        study.add_trial(optuna.trial.create_trial(params=first.params, distributions=first.distributions,
                                                  value=value, state=state))

    def save(self, checkpoint_path: str) -> None:
        """Written whole or not at all (a full disk must not leave a truncated state behind)."""
        partial = f"{checkpoint_path}.partial"
        with open(partial, "wb") as f:
            pickle.dump(self.__dict__, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        try:
            with open(checkpoint_path, "rb") as f:
                self.__dict__.update(pickle.load(f))
        except (EOFError, pickle.UnpicklingError, OSError) as exc:
            # Ray would otherwise start the whole experiment again: the studies, in the results DB, know
            # what was asked; trials Ray restores are found by the study and number in their config
            warnings.warn(f"the searcher's saved state {checkpoint_path} cannot be read ({exc!r}); its counts are "
                          f"rebuilt from the Optuna studies", RuntimeWarning, stacklevel=2)
            for key, plan in self._plans.items():
                plan.asked = len(self._studies[key].trials)
                self._reseed(key, plan.asked)
            self._live = {}
        self.__dict__.setdefault("_failed", {})  # saved by a version that had no record of errors
        self.reconcile()

    def continue_from_studies(self) -> tuple[dict[str, int], dict[str, list[int]]]:
        """Ray's record of the experiment is lost (its experiment state was damaged): carry on from the
        Optuna studies alone, which live in the results DB. Trials left RUNNING are marked FAIL; each study
        is asked for the trials it still lacks, and the parameters of its failed trials (errors, and work in
        progress when the record was lost) come first, as Ray's resume_errored would run them again.
        Returns {study key: trials still to run} and {study key: numbers of the failed trials run again}."""
        self._live, self._failed = {}, {}
        self.reconcile()
        todo, again = {}, {}
        for key, plan in self._plans.items():
            study = self._studies[key]
            trials = study.get_trials(deepcopy=False)
            self._reseed(key, len(trials))
            ended_well = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            waiting = [t for t in trials if t.state == TrialState.WAITING]  # queued by an earlier attempt at this
            plan.asked = min(len(ended_well), plan.n_trials)
            todo[key] = plan.n_trials - plan.asked
            retry, seen = [], {_params_key(t.params) for t in ended_well}
            seen |= {_params_key(t.system_attrs.get("fixed_params", {})) for t in waiting}  # no params until asked
            for t in trials:
                if t.state == TrialState.FAIL and _params_key(t.params) not in seen:
                    seen.add(_params_key(t.params))
                    retry.append(t)
            again[key] = [t.number for t in retry[:max(0, todo[key] - len(waiting))]]
            for number in again[key]:
                study.enqueue_trial(study.trials[number].params, skip_if_exists=False)
        return todo, again

    def _reseed(self, key: str, asked: int) -> None:
        """A sampler made anew would draw the same first parameters as the lost one did: seed it past them."""
        plan = self._plans[key]
        self._studies[key].sampler = optuna.samplers.TPESampler(seed=study_seed(f"{key}#{asked}", plan.seed))

    def reconcile(self) -> list[int]:
        """After a crash: a study trial still RUNNING that no live Ray trial owns is an orphan (asked after
        Ray's last snapshot, so Ray will not re-run it). One whose end the results DB recorded (the driver
        died between the results callback and the searcher) is told that end, so that Optuna and the DB
        agree; the others are marked FAIL. Returns the orphans' numbers."""
        owned = {(key, trial.number) for key, trial in self._live.values()}
        recorded = self._recorded_ends()
        orphans = []
        for key, study in self._studies.items():
            for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if (key, frozen.number) not in owned:
                    status, value = recorded.get((key, frozen.number), ("FAIL", None))
                    study.tell(frozen.number, value if status == "COMPLETE" else None, state=TrialState[status],
                               skip_if_finished=True)
                    orphans.append(frozen.number)
        return orphans

    def _recorded_ends(self) -> dict[tuple[str, int], tuple[str, float | None]]:
        """{(study key, Optuna number): (COMPLETE or PRUNED, best validation AUC)} from the results DB."""
        url, sweep = getattr(self, "_db_url", None), getattr(self, "_sweep", "")
        if not url or not sweep:
            return {}
        from results.store import ResultsStore

        store = ResultsStore(url)
        try:
            return store.recorded_ends(sweep)
        finally:
            store.engine.dispose()


def _ready(plan: StudyPlan) -> bool:
    """No stage needed, or its weights exist, or it failed (the trial then fails at once with its error)."""
    if plan.needs is None:
        return True
    path = Path(plan.needs)
    return path.is_file() or failure_marker(path).is_file()


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's tables in the results DB; on SQLite its connections wait for the lock and sync like the
    results store's (results.store.sqlite_connection)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return optuna.storages.RDBStorage(url)
    return optuna.storages.RDBStorage(url, engine_kwargs={"creator": partial(sqlite_connection, parsed.database)})


def _params_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
