"""`cxr-sweep evaluate` (or `python -m sweeper.evaluate`): apply a finished sweep's models to test sets from
elsewhere.

    cxr-sweep evaluate [--db URL] [--sweep NAME] --external NAME=PREPARED_DIR [--mapping NAME=MAPPING.toml]
                       [--cell BACKBONE/RECIPE[/VARIANT] ...] [--tta hflip] [--device cuda]

An external set is a data set prepared by data_prep (another hospital's films, NIH's official test
list, CheXpert's validation set) that no trial trained, tuned or early-stopped on. Each cell's selected
trial of every outer fold, and their fold ensemble (the mean of their probabilities), are applied to it
through the trials' own evaluation path (trainables.predict); the predictions go to the results DB
(`external_predictions`, separate rows per model and test-time augmentation) and the report compares
internal with external AUC and AP. The set's labels are mapped onto the target's by a TOML like the
target mapping (`[categories]` then `"cardiac hypertrophy" = ["Cardiomegaly"]`: the target's label, then
the set's labels that mean it, positive when any is); without one, labels of the same name are paired.
Target labels with no counterpart are left out, and said so (`--labels NAME=MAPPING`, this flag's former
name, is still accepted). `python -m results.evaluate` is the same
command (it hands over to this one: results itself imports nothing that runs a model, so that a report
can be made from a copied DB without torch).
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

from vocab import cli
from vocab.errors import CxrSweepError
from vocab.names import TTA

if TYPE_CHECKING:  # imported where used: `--help` and a mistyped flag answer without torch
    from data_prep.dataset import PreparedDataset
    from results.store import ResultsStore
    from trainables.predict import TrainedModel

COMMAND = cli.Command(
    name="evaluate", module="sweeper.evaluate",
    summary="Apply a finished sweep's models to external test sets and store their predictions in the DB.",
    description="Each cell's selected trial of every outer fold, and their fold ensemble, are applied to a data set "
                "prepared by data_prep that no trial saw; `cxr-sweep report` then compares internal with external "
                "AUC and AP. The set's labels are paired with the target's by name, or by a label mapping (--mapping).",
    examples=("--external elsewhere=/data/prepared/target-9f8e",
              "--sweep paper-20260101-120000 --external nih=/data/prepared/nih-1a2b --mapping nih=nih_as_seed000_target",
              "--external elsewhere=/data/prepared/target-9f8e --cell resnet50/imagenet --tta hflip --device cuda"))


class ExternalError(CxrSweepError):
    """An external set or label mapping that cannot be used; the message says which and why."""


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def label_mapping(targets: list[str], theirs: list[str], mapping_file: str | None, name: str) -> dict[str, list[str]]:
    """{target label: the set's labels that mean it} for the target labels the set can judge."""
    if mapping_file is None:
        by_name = {_norm(n): n for n in theirs}
        found = {t: [by_name[_norm(t)]] for t in targets if _norm(t) in by_name}
        if not found:
            raise ExternalError(f"external set {name}: none of its labels ({', '.join(theirs)}) is one of the "
                                f"target's ({', '.join(targets)}); give a mapping with --mapping {name}=MAPPING.toml")
        return found
    from data_prep.sources.target import load_mapping

    mapping = load_mapping(mapping_file)
    unknown = [t for t in mapping.names if t not in targets]
    if unknown:
        raise ExternalError(f"{mapping_file}: {unknown} are not labels of the sweep's target; expected some of "
                            f"{', '.join(targets)}")
    missing = sorted({s for t in mapping.names for s in mapping.categories[t] if s not in theirs})
    if missing:
        raise ExternalError(f"{mapping_file}: {missing} are not labels of external set {name}; its labels: "
                            f"{', '.join(theirs)}")
    found = {t: list(mapping.categories[t]) for t in targets if t in mapping.names and mapping.categories[t]}
    if not found:
        raise ExternalError(f"{mapping_file}: maps none of the target's labels to a label of {name}")
    return found


def mapped_truth(data: PreparedDataset, mapping: dict[str, list[str]]) -> np.ndarray:
    """Images x mapped target labels: 1 where any of the set's labels is positive, 0 where all are known and
    negative, NaN (unknown) otherwise."""
    columns = []
    for theirs in mapping.values():
        part = data.labels[:, [data.label_names.index(t) for t in theirs]].astype(np.float64)
        positive, known = (part == 1).any(axis=1), ~np.isnan(part).any(axis=1)
        columns.append(np.where(positive, 1.0, np.where(known, 0.0, np.nan)))
    return np.column_stack(columns)


def _macro_auc(truth: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    scores = [roc_auc_score(truth[k][~np.isnan(truth[k])], probs[k][~np.isnan(truth[k])])
              for k in range(truth.shape[0]) if 0 < np.nansum(truth[k]) < (~np.isnan(truth[k])).sum()]
    return float(np.mean(scores)) if scores else float("nan")


def evaluate(db: str, sweep: str | None, externals: dict[str, str], labels: dict[str, str], cells: list[str] | None,
             tta: str, device: str, log=print, keep_stored: bool = False) -> int:
    """Apply each cell's fold models and their ensemble to each external set and store the predictions.
    `keep_stored` (the sweep driver at the end of every run, a resume included): a cell whose stored
    predictions on the same prepared set, label mapping and augmentation come from exactly its selected
    trials keeps them instead of predicting again."""
    from data_prep.dataset import PreparedDataset
    from results.choose import fold_models, selected_trials
    from results.load import latest_sweep, reading
    from results.store import ResultsStore

    with reading(db) as conn:
        sweep = sweep or latest_sweep(conn, db)
        selected = selected_trials(conn, sweep)
    names = [c for c in dict.fromkeys(selected["name"]) if not cells or c in cells]
    unknown = sorted(set(cells or []) - set(names))
    if unknown or not names:
        raise ExternalError(f"sweep {sweep!r}: no completed cell {unknown or ''}; its cells: "
                            f"{sorted(set(selected['name']))}")
    store = ResultsStore(db)
    sweep_id = store.sweep_id(sweep)
    for name, path in externals.items():
        data = PreparedDataset(path)
        if not len(data.image_keys):
            raise ExternalError(f"external set {name}: {path} holds no images")
        log(f"[evaluate] external set {name}: {data.root.name}, {len(data.image_keys)} images, "
            f"labels {', '.join(data.label_names)}")
        external_id, mapped, truth = None, None, None
        for cell in names:
            members = fold_models(selected, db, sweep, cell)  # the selected trials read above
            first = members[0]
            where = {"backbone": first.backbone, "recipe": first.recipe, "variant": first.variant}
            models = None
            if mapped is None:  # the first cell's models name the labels the set is mapped onto
                models = _load(members, device)
                mapping = label_mapping(models[0].label_names, data.label_names, labels.get(name), name)
                mapped, truth = list(mapping), mapped_truth(data, mapping)
                left_out = [t for t in models[0].label_names if t not in mapping]
                judged = ", ".join(f"{t} (as {' or '.join(s)})" for t, s in mapping.items())
                log(f"[evaluate] {name}: judges {judged}"
                    + (f"; left out (no counterpart): {', '.join(left_out)}" if left_out else ""))
                external_id = store.external_set(sweep_id, name, data.root.name, len(data.image_keys), mapping,
                                                 left_out)
            if keep_stored and _stored(store, sweep_id, external_id, where, tta, members):
                log(f"[evaluate] {name}: {cell}: stored from its selected trials already, kept")
                continue
            models = models or _load(members, device)
            columns = [models[0].label_names.index(t) for t in mapped]
            keys = {"image_keys": [str(k) for k in data.image_keys], "patient_keys": [str(k) for k in data.patient_keys],
                    "labels": truth}
            blocks = [{"model": "fold", "fold": m.fold, "trial_key": m.trial_key, **keys,
                       "probs": model.predict_prepared(data, tta)[:, columns]} for m, model in zip(members, models)]
            blocks.append({"model": "ensemble", **keys, "probs": np.mean([b["probs"] for b in blocks], axis=0)})
            store.external_predictions(sweep_id, external_id, where, tta, blocks, mapped)
            log(f"[evaluate] {name}: {cell}: macro AUC of its {len(members)} fold model(s) "
                + ", ".join(f"{_macro_auc(truth.T, b['probs'].T):.3f}" for b in blocks[:-1])
                + f"; fold ensemble {_macro_auc(truth.T, blocks[-1]['probs'].T):.3f}"
                + (f" (tta {tta})" if tta != "none" else ""))
    store.engine.dispose()
    log(f"[evaluate] stored in {db} (table external_predictions, view external_results); "
        f"python -m results.report --db {db} --sweep {sweep} compares them with the internal test folds")
    return 0


def _load(members, device: str) -> list[TrainedModel]:
    from sweeper.predict import read_checkpoint
    from trainables.predict import TrainedModel

    return [TrainedModel.load(read_checkpoint(m.checkpoint), device, source=m.checkpoint) for m in members]


def _stored(store: ResultsStore, sweep_id: int, external_id: int, cell: dict, tta: str, members) -> bool:
    """Whether the cell's stored predictions on the external set are those of exactly `members`' trials
    (external_set has dropped them where the prepared set or the label mapping changed)."""
    return store.external_trial_keys(sweep_id, external_id, cell, tta) == {m.trial_key for m in members}


def add_arguments(parser: cli.Parser) -> None:
    cli.add_db(parser)
    cli.add_sweep(parser)
    parser.add_argument("--external", action="append", required=True, metavar="NAME=PREPARED_DIR",
                        help="a data set prepared by data_prep that no trial saw; repeat for several")
    parser.add_argument("--mapping", action="append", metavar="NAME=MAPPING",
                        help="how the external set NAME's labels map onto the target's: a .toml file or a shipped "
                             "mapping (nih_as_seed000_target); default: labels of the same name")
    parser.rename("--labels", "--mapping")
    cli.add_cell(parser, repeat=True,
                 help="evaluate only these cells (repeatable; default: every cell with a completed trial)")
    cli.add_tta(parser, TTA)
    cli.add_device(parser)

    def named(args) -> None:
        args.external = cli.pairs(args.external, "--external", "NAME=PREPARED_DIR")
        args.mapping = cli.pairs(args.mapping, "--mapping", "NAME=MAPPING")
        stray = sorted(set(args.mapping) - set(args.external))
        if stray:
            raise ExternalError(f"--mapping names {stray}, which no --external names")

    parser.check(named)


def run(args) -> int:
    cells = [c.strip("/") for c in args.cell] if args.cell else None
    return evaluate(args.db, args.sweep, args.external, args.mapping, cells, args.tta, args.device)


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
