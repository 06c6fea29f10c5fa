"""How much `make demo` varies between runs, and why: compare the results DBs of several demo runs.

    python bench/demo_variation.py HOME1 HOME2 ... [--bootstrap 1000]

Each HOME is a demo run's home (its `results.db`, one sweep each). Printed: per run, the transfer effect
of every recipe (pooled test AUC difference to scratch, with its paired bootstrap interval); across
runs, its range; and what differed between runs, trial by trial (study, Optuna number): the parameters
drawn, the end state (COMPLETE / PRUNED), and, for trials complete in every run, the largest difference
of their stored test probabilities. BENCHMARKS.md and docs/demo.md quote its output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from results.analysis import Analysis
from results.load import load
from results.query import run_query
from results.tables import transfer_effect


def _db(home: Path) -> str:
    return f"sqlite:///{Path(home).resolve() / 'results.db'}"


def _trials(home: Path) -> pd.DataFrame:
    trials = run_query(_db(home), "SELECT t.id, t.study, t.optuna_number, t.status, t.params, t.epochs_run, "
                                  "st.trial_id AS selected FROM sweep_trials t LEFT JOIN selected_trials st "
                                  "ON st.trial_id = t.id")
    params = [json.loads(p) if isinstance(p, str) else p for p in trials["params"]]
    trials["lr"], trials["dropout"] = [p["lr"] for p in params], [p["dropout"] for p in params]
    trials["selected"] = trials["selected"].notna()
    return trials.set_index(["study", "optuna_number"]).sort_index()


def _effects(home: Path, n_boot: int) -> pd.DataFrame:
    analysis = Analysis(load(_db(home)), n_boot=n_boot)
    (table,) = transfer_effect(analysis)
    return table.numbers.set_index(["backbone", "recipe"])[["auc_pooled", "reference_auc_pooled", "auc_diff",
                                                            "auc_diff_ci_low", "auc_diff_ci_high"]]


def _test_probs(home: Path, trial_ids) -> dict[int, pd.Series]:
    rows = run_query(_db(home), "SELECT trial_id, image_key, class_name, prob FROM test_predictions "
                                f"WHERE split = 'test' AND trial_id IN ({','.join(map(str, trial_ids)) or 'NULL'})")
    return {t: part.set_index(["image_key", "class_name"])["prob"].sort_index() for t, part in rows.groupby("trial_id")}


def compare_trials(homes: list[Path]) -> dict:
    """What differed between the runs, trial by trial."""
    runs = [_trials(h) for h in homes]
    first = runs[0]
    same_params = all(np.allclose(r.loc[first.index, ["lr", "dropout"]], first[["lr", "dropout"]]) for r in runs)
    status = pd.concat([r["status"].rename(i) for i, r in enumerate(runs)], axis=1)
    chosen = pd.concat([r[r["selected"]].reset_index().set_index("study")["optuna_number"].rename(i)
                        for i, r in enumerate(runs)], axis=1)  # each study's selected Optuna number, per run
    complete_everywhere = status.index[(status == "COMPLETE").all(axis=1)]
    gaps = []
    probs = [_test_probs(h, r.loc[complete_everywhere, "id"]) for h, r in zip(homes, runs)]
    for key in complete_everywhere:
        base = probs[0][runs[0].loc[key, "id"]]
        gaps.append(max(float(np.abs(p[r.loc[key, "id"]] - base).max()) for p, r in zip(probs, runs)))
    return {"trials": len(first), "studies": len(chosen), "same_params_everywhere": same_params,
            "trials_whose_end_differs": int((status.nunique(axis=1) > 1).sum()),
            "studies_whose_selected_trial_differs": int((chosen.nunique(axis=1, dropna=False) > 1).sum()),
            "complete_in_every_run": len(complete_everywhere),
            "largest_probability_difference_of_those": max(gaps) if gaps else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("homes", nargs="+", type=Path)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    effects = [_effects(h, args.bootstrap) for h in args.homes]
    for home, effect in zip(args.homes, effects):
        print(f"## {home}")
        print(effect.round(3).to_string())
    diffs = pd.concat([e["auc_diff"].rename(str(h)) for h, e in zip(args.homes, effects)], axis=1)
    summary = pd.DataFrame({"min": diffs.min(axis=1), "median": diffs.median(axis=1), "max": diffs.max(axis=1),
                            "runs_interval_above_0": sum((e["auc_diff_ci_low"] > 0).astype(int) for e in effects),
                            "runs_interval_below_0": sum((e["auc_diff_ci_high"] < 0).astype(int) for e in effects)})
    print("## Transfer effect (pooled test AUC minus scratch) across runs")
    print(summary.round(3).to_string())
    print("## What differed between runs")
    print(json.dumps(compare_trials(args.homes), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
