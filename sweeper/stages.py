"""Pretraining stages of a sweep, trained as Ray tasks of their own (docs/design.md §3.1).

Every unique stage the grid needs is launched at the start (unless its weights are already
in the cache) with the spec's pretraining resources. The searcher hands out a fine-tuning
trial only when what it needs exists, so cells without pretraining start at once and no
trial holds a GPU while it waits for a stage. A stage that fails leaves its error beside
the weights (`.failed`): the trials that need it then fail at once with that error, are
recorded, and the sweep goes on; the next run of the sweep clears the marker and retries.
"""
from __future__ import annotations

from pathlib import Path

import ray
import torch

from sweeper.search import StudyPlan
from trainables.pretrain import Stage, ensure_stage, failure_marker, stage_path
from trainables.config import fit_config
from trainables.memory import release_freed_memory


def attach_stages(plans: list[StudyPlan], cache_dir: Path) -> dict[Path, Stage]:
    """Each plan's `needs` (its stage's weights file); the unique stages by path."""
    paths: dict[Stage, Path] = {}  # many plans share a stage: read its manifests once
    for plan in plans:
        stage = fit_config(plan.config).stage()
        if stage is not None:
            if stage not in paths:
                paths[stage] = stage_path(stage, cache_dir)
            plan.needs = str(paths[stage])
    return {path: stage for stage, path in paths.items()}


@ray.remote
def _train_stage(stage: Stage, cache_dir: str, device: str, threads: int) -> str:
    torch.set_num_threads(max(1, threads))
    try:
        return str(ensure_stage(stage, Path(cache_dir), torch.device(device)))
    finally:
        release_freed_memory()  # Ray reuses this worker for the next task (trainables/memory.py)


def launch_stages(stages: dict[Path, Stage], cache_dir: Path, cpus: float, gpus: float, device: str,
                  log=print) -> dict:
    """Start a task for every stage whose weights are missing; {path: task}."""
    tasks = {}
    for path, stage in stages.items():
        if path.is_file():
            continue
        failure_marker(path).unlink(missing_ok=True)  # an earlier run's failure: try again
        log(f"[sweeper] pretraining stage {path.name}: starting")
        tasks[path] = _train_stage.options(num_cpus=cpus, num_gpus=gpus).remote(
            stage, str(cache_dir), device, int(cpus))
    return tasks


def stage_failures(tasks: dict) -> dict[Path, str]:
    """{path: error} of the launched stages that failed (all tasks have ended by the time trials have)."""
    failed = {}
    for path, task in tasks.items():
        try:
            ray.get(task)
        except Exception as exc:  # noqa: BLE001 - reported per stage, never fatal to the sweep
            failed[path] = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return failed


def artefact_rows(stages: dict[Path, Stage], training=(), errors: dict[Path, str] | None = None) -> list[dict]:
    """The stages as the results DB's pretrain_artefacts rows: CACHED (found before the sweep), TRAINING
    (launched), READY (trained by this sweep) or FAILED with its error. `errors` is given once the
    launched tasks have ended."""
    rows = []
    for path, stage in stages.items():
        if errors is not None and path in errors:
            status = "FAILED"
        elif path in training:
            status = "READY" if errors is not None and path.is_file() else "TRAINING"
        else:
            status = "CACHED" if path.is_file() else "TRAINING"
        rows.append({"name": path.name, "backbone": stage.backbone, "strategy": stage.strategy, "init": stage.init,
                     "epochs": stage.epochs, "lr": stage.lr, "status": status,
                     "error": (errors or {}).get(path),
                     "size_bytes": path.stat().st_size if path.is_file() else None})
    return rows
