"""Run `fit` as a Ray Tune function trainable: report every epoch (with a checkpoint every
`checkpoint_every` epochs and at the end), and resume from the last checkpoint when Ray
restarts the trial; from scratch when that checkpoint is unreadable or gone."""
from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import pyarrow.fs
import ray
import torch
from ray import tune
from ray.tune.trainable import wrap_function

from trainables.config import fit_config, trial_metadata
from trainables.fit import fit
from trainables.memory import release_freed_memory
from vocab.records import TrialPredictions

STATE_FILE = "state.pt"
PREDICTIONS_FILE = "predictions.pt"  # the final checkpoint's TrialPredictions (its test and validation predictions,
# best epoch and runtime record), small, read by the driver


def _reporter(checkpoint_every: int):
    """Report every epoch; save a checkpoint every `checkpoint_every` epochs and always with the final
    report (it carries the test evaluation and predictions). A checkpoint is the model, the best
    weights and Adam's two moments, four times the weights (410 MB for resnet50): on a GPU, writing and
    persisting one can take as long as an epoch. A retried trial resumes from the last one saved, and
    redoes the epochs after it exactly (seeded)."""
    node = ray.get_runtime_context().get_node_id()  # which machine ran it: Ray's results name the IP only

    def report(metrics: dict, state: dict) -> None:
        metrics = {**metrics, "node_id": node}  # EpochReport.node_id
        if not metrics.get("completed") and metrics["epoch"] % checkpoint_every:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(state, Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    return report


def save_checkpoint(state: dict, directory: Path) -> None:
    """The state, and beside a final one its TrialPredictions on their own: what the driver reads of a completed
    trial (sweeper.callbacks.read_predictions) without fetching its weights."""
    torch.save(state, directory / STATE_FILE)
    if "predictions" in state:
        kept = TrialPredictions.from_state(state["predictions"])
        torch.save(kept.to_state(torch.from_numpy), directory / PREDICTIONS_FILE)


def load_state(directory: Path) -> dict | None:
    """The training state saved in a checkpoint directory, or None, with a warning, when it cannot be
    read (truncated by a full disk or a killed upload, or not a checkpoint of ours): the trial then
    starts again from scratch, which gives the same result as it is seeded. Tensors only
    (`weights_only=True`): a checkpoint cannot run code."""
    path = Path(directory) / STATE_FILE
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(state, dict) or "epoch" not in state:
            raise ValueError("it holds no training state")
        return state
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means the same: start again
        warnings.warn(f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); "
                      f"the trial starts again from scratch", RuntimeWarning, stacklevel=2)
        return None


def tune_fit(config: dict) -> None:
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # one line per checkpoint
    release_freed_memory()  # what the trial before freed, also when ASHA stopped it mid-report (trainables/memory.py)
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_state(Path(directory))
    try:
        fit(fit_config(config), report=_reporter(trial_metadata(config).checkpoint_every), state=state)
    finally:
        del state
        release_freed_memory()


class TuneFit(wrap_function(tune_fit)):
    """`tune_fit` as Ray's function trainable, which restarts a trial from scratch (the same result: it is
    seeded) when the checkpoint Ray restores it from is gone, instead of failing it. Ray's record of a sweep
    can name a checkpoint that no longer exists: a driver killed after a trial's newer checkpoint replaced
    it (`num_to_keep`) or the trial was pruned (its checkpoint deleted) but before Ray saved its experiment
    state again; a resume then failed that trial twice ("does not exist on storage anymore")."""

    _name = "tune_fit"  # Ray's trial names, as for the bare function

    def restore(self, checkpoint_path):
        checkpoint = getattr(checkpoint_path, "checkpoint", checkpoint_path)
        if isinstance(checkpoint, tune.Checkpoint) and checkpoint.filesystem.get_file_info(
                checkpoint.path).type == pyarrow.fs.FileType.NotFound:
            warnings.warn(f"checkpoint {checkpoint.path} is gone (a newer one replaced it, or the trial was pruned, "
                          f"after Ray last saved the sweep's state); the trial starts again from scratch",
                          RuntimeWarning, stacklevel=2)
            return
        super().restore(checkpoint_path)
