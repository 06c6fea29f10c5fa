"""ASHA with one bracket per Optuna study.

Ray's AsyncHyperBandScheduler ranks every trial of the experiment against every other;
in a grid that would let one backbone's trials stop another's. Here each (cell, fold)
study, named by the trial config's "study" key, gets its own bracket.
"""
from __future__ import annotations

from ray.tune.schedulers.async_hyperband import AsyncHyperBandScheduler, _Bracket

from trainables.config import trial_metadata


class PerStudyASHA(AsyncHyperBandScheduler):
    def __init__(self, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float):
        super().__init__(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor, brackets=1)
        self._bracket_args = (grace_period, max_t, reduction_factor, 0)
        self._study_brackets: dict[str, _Bracket] = {}

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)  # keeps Ray's metric/mode checks
        study = trial_metadata(trial.config).study
        if study not in self._study_brackets:
            self._study_brackets[study] = _Bracket(*self._bracket_args)
        self._trial_info[trial.trial_id] = self._study_brackets[study]
