"""The sweep driver: data sets, Ray, one Tuner for the whole grid, DB, report."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray import tune

from data_prep.dataset import PreparedDataset
from results.report import report
from results.store import ResultsStore
from sweeper.callbacks import ResultsCallback
from sweeper.datasets import ensure_datasets
from sweeper.plan import search_space, study_plans
from sweeper.scheduler import PerStudyASHA
from sweeper.search import PerStudyOptunaSearcher
from sweeper.spec import SweepSpec
from trainables.tune_adapter import tune_fit

METRIC, MODE = "val_auc", "max"


def _trial_dirname(trial) -> str:
    return trial.trial_id  # the config would make long, unportable names


def _trainable(spec: SweepSpec):
    return tune.with_resources(tune_fit, {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial})


def _new_tuner(spec: SweepSpec, plans, name: str, storage: str, callback: ResultsCallback) -> tune.Tuner:
    searcher = PerStudyOptunaSearcher(plans, search_space(spec), METRIC, MODE, storage=callback.db_url,
                                      prefix=f"{name}/")
    scheduler = PerStudyASHA(METRIC, MODE, max_t=spec.train.epochs, grace_period=spec.asha.grace_period,
                             reduction_factor=spec.asha.reduction_factor)
    return tune.Tuner(
        _trainable(spec),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=sum(p.n_trials for p in plans),
            max_concurrent_trials=spec.resources.max_concurrent, trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # a new actor per trial costs seconds (DESIGN.md)
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, callbacks=[callback], verbose=0,  # progress comes from ResultsCallback
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )


@dataclass(frozen=True)
class RunOptions:
    """Where and how one sweep runs (the command line, resolved)."""

    name: str
    db_url: str
    home: Path
    storage: str
    address: str | None = None
    resume: bool = False
    num_cpus: int | None = None
    version: str = "unknown"
    data: dict[str, str] = field(default_factory=dict)  # --data NAME=LOCATION


def run_sweep(spec: SweepSpec, spec_text: str, spec_arg: str, options: RunOptions) -> int:
    name, db_url, home, storage = options.name, options.db_url, options.home, options.storage
    address, resume, num_cpus, version = options.address, options.resume, options.num_cpus, options.version
    store = ResultsStore(db_url)  # a bad --db stops before data or Ray
    data = ensure_datasets(spec, home, given=options.data)
    plans = study_plans(spec, data, pretrain_cache=home / "pretrained")
    sweep_id = store.start_sweep(name, spec_arg, spec_text, version)
    print(f"[sweeper] sweep {name}: {len(plans)} studies x {spec.search.trials} trials; DB {db_url}")
    ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
             ignore_reinit_error=True, log_to_driver=True)
    try:
        path = f"{storage.rstrip('/')}/{name}"
        if resume:
            if not tune.Tuner.can_restore(path):
                raise FileNotFoundError(f"--resume: no Ray experiment to continue at {path}")
            tuner = tune.Tuner.restore(path, trainable=_trainable(spec), resume_errored=True)
        else:
            callback = ResultsCallback(db_url, sweep_id, sum(p.n_trials for p in plans),
                                       PreparedDataset(data["target"]).label_names)
            tuner = _new_tuner(spec, plans, name, storage, callback)
        grid = tuner.fit()
    finally:
        ray.shutdown()
    errors = [r.error for r in grid if r.error is not None]  # Tuner.fit returns normally even then
    counts = store.status_counts(sweep_id)
    failed = max(len(errors), counts.get("ERROR", 0))
    store.finish_sweep(sweep_id, "FINISHED" if not failed else "FINISHED_WITH_ERRORS")
    print(report(db_url, name))
    print(summary(counts, failed, home / "pretrained", db_url))
    return 0 if not failed else 1


def summary(counts: dict[str, int], failed: int, pretrained: Path, db_url: str) -> str:
    """Done / pruned / failed per stage, and where the results are."""
    stages = sorted(pretrained.glob("*.pt")) if pretrained.is_dir() else []
    fine_tuning = (f"{counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned by ASHA, "
                   f"{failed} failed")
    lines = [f"[sweeper] fine-tuning trials: {fine_tuning}",
             f"[sweeper] pretraining stages available: {len(stages)} in {pretrained}"
             + "".join(f"\n[sweeper]   {p.name}" for p in stages),
             f"[sweeper] results in {db_url}"
             + (" (failed trials: SELECT error FROM sweep_trials WHERE status = 'ERROR')" if failed else "")]
    return "\n".join(lines)
