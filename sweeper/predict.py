"""`cxr-sweep predict` (or `python -m sweeper.predict`): apply a sweep's trained model to new DICOM, PNG or
JPG files.

    cxr-sweep predict [--db URL] [--sweep NAME] [--cell BACKBONE/RECIPE | --best] FILES_OR_FOLDERS...
                      [--ensemble] [--tta hflip] [--threshold RULE] [--out predictions.csv]
                      [--explain DIR] [--layers DIR]

The model is a cell's trial best on inner validation (results.choose), rebuilt from its final
checkpoint in Ray's storage; images are decoded as the data set it trained on was built
(trainables.predict). Files that cannot be decoded get data_prep's reason; the rest are predicted.
`--ensemble` applies the cell's fold ensemble instead (the mean probability of its selected trial of
every outer fold), `--tta hflip` averages each image with its mirror image; the output says which.
A label is predicted above its threshold: by default the trial's own (its training prevalence, seed
000's), or with `--threshold RULE` one fitted by that rule on the trial's inner-validation predictions
(results.operating_points), never on test images.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from results.choose import ChosenTrial, cell_models, validation_predictions
from results.operating_points import check_rule, fit_threshold
from vocab import cli
from vocab.names import TTA

if TYPE_CHECKING:  # torch and Ray are imported where used: `--help` and a mistyped flag answer without them
    from trainables.predict import TrainedModel

COMMAND = cli.Command(
    name="predict", module="sweeper.predict",
    summary="Apply a sweep's trained model to new DICOM, PNG or JPG files.",
    description="The model is a cell's trial best on inner validation (or, with --ensemble, the mean of its selected "
                "trial of every outer fold), rebuilt from its checkpoint in the sweep's Ray storage; files are decoded "
                "as the data set it trained on was built. A file that cannot be decoded is listed with the reason.",
    examples=("films/", "--cell resnet50/imagenet_nih --ensemble --tta hflip --out predictions.csv films/",
              "--threshold sensitivity:0.9 --explain heatmaps/ film1.dcm film2.dcm"))
PRINT_ALL_UP_TO = 20  # files whose every probability is printed; beyond, the predicted labels only


def add_arguments(parser: cli.Parser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILES_OR_FOLDERS",
                        help="image files, or folders searched for .dcm/.dicom/.png/.jpg files and files with no suffix")
    cli.add_db(parser)
    cli.add_sweep(parser)
    which = parser.add_mutually_exclusive_group()
    cli.add_cell(which, help="the cell whose model to apply (its fold with the best inner-validation AUC)")
    which.add_argument("--best", action="store_true",
                       help="the cell with the best mean inner-validation AUC (the default)")
    parser.add_argument("--ensemble", action="store_true",
                        help="average the probabilities of the cell's model of every outer fold (its fold "
                             "ensemble) instead of applying the one best on inner validation")
    cli.add_tta(parser, TTA)
    cli.add_threshold(parser, check_rule,
                      help="call a label positive above the threshold RULE fits on the trial's inner-validation "
                           "predictions: prevalence, youden, or sensitivity:S (e.g. sensitivity:0.9); default: the "
                           "trial's own thresholds, its training prevalence")
    cli.add_out(parser, "CSV file to write every file's probabilities to")
    parser.add_argument("--explain", type=Path, default=None, metavar="DIR",
                        help="write a Grad-CAM heatmap over each file for each label it predicts (the most likely "
                             "one if none), one per branch of a mixed model, as PNG here")
    parser.add_argument("--layers", type=Path, default=None, metavar="DIR",
                        help="write the outputs of a few layers of each branch for each file, as image grids, here")
    cli.add_device(parser)
    parser.add_argument("--batch-size", type=cli.at_least(1), default=64, metavar="N",
                        help="images per forward pass (default 64)")
    cli.add_workers(parser, default="all cores but one")


def read_checkpoint(uri: str) -> bytes:
    """The state file of a checkpoint directory kept in Ray's storage (a path, or s3:// gs:// ...)."""
    import pyarrow.fs

    from trainables.predict import PredictError
    from trainables.tune_adapter import STATE_FILE

    where = f"{uri.rstrip('/')}/{STATE_FILE}"
    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(where if "://" in where else Path(where).resolve().as_uri())
        with filesystem.open_input_stream(path) as stream:
            return stream.readall()
    except (OSError, pyarrow.ArrowException) as exc:
        raise PredictError(f"cannot read the model's checkpoint {where} ({exc}); it is kept in the sweep's Ray "
                           f"storage: run where that storage is mounted, or copy it back there") from exc


def describe(chosen: ChosenTrial, model: TrainedModel) -> str:
    return (f"[predict] model: sweep {chosen.sweep}, cell {chosen.cell}, outer fold {chosen.fold}, trial "
            f"{chosen.trial_key} (inner-validation AUC {chosen.val_auc:.3f}); images decoded at {model.size} px, "
            f"{model.bits}-bit, on {model.device}")


def operating_point(db: str, chosen: ChosenTrial, model: TrainedModel, rule: str) -> tuple[np.ndarray, list[str], int]:
    """(thresholds `rule` fits on the trial's inner-validation predictions, the labels that keep the trial's own
    because their validation images lack positives or negatives, how many images they were fitted on)."""
    truth, probs = validation_predictions(db, chosen, model.label_names)
    fitted = np.array([fit_threshold(rule, truth[:, k], probs[:, k]) for k in range(len(model.label_names))])
    kept = [name for name, t in zip(model.label_names, fitted) if np.isnan(t)]
    return np.where(np.isnan(fitted), model.thresholds, fitted), kept, len(truth)


def _thresholds(args, members: list[ChosenTrial], models: list[TrainedModel]) -> str:
    """Set the first model's thresholds, the ones applied, and say which they are: each member's own (its
    training prevalence) or fitted by --threshold on its inner validation; for an ensemble, their mean."""
    if not args.threshold:
        found = [m.thresholds for m in models]
        text = "[predict] thresholds: the trial's own (its training prevalence per label)"
        kept, images = [], []
    else:
        fitted = [operating_point(args.db, c, m, args.threshold) for c, m in zip(members, models)]
        found = [f[0] for f in fitted]
        kept = sorted({name for f in fitted for name in f[1]})
        images = [f[2] for f in fitted]
        text = (f"[predict] thresholds: {args.threshold}, fitted on the trial's {images[0]} inner-validation images"
                if len(models) == 1 else f"[predict] thresholds: {args.threshold}, fitted on each fold model's "
                f"inner-validation images ({', '.join(map(str, images))})")
    models[0].thresholds = np.mean(found, axis=0)
    if len(models) > 1:
        text += ", averaged over the fold models"
    text += ": " + ", ".join(f"{n} {t:.3f}" for n, t in zip(models[0].label_names, models[0].thresholds))
    return text + (f"; kept the trial's own for {', '.join(kept)} (no positive or no negative there)" if kept else "")


def _line(path: Path, probs: np.ndarray, model: TrainedModel, every: bool) -> str:
    """The labels above their fitted thresholds; with `every`, each label's probability too, highest first."""
    above = probs > model.thresholds
    names = [name for name, yes in zip(model.label_names, above) if yes]
    text = f"{path}: {', '.join(names) if names else 'no label above its threshold'}"
    if every:
        width = max(map(len, model.label_names))
        text += "".join(f"\n    {model.label_names[k]:<{width}}  {probs[k]:.3f}  (threshold {model.thresholds[k]:.3f})"
                        + ("  *" if above[k] else "") for k in np.argsort(-probs))
    return text


def explain(model: TrainedModel, image: np.ndarray, probs: np.ndarray, out: Path, stem: str) -> list[Path]:
    """Grad-CAM over the input for each label above its threshold (else the most likely one), per branch."""
    from trainables.explain import heatmap_overlays, safe_name, write_png

    labels = np.flatnonzero(probs > model.thresholds)
    labels = labels[np.argsort(-probs[labels])] if len(labels) else np.argsort(-probs)[:1]
    written = []
    for k in labels:
        pictures = heatmap_overlays(model.model, model.tensor(image), int(k))
        for b, picture in enumerate(pictures):
            branch = f"_branch{b}" if len(pictures) > 1 else ""
            name = f"{stem}_{safe_name(model.label_names[k])}{branch}.png"
            written.append(write_png(picture, out / name, scale_to=256))
    return written


def show_layers(model: TrainedModel, image: np.ndarray, out: Path) -> list[Path]:
    from trainables.explain import layer_grid, layer_outputs, safe_name, write_png

    return [write_png(layer_grid(output), out / f"{safe_name(name)}.png", scale_to=256)
            for name, output in layer_outputs(model.model, model.tensor(image)).items()]


def _load(chosen: ChosenTrial, device: str) -> TrainedModel:
    from trainables.predict import TrainedModel

    return TrainedModel.load(read_checkpoint(chosen.checkpoint), device, source=chosen.checkpoint)


ENSEMBLE_CHUNK = 512  # files decoded and held at once when the fold models' probabilities are averaged


def _predictions(files: list[Path], models: list[TrainedModel], args):
    """Each file's Prediction in order, with a progress bar: one model's streamed as decoded; an ensemble's
    a chunk at a time, the first model decoding and the others predicting the same pixels, then the mean."""
    with tqdm(total=len(files), unit="image", disable=None, file=sys.stderr) as bar:
        step = len(files) if len(models) == 1 else ENSEMBLE_CHUNK
        for start in range(0, len(files), max(step, 1)):
            found = []
            for prediction in models[0].predict(files[start:start + step], args.batch_size, args.workers, args.tta):
                bar.update(1)
                if len(models) == 1:
                    yield prediction
                else:
                    found.append(prediction)
            decoded = [p for p in found if p.probs is not None]
            if decoded:
                images = np.stack([p.image for p in decoded])
                mean = iter(np.mean([np.stack([p.probs for p in decoded])]
                                    + [m.probabilities(images, args.tta, args.batch_size) for m in models[1:]], axis=0))
                found = [p._replace(probs=next(mean)) if p.probs is not None else p for p in found]
            yield from found


def run(args) -> int:
    from trainables.explain import safe_name
    from trainables.predict import PredictError, image_files

    files = image_files(args.inputs)
    if not files:
        raise PredictError(f"no image files under {', '.join(map(str, args.inputs))}")
    members = cell_models(args.db, args.sweep, args.cell, every=args.ensemble)
    members = members if args.ensemble else members[:1]
    models = [_load(chosen, args.device) for chosen in members]
    model = models[0]  # decodes the files (every fold model of a cell trained on the same data set)
    print(describe(members[0], model), file=sys.stderr)
    if args.ensemble:
        print(f"[predict] fold ensemble: the mean of {len(models)} models, the cell's selected trial of outer "
              f"fold(s) {', '.join(str(c.fold) for c in members)}", file=sys.stderr)
    if args.tta != "none":
        print(f"[predict] test-time augmentation: {args.tta} (each image's mean with its mirror image)", file=sys.stderr)
    print(_thresholds(args, members, models), file=sys.stderr)
    rows, rejected, explained = [], 0, 0
    every = len(files) <= PRINT_ALL_UP_TO
    for number, (path, probs, reason, image) in enumerate(_predictions(files, models, args)):
        if probs is None:
            rejected += 1
            rows.append({"file": str(path), "rejected": reason, "predicted": ""})
            tqdm.write(f"{path}: rejected: {reason}", file=sys.stdout)  # above the progress bar
            continue
        above = probs > model.thresholds
        rows.append({"file": str(path), "rejected": "",
                     "predicted": "|".join(n for n, yes in zip(model.label_names, above) if yes),
                     **{name: float(p) for name, p in zip(model.label_names, probs)}})
        tqdm.write(_line(path, probs, model, every), file=sys.stdout)
        stem = f"{number:05d}_{safe_name(path.stem)}"
        if args.explain:
            explained += len(explain(model, image, probs, args.explain, stem))
        if args.layers:
            explained += len(show_layers(model, image, args.layers / stem))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["file", "rejected", "predicted", *model.label_names])
            writer.writeheader()
            writer.writerows(rows)
    print(f"[predict] {len(files) - rejected} image(s) predicted, {rejected} rejected"
          + (f"; every probability in {args.out}" if args.out else "")
          + (f"; {explained} picture(s) in {', '.join(str(d) for d in (args.explain, args.layers) if d)}"
             if explained else ""), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
