"""The sweep driver: data sets, Ray, one Tuner for the whole grid, DB, report."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs
import ray
from ray import tune

from data_prep.dataset import PreparedDataset
from results.report import write_report
from results.store import ResultsStore
from sweeper import db_failures
from sweeper.callbacks import ResultsCallback
from sweeper.data_sections import data_sections
from sweeper.explain_sections import explanation_sections
from sweeper.datasets import ensure_datasets, ensure_external, locations
from sweeper.evaluate import evaluate
from sweeper import ray_address
from sweeper.plan import cell_rows, search_space, study_plans
from sweeper.scheduler import PerStudyASHA
from sweeper.search import PerStudyOptunaSearcher
from sweeper.stages import artefact_rows, attach_stages, launch_stages, stage_failures
from sweeper.spec import SweepSpec
from sweeper.weights import preflight
from trainables.tune_adapter import TuneFit
from vocab.errors import CxrSweepError

METRIC, MODE = "val_auc", "max"


def pending_trials(cluster: dict, resources, max_concurrent: int | None) -> int:
    """How many trials Tune may queue ahead of free resources. Tune's own default for a custom searcher
    is one, and with one queued trial it runs them one at a time however many CPUs or GPUs are free.
    With --max-concurrent N it is N, which is also what an autoscaling cluster sees as demand; else as
    many as the cluster's current resources run at once."""
    if max_concurrent:
        return max_concurrent
    fits = cluster.get("CPU", 0) // resources.cpus_per_trial
    if resources.gpus_per_trial > 0:
        fits = min(fits, cluster.get("GPU", 0) // resources.gpus_per_trial)
    return max(1, int(fits))


def _trial_dirname(trial) -> str:
    return trial.trial_id  # the config would make long, unportable names


def _trainable(spec: SweepSpec):
    return tune.with_resources(TuneFit, {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial})


def _new_tuner(spec: SweepSpec, plans, name: str, storage: str, callback: ResultsCallback,
               max_concurrent: int | None, searcher: PerStudyOptunaSearcher | None = None) -> tune.Tuner:
    searcher = searcher or _searcher(spec, plans, name, callback.db_url)
    scheduler = PerStudyASHA(METRIC, MODE, max_t=spec.train.epochs, grace_period=spec.asha.grace_period,
                             reduction_factor=spec.asha.reduction_factor)
    return tune.Tuner(
        _trainable(spec),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=max(1, sum(p.n_trials - p.asked for p in plans)),
            max_concurrent_trials=max_concurrent, trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # a new actor per trial costs seconds (docs/design.md §4)
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, callbacks=[callback], verbose=0,  # progress comes from ResultsCallback
            # one per trial: a running trial's latest (a retry resumes from it; a damaged one restarts the trial,
            # trainables.tune_adapter.load_state), then its slim final one; pruned trials' are deleted (callback)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
        ),
    )


def _searcher(spec: SweepSpec, plans, name: str, db_url: str) -> PerStudyOptunaSearcher:
    return PerStudyOptunaSearcher(plans, search_space(spec), METRIC, MODE, storage=db_url, prefix=f"{name}/")


class ResumeError(CxrSweepError):
    """--resume with nothing to continue: no earlier sweep of the spec, or no Ray experiment at its path."""


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
    max_concurrent: int | None = None  # --max-concurrent; None: the spec's
    report_images: bool = True  # Grad-CAM over a few test images per cell in the report
    report_bootstrap: int = 1000  # resamples for the report's intervals and p-values


def _tuner(spec: SweepSpec, plans, options: RunOptions, store: ResultsStore, sweep_id: int, target: Path,
           max_concurrent: int | None) -> tune.Tuner:
    path = f"{options.storage.rstrip('/')}/{options.name}"
    label_names = PreparedDataset(target).label_names
    if not options.resume:
        callback = ResultsCallback(options.db_url, sweep_id, sum(p.n_trials for p in plans), label_names,
                                   study_prefix=f"{options.name}/")
        return _new_tuner(spec, plans, options.name, options.storage, callback, max_concurrent)
    if not tune.Tuner.can_restore(path):
        raise ResumeError(f"--resume: no Ray experiment to continue at {path}")
    damaged = []  # (file, why, where it was moved): every one of Ray's files that a full disk truncated
    while (found := damaged_experiment_state(path)) is not None:
        damaged.append((*found, set_aside(found[0])))
    if not damaged:
        return tune.Tuner.restore(path, trainable=_trainable(spec), resume_errored=True)
    # Ray would log the damage and silently start the whole experiment again, asking every study anew:
    # the studies in the results DB know what ran, so a new experiment runs only what is missing
    state, reason, aside = damaged[0]
    searcher = _searcher(spec, plans, options.name, options.db_url)
    todo, again = searcher.continue_from_studies()
    replaced = store.forget_errors(sweep_id, again)  # the reruns' rows take their place, as with Ray's resume
    store.remove_unfinished(sweep_id)  # in progress when Ray's record was lost: run again below
    done = sum(store.status_counts(sweep_id).values())
    print(f"[sweeper] Ray's experiment state {state} is damaged ({reason}; a full disk truncates it), moved to "
          f"{aside}. Continuing from the Optuna studies in the results DB: {sum(todo.values())} trial(s) still to "
          f"run in {sum(1 for n in todo.values() if n)} of {len(todo)} studies. The trials then in progress, and "
          f"{replaced} that had failed, start again from scratch with the same parameters (the errors stay in "
          f"Ray's trial directories)")
    callback = ResultsCallback(options.db_url, sweep_id, done + sum(todo.values()), label_names,
                               study_prefix=f"{options.name}/")
    return _new_tuner(spec, plans, options.name, options.storage, callback, max_concurrent, searcher)


RAY_STATE_FILES = (("experiment_state-", ".json", "json"), ("search_gen_state-", ".json", "pickle"),
                   ("tuner", ".pkl", "pickle"))  # what Tuner.restore reads; Ray pickles its search state


def damaged_experiment_state(path: str) -> tuple[str, str] | None:
    """(file, why) for the first of Ray's state files under `path` (the newest of each kind) that cannot be
    read; a full disk truncates them, as they share the storage path with the checkpoints. Our searcher's
    own state is not among them: it is rebuilt from the studies when unreadable (sweeper.search)."""
    import ray.cloudpickle

    filesystem, root = _filesystem(path)
    files = [info for info in filesystem.get_file_info(pyarrow.fs.FileSelector(root))
             if info.type == pyarrow.fs.FileType.File]
    for prefix, suffix, kind in RAY_STATE_FILES:
        found = sorted(i.path for i in files if i.base_name.startswith(prefix) and i.base_name.endswith(suffix))
        if not found:
            continue
        with filesystem.open_input_stream(found[-1]) as stream:
            data = stream.readall()
        try:
            json.loads(data.decode("utf-8")) if kind == "json" else ray.cloudpickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - truncated or empty: any failure to read means the same
            return found[-1], f"{type(exc).__name__}: {exc}"
    return None


def set_aside(state: str) -> str:
    """Rename a damaged experiment state so neither Ray nor a later --resume reads it; kept for a post-mortem."""
    filesystem, _ = _filesystem(state)
    aside = f"{state}.damaged"
    filesystem.move(state, aside)
    return aside


def _filesystem(path: str):
    return pyarrow.fs.FileSystem.from_uri(path if "://" in path else Path(path).resolve().as_uri())


# How long a reused trial worker waits for the last trial's thread to end (Ray's default: 2 s). Stopped by ASHA
# or finished, a trial's thread still unwinds its data loaders and gives its memory back (trainables.memory);
# on a busy node that took longer, Ray then failed the *next* trial ("reuse requires reset_config() to ... return
# True") without retrying it or calling any error hook. A thread that is really stuck still fails the trial.
THREAD_END_WAIT_S = 120


def worker_runtime_env() -> dict:
    """The runtime environment of every worker of a sweep: it imports the trainables as it starts
    (trainables.warm) and waits for a reused worker's last trial to end (THREAD_END_WAIT_S)."""
    wait = os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(THREAD_END_WAIT_S))
    return {"worker_process_setup_hook": "trainables.warm.import_trainables",
            "env_vars": {"TUNE_FUNCTION_THREAD_TIMEOUT_S": wait}}


def _start_ray(options: RunOptions, resources, max_concurrent: int | None, given: str | None = None) -> None:
    """A local Ray, or the cluster at --address. Every worker imports the trainables as it starts
    (trainables.warm), while the driver plans the sweep."""
    local = options.address == "local"
    try:
        ray.init(address=options.address, num_cpus=options.num_cpus if local else None,
                 include_dashboard=False, ignore_reinit_error=True, log_to_driver=True,
                 runtime_env=worker_runtime_env())
    except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
        if local:
            raise
        raise ray_address.ClusterUnreachable(ray_address.refused(given, options.address, exc)) from None
    queued = pending_trials(ray.cluster_resources(), resources, max_concurrent)
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(queued))
    print(f"[sweeper] {os.environ['TUNE_MAX_PENDING_TRIALS_PG']} trial(s) queued ahead of free resources"
          + (f", at most {max_concurrent} running" if max_concurrent else ""))


def run_sweep(spec: SweepSpec, spec_text: str, spec_arg: str, options: RunOptions) -> int:
    store = ResultsStore(options.db_url)  # a bad --db stops before data or Ray
    given = options.address
    options = dataclasses.replace(options, address=ray_address.resolve(given))  # and a cluster that is not there
    locations(spec, options.data)  # and so does a missing data location
    imagenet = preflight(spec, spec_arg)  # and every ImageNet weights file the grid needs, listed at once
    # and a raw source missing most of its images: data sets are built (or found built) before Ray starts
    data = ensure_datasets(spec, options.home, given=options.data)
    external = ensure_external(spec, options.home, given=options.data)
    r = spec.resources
    max_concurrent = options.max_concurrent or r.max_concurrent
    _start_ray(options, r, max_concurrent, given)
    try:
        cache = options.home / "pretrained"
        plans = study_plans(spec, data, pretrain_cache=cache)
        stages = attach_stages(plans, cache)
        target = PreparedDataset(data["target"])
        sweep_id = store.start_sweep(options.name, spec_arg, spec_text, options.version, spec.folds,
                                     spec.search.trials, split=target.split_name, folds_sha256=target.folds_sha256)
        store.register_cells(sweep_id, cell_rows(spec, plans, imagenet))
        store.image_groups(sweep_id, target.groups().to_dict("records"))  # for the report's subgroup results
        print(f"[sweeper] sweep {options.name}: {len(plans)} studies x {spec.search.trials} trials, "
              f"{len(stages)} pretraining stage(s); DB {options.db_url}")
        tasks = launch_stages(stages, cache, r.stage_cpus, r.stage_gpus, r.compute_device(r.stage_gpus))
        store.record_artefacts(sweep_id, artefact_rows(stages, training=tasks))
        started = time.monotonic()
        grid = _fit(_tuner(spec, plans, options, store, sweep_id, data["target"], max_concurrent))
        print(f"[sweeper] Tune ran for {time.monotonic() - started:.1f} s")
        stage_errors = stage_failures(tasks)
        store.record_artefacts(sweep_id, artefact_rows(stages, training=tasks, errors=stage_errors))
    finally:
        ray.shutdown()
    return _finish(store, sweep_id, grid, stages, stage_errors, options, data, spec, external)


def _fit(tuner: tune.Tuner):
    """Tuner.fit, where a results DB that cannot be written (full, above all: our callback's writes and
    Optuna's share it) ends the sweep with the store's message saying what to do, not Ray's traceback
    around it (sweeper.db_failures)."""
    db_failures.clear()
    try:
        return tuner.fit()
    except Exception:
        cause = db_failures.first()
        if cause is None:
            raise
        raise cause from None


def _finish(store: ResultsStore, sweep_id: int, grid, stages: dict, stage_errors: dict, options: RunOptions,
            data: dict[str, Path], spec: SweepSpec, external: dict[str, Path]) -> int:
    """Reconcile the DB with Ray's result grid, print the report and summary; the exit code."""
    errors = [t.error for t in grid if t.error is not None]  # Tuner.fit returns normally even then
    abandoned = store.remove_unfinished(sweep_id)
    if abandoned:
        print(f"[sweeper] {abandoned} trial(s) of the interrupted run that Ray had not saved were run again "
              f"as new trials; their partial rows were removed")
    counts = store.status_counts(sweep_id)
    failed = max(len(errors), counts.get("ERROR", 0))
    store.finish_sweep(sweep_id, "FINISHED" if not (failed or stage_errors) else "FINISHED_WITH_ERRORS")
    _evaluate_external(spec, options, external)
    _print_report(options, data)
    print(summary(counts, failed, stages, stage_errors, options.db_url, store.failed_trials(sweep_id)))
    return 0 if not (failed or stage_errors) else 1


def _evaluate_external(spec: SweepSpec, options: RunOptions, external: dict[str, Path]) -> None:
    """Apply every cell's fold models and fold ensemble to the spec's external test sets (sweeper.evaluate),
    here in the driver, after the sweep; a cell evaluated already from the same trials (a resumed sweep) keeps
    its predictions. A failure is reported with the command that does it again; the
    results are in the DB either way."""
    for name, path in external.items():
        how = spec.data.external[name]
        labels = {name: how.labels} if how.labels else {}
        for tta in how.tta:
            try:
                evaluate(options.db_url, options.name, {name: str(path)}, labels, None, tta,
                         spec.resources.device, log=print, keep_stored=True)
            except Exception as exc:  # noqa: BLE001 - the sweep's results stay; say how to do it again
                print(f"[sweeper] external set {name} (tta {tta}) could not be evaluated ({type(exc).__name__}: "
                      f"{exc}); again with python -m sweeper.evaluate --db {options.db_url} --sweep {options.name} "
                      f"--external {name}={path}" + (f" --labels {name}={how.labels}" if how.labels else "")
                      + f" --tta {tta}")


def _print_report(options: RunOptions, data: dict[str, Path]) -> None:
    """Print the report and write it, with the summaries of the sweep's data sets, under HOME/reports/NAME.
    The results are in the DB already, so a failure here is reported and the run's summary and exit code
    still follow."""
    again = f"python -m results.report --db {options.db_url} --sweep {options.name} --out DIR"
    try:
        extra = data_sections(data)
        if options.report_images and "target" in data:
            extra += explanation_sections(options.db_url, options.name, data["target"])
        markdown, written = write_report(options.db_url, options.name, options.home / "reports" / options.name,
                                         n_boot=options.report_bootstrap, extra_sections=extra)
    except Exception as exc:  # noqa: BLE001 - never lose the summary for the sake of the report
        print(f"[sweeper] the report could not be made ({type(exc).__name__}: {exc}); the results are in the DB: "
              f"{again}")
        return
    print(markdown)
    print(f"[sweeper] report: {written['html']} (and report.md, tables/, figures/ beside it); again with {again}")


def summary(counts: dict[str, int], failed: int, stages: dict, stage_errors: dict, db_url: str,
            failures: list[tuple[str, int, str]] = ()) -> str:
    """Done / pruned / failed per stage, each failed trial's last error line, and where the results are."""
    lines = [f"[sweeper] pretraining stages: {len(stages) - len(stage_errors)} ready, {len(stage_errors)} failed"]
    lines += [f"[sweeper]   {path.name} failed: {error}" for path, error in stage_errors.items()]
    lines.append(f"[sweeper] fine-tuning trials: {counts.get('COMPLETE', 0)} complete, "
                 f"{counts.get('PRUNED', 0)} pruned by ASHA, {failed} failed")
    lines += [f"[sweeper]   {study} fold {fold} failed: {last_line(error)}" for study, fold, error in failures[:20]]
    if len(failures) > 20:
        lines.append(f"[sweeper]   ... and {len(failures) - 20} more")
    lines.append(f"[sweeper] results in {db_url}"
                 + (" (failed trials: SELECT error FROM sweep_trials WHERE status = 'ERROR')" if failed else ""))
    return "\n".join(lines)


def last_line(error: str, width: int = 300) -> str:
    """The line of a trace that names the error (its last non-blank one), cut to `width` characters."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    text = lines[-1] if lines else "(no error text recorded)"
    return text if len(text) <= width else text[:width - 3] + "..."
