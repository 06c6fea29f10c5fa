"""`cxr-sweep rerun` (or `python -m sweeper.rerun`): train one recorded trial again, outside Ray, and compare
its predictions with the ones the DB holds.

    cxr-sweep rerun [--db URL] [--sweep NAME] (--trial TRIAL_KEY | --cell BACKBONE/RECIPE[/VARIANT] --fold N)
                    [--data target=PREPARED_DIR] [--tolerance 1e-6]

A trial is a seeded function of its FitConfig (`sweep_trials.fit_config`) and what its runtime record
(`sweep_trials.runtime`) names: the prepared data set and the pretrained weights by content, the threads
and precision it computed with, the library versions. What is not a function of them is which trials a
sweep runs and keeps: ASHA stops a trial at a rung by comparing it with those of its study that reported
there before it, so which trials complete, and so which is selected, depends on the order trials report
in (docs/demo.md, "What is reproducible"). A selected trial, once known, is repeated here exactly: the
re-run's test and inner-validation probabilities are compared with the stored ones (exit 0 when every one
is within --tolerance, 1 when not, saying which recorded condition differs).
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from results.trial_record import TrialRecord, trial_record
from vocab import cli
from vocab.errors import CxrSweepError
from vocab.records import Runtime, TrialPredictions

COMMAND = cli.Command(
    name="rerun", module="sweeper.rerun",
    summary="Train one recorded trial again outside Ray and compare its predictions with the stored ones.",
    description="The trial is repeated from the config and runtime the DB recorded (threads, precision, the data set "
                "and pretrained weights by content). Exit 0 when every stored test and inner-validation probability "
                "is within --tolerance, 1 when not, saying which recorded condition differs.",
    examples=("--cell resnet50/imagenet --fold 0", "--sweep demo-20260101-120000 --trial 3f2a1_00004",
              "--cell resnet18/scratch --fold 2 --data target=/data/prepared/target-1a2b --tolerance 1e-5"))

DIFFERENT = 1  # the exit status when the re-run's predictions differ from the stored ones
REPEATED_CONDITIONS = tuple(Runtime.model_fields)  # what a runtime record names


class RerunError(CxrSweepError):
    """A recorded trial that cannot be re-run here; the message says what is missing."""


def add_arguments(parser: cli.Parser) -> None:
    cli.add_db(parser)
    cli.add_sweep(parser)
    parser.add_argument("--trial", default=None, metavar="TRIAL_KEY", help="the trial's key (trial_summary.trial_key)")
    cli.add_cell(parser, help="with --fold: the cell's selected trial of that outer fold")
    cli.add_fold(parser, help="the outer fold, with --cell")
    cli.add_data(parser, names=("target",),
                 help="target=PREPARED_DIR: the prepared target set, where it is not at the recorded path (its data "
                      "set id must match the record's)")
    parser.rename("--data-dir", "--data", value="target={}")
    parser.add_argument("--tolerance", type=float, default=1e-6,
                        help="largest absolute difference of a probability counted as the same (default 1e-6)")

    def one_trial(args) -> None:
        if (args.trial is None) == (args.cell is None) or (args.cell is None) != (args.fold is None):
            raise RerunError("name the trial: --trial TRIAL_KEY, or --cell CELL with --fold N")

    parser.check(one_trial)


def repeat(record: TrialRecord, data_dir: str | None = None, log=print) -> tuple[TrialPredictions, dict]:
    """(the re-run's predictions, its runtime record) from the recorded config and runtime."""
    import torch  # here: `--help` and a mistyped flag answer without torch

    from data_prep.dataset import PreparedDataset
    from trainables.config import fit_config
    from trainables.fit import fit

    config = {**record.fit_config, **({"data_dir": data_dir} if data_dir else {})}
    data = PreparedDataset(config["data_dir"])
    if data.dataset_id != record.runtime["dataset_id"]:
        raise RerunError(f"{data.root} is data set {data.dataset_id}, the trial trained on "
                         f"{record.runtime['dataset_id']}; give the same prepared set with --data target=DIR")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(record.runtime["threads"]))  # a sum's order, and so its last bits, follow the threads
    kept: dict = {}
    try:
        fit(fit_config(config), report=lambda metrics, state: kept.update(state), log=log)
    finally:
        torch.set_num_threads(threads)
    predictions = TrialPredictions.from_state(kept["predictions"])
    return predictions, predictions.runtime.model_dump()


def differences(record: TrialRecord, predictions: TrialPredictions) -> pd.DataFrame:
    """Per split: images, the largest absolute difference between stored and re-run probabilities."""
    rows = []
    for split, stored in record.predictions.groupby("split"):
        again = predictions.splits[split]
        table = pd.DataFrame(again.probs, index=again.image_keys, columns=predictions.label_names)
        mine = table.stack().rename("again").rename_axis(["image_key", "class_name"]).reset_index()
        joined = stored.merge(mine, on=["image_key", "class_name"], how="outer", indicator=True)
        unmatched = int((joined["_merge"] != "both").sum())
        gap = np.abs(joined["prob"] - joined["again"]).max()
        rows.append({"split": split, "images": stored["image_key"].nunique(), "unmatched": unmatched,
                     "max_difference": float(gap)})
    return pd.DataFrame(rows)


def run(args) -> int:
    record = trial_record(args.db, args.sweep, args.trial, args.cell, args.fold)
    print(f"[rerun] trial {record.trial_key} of sweep {record.sweep!r}: {record.cell}, outer fold {record.fold}, "
          f"lr={record.fit_config['lr']:.3g} dropout={record.fit_config['dropout']:.3f} seed={record.fit_config['seed']}, "
          f"{record.runtime['threads']} thread(s) on {record.runtime['device']}")
    predictions, runtime = repeat(record, args.data.get("target"), log=lambda line: print(line, file=sys.stderr))
    changed = [f"{k}: recorded {record.runtime.get(k)}, now {runtime.get(k)}" for k in REPEATED_CONDITIONS
               if record.runtime.get(k) != runtime.get(k)]
    found = differences(record, predictions)
    for row in found.itertuples(index=False):
        print(f"[rerun] {row.split}: {row.images} images, largest difference {row.max_difference:.3g}"
              + (f", {row.unmatched} stored or re-run values without a counterpart" if row.unmatched else ""))
    same = bool((found["max_difference"] <= args.tolerance).all() and (found["unmatched"] == 0).all())
    if same:
        print(f"[rerun] the same predictions (every probability within {args.tolerance:g})")
        return 0
    print("[rerun] the predictions differ" + (f"; what differs from the record: {'; '.join(changed)}" if changed else
                                               "; every recorded condition is the same"))
    return DIFFERENT


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
