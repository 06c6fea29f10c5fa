"""Writes every trial to the results DB from the driver (docs/design.md §3.4).

Ray runs Callback hooks in the driver process, so this is the only writer. The object is
pickled into Ray's experiment state; the DB connection is opened lazily and never pickled.
Ray's results are read as the trainable's records (vocab.records), which refuse a key they do not know.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from ray.tune import Callback

from results.store import ResultsStore
from sweeper.db_failures import watched
from trainables.config import fit_config, trial_metadata
from trainables.tune_adapter import PREDICTIONS_FILE
from vocab.names import PREDICTION_SPLITS
from vocab.records import EpochReport, TrialPredictions, TrialResult, parse_report

MAX_ERROR_CHARS = 8000


class ResultsCallback(Callback):
    def __init__(self, db_url: str, sweep_id: int, total_trials: int, label_names: list[str], study_prefix: str = ""):
        self.db_url = db_url
        self.study_prefix = study_prefix
        self.reruns: set[str] = set()  # errored trials that a resumed sweep runs again
        self.label_names = list(label_names)
        self.total_trials = total_trials
        self.finished = 0
        self.sweep_id = sweep_id
        self._store: ResultsStore | None = None

    def __getstate__(self):
        return {**self.__dict__, "_store": None}

    @property
    def store(self) -> ResultsStore:
        if self._store is None:
            self._store = ResultsStore(self.db_url)
        return self._store

    @watched(lambda self: self.db_url)
    def setup(self, **info):
        """At the start and on --resume (this object comes back as pickled when the sweep began):
        count from what the DB already holds."""
        self.finished = sum(n for status, n in self.store.status_counts(self.sweep_id).items() if status != "RUNNING")

    @watched(lambda self: self.db_url)
    def on_trial_start(self, iteration, trials, trial, **info):
        before = self._register(trial)
        if before == "ERROR":
            self.__dict__.setdefault("reruns", set()).add(trial.trial_id)

    def _register(self, trial) -> str | None:
        """The trial's row (RUNNING), from its config; the status it had before (trial_started)."""
        fit, meta = fit_config(trial.config), trial_metadata(trial.config)
        return self.store.trial_started(self.sweep_id, trial.trial_id, {
            "backbone": fit.backbone, "recipe": meta.recipe, "variant": meta.variant, "fold": fit.outer_fold,
            "study": meta.study, "optuna_number": meta.optuna_number, "params": {"lr": fit.lr, "dropout": fit.dropout},
            "fit_config": fit.as_dict(),  # with the runtime record at its end: what sweeper.rerun needs
        })

    @watched(lambda self: self.db_url)
    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.store.epoch_reported(self.sweep_id, trial.trial_id, parse_report(result))

    @watched(lambda self: self.db_url)
    def on_trial_complete(self, iteration, trials, trial, **info):
        record = parse_report(trial.last_result)
        status = "COMPLETE" if isinstance(record, TrialResult) else "PRUNED"  # the trainable ended it (not Ray's "done")
        predictions, runtime = read_predictions(trial.checkpoint) if status == "COMPLETE" else (None, None)
        self.store.trial_finished(self.sweep_id, trial.trial_id, status, record, None, self.label_names, predictions,
                                  checkpoint_uri(trial.checkpoint) if status == "COMPLETE" else None, runtime)
        if trial.trial_id in self.__dict__.get("reruns", set()):
            self._renumber_rerun(trial, status)
        if status == "PRUNED":  # nothing reads a pruned trial's weights: free their storage now
            delete_checkpoint(trial.checkpoint)
        self._progress(trial, status, record)

    @watched(lambda self: self.db_url)
    def on_trial_error(self, iteration, trials, trial, **info):
        error = _error_text(trial)
        message = error[-MAX_ERROR_CHARS:] if error else "unknown error (see Ray's trial directory)"
        record = parse_report(trial.last_result)
        if self.store.trial_status(self.sweep_id, trial.trial_id) is None:
            self._register(trial)  # its actor failed to start: Ray never called on_trial_start
        self.store.trial_finished(self.sweep_id, trial.trial_id, "ERROR", record, message, self.label_names)
        self._progress(trial, "ERROR", record, message.strip().splitlines()[-1:] or [""])

    @watched(lambda self: self.db_url)
    def on_experiment_end(self, trials, **info):
        """A trial Ray ended in ERROR without on_trial_error (a reused worker that could not be reset fails the
        next trial so) gets its row and error here, so that no failure is missing from the DB."""
        for trial in trials:
            if trial.status == "ERROR" and self.store.trial_status(self.sweep_id, trial.trial_id) != "ERROR":
                self.on_trial_error(0, trials, trial)

    def _renumber_rerun(self, trial, status: str) -> None:
        """The searcher recorded a rerun's outcome as a new Optuna trial (its first attempt stays FAIL): point
        the row at it, so that the DB and the study agree."""
        import optuna

        self.reruns.discard(trial.trial_id)
        fit, meta = fit_config(trial.config), trial_metadata(trial.config)
        study = optuna.load_study(study_name=self.study_prefix + meta.study, storage=self.db_url)
        same = [t.number for t in study.get_trials(deepcopy=False) if t.state.name == status
                and t.params.get("lr") == fit.lr and t.params.get("dropout") == fit.dropout]
        if same:
            self.store.set_optuna_number(self.sweep_id, trial.trial_id, max(same))

    def _progress(self, trial, status: str, record: EpochReport | None, error: list[str] | None = None) -> None:
        self.finished += 1
        fit, meta = fit_config(trial.config), trial_metadata(trial.config)
        line = (f"[sweeper] {self.finished}/{self.total_trials} {meta.study} #{meta.optuna_number} "
                f"lr={fit.lr:.2g} dropout={fit.dropout:.2f}: {status}")
        if record is not None:
            line += (f" after {record.epoch} epoch(s), best val AUC {record.best_val_auc:.3f} at epoch "
                     f"{record.best_epoch} ({(trial.last_result or {}).get('time_total_s', 0):.0f} s)")
        print(line + (f" - {error[0]}" if error else ""))  # not stored: Ray may patch print, which then won't pickle


def read_predictions(checkpoint) -> tuple[dict | None, dict | None]:
    """(The test and inner-validation predictions saved with a trial's final checkpoint ({split: arrays}),
    its runtime record), read from Ray's storage (a shared path or S3) without fetching the weights; None,
    with a warning, if they are not there. The file is a TrialPredictions; one written before typed records
    has no best epoch and is read as before: before validation predictions were kept, it holds the test
    split's arrays at its top level, and no runtime."""
    if checkpoint is None:
        warnings.warn("a completed trial has no checkpoint; its predictions are not stored", stacklevel=2)
        return None, None
    path = f"{checkpoint.path}/{PREDICTIONS_FILE}"
    try:
        with checkpoint.filesystem.open_input_file(path) as stream:
            saved = torch.load(io.BytesIO(stream.read()), weights_only=True)
    except (FileNotFoundError, OSError) as exc:
        warnings.warn(f"predictions not stored: cannot read {path}: {exc}", stacklevel=2)
        return None, None
    if "best_epoch" in saved:
        kept = TrialPredictions.from_state(saved)
        return dict(kept.splits), kept.runtime.model_dump()
    by_split = {"test": saved} if "image_keys" in saved else {s: saved[s] for s in PREDICTION_SPLITS if s in saved}
    return {split: {"image_keys": p["image_keys"], "patient_keys": p["patient_keys"], "probs": p["probs"].numpy(),
                    "labels": p["labels"].numpy()} for split, p in by_split.items()}, saved.get("runtime")


def delete_checkpoint(checkpoint) -> None:
    """Delete a checkpoint's directory from Ray's storage (a path or a bucket); a failure only warns."""
    if checkpoint is None:
        return
    try:
        checkpoint.filesystem.delete_dir(checkpoint.path)
    except OSError as exc:
        warnings.warn(f"could not delete the pruned trial's checkpoint {checkpoint.path} ({exc})", stacklevel=2)


def checkpoint_uri(checkpoint) -> str | None:
    """Where a checkpoint is kept, as sweeper.predict reads it back: a local path, or scheme://path."""
    if checkpoint is None:
        return None
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{'gs' if kind == 'gcs' else kind}://{checkpoint.path}"


def _error_text(trial) -> str | None:
    """The trial's error trace. Ray writes it to the trial's local directory at once but copies it
    to the storage path (what `trial.get_error()` reads) later, so read the local file first."""
    local = trial.error_file
    if local and Path(local).is_file():
        return Path(local).read_text()
    error = trial.get_error()
    return str(error) if error else None
