"""Build a prepared data set from a DICOM folder and a label CSV.

Output (immutable, content-addressed: the directory name is a hash of the inputs and every
parameter, so the same inputs and settings give the same directory):
    images.npy     N x S x S uint8 (or uint16 with bits=16), bright = dense; np.load(mmap_mode="r")
    labels.csv     image_key, patient_key, view, sex (M, F or empty), age (years, "90+" above 89, or
                   empty), source_height, source_width (the image's own size before resizing), one
                   0/1 column per label, empty where unknown (row i = image i)
    folds.csv      image_key, fold
    rejected.csv   csv_row, image_key, reason (quarantined files)
    duplicates.csv csv_row, image_key, duplicate_of, kind, similarity, same_patient, same_labels
                   (exact: the same prepared pixels; near: the same exposure re-exported,
                   see data_prep.duplicates); the earliest row of each group is kept
    manifest.json  label names, size, parameters, input hashes, counts
Keys are keyed pseudonyms; no file name or DICOM header value is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from tqdm import tqdm

from data_prep.decode import DTYPES, decoded
from data_prep.duplicates import THUMB, near_duplicates, thumbnail
from data_prep.errors import DataPrepError
from data_prep.folds import holdout_split, patient_folds
from data_prep.settings import BuildSettings
from data_prep.sources import (KINDS, SPLITS, SourceOptions, add_cli_options, kind_help, label_table, official_help,
                               options_from_args, read_labels, read_official, table_help)
from data_prep.table_layout import METADATA, columns
from data_prep.labelset import age_years, file_sha256, sex_of
from data_prep.locate import check_missing, locate_label_set
from data_prep.pseudonym import Pseudonymizer, load_or_create_key
from data_prep.node_copy import file_checksums
from vocab import cli

FORMAT_VERSION = 3  # 2: labels.csv carries sex and age; folds balance image-level prevalence; 3: lossy films
# a few units beyond BitsStored are clipped, not rejected (a set built before would keep them in rejected.csv)
JOURNAL = "progress.jsonl"  # what an interrupted build had finished
JOURNAL_EVERY = 256  # images between journal writes
DUPLICATE_COLUMNS = ["csv_row", "image_key", "duplicate_of", "kind", "similarity", "same_patient", "same_labels"]


def input_hashes(files: list[str], paths: list[Path | None], labels_csv: Path) -> dict[str, str]:
    """Hashes of the label CSV and of all listed images (paths as listed and bytes, wherever the layout put
    them), without naming files."""
    images = hashlib.sha256()
    for rel, path in sorted(zip(files, paths), key=lambda pair: pair[0]):
        images.update(rel.encode() + b"\0" + (file_sha256(path).encode() if path is not None else b"missing"))
    return {"labels_csv": file_sha256(labels_csv), "images": images.hexdigest()}


def locate_listed(image_dir: Path, labels_csv: Path, source: SourceOptions, allow_missing: bool = False,
                  split: str = "random"):
    """(label set, where each row's image is) for the rows the source's options keep (with the official split,
    its test rows included and marked); DataPrepError when more than 1% of them are not found under
    `image_dir` and `allow_missing` is off."""
    label_set = read_official(labels_csv, source)[0] if split == "official" else read_labels(labels_csv, source)
    label_set, located = locate_label_set(source.kind, image_dir, label_set)  # a study's row: a row per image
    check_missing(source.kind, located, [str(f) for f in label_set.frame["file"]], labels_csv, allow_missing,
                  label_set.frame["csv_row"].tolist(), label_set.stats.get("images_named_by", "file"))
    return label_set, located


def build(image_dir: Path, labels_csv: Path, out_root: Path, params: BuildSettings,
          name: str = "target", key: bytes | None = None, log=print) -> Path:
    """Build (or reuse) the prepared data set; return its directory."""
    image_dir, out_root = Path(image_dir), Path(out_root)
    labels_csv = label_table(labels_csv, params.source)  # a folder or a sibling table: the file hashed below
    if not image_dir.is_dir():
        raise DataPrepError(f"image folder {image_dir} does not exist")
    label_set, located = locate_listed(image_dir, labels_csv, params.source, params.allow_missing, params.split)
    table, names = label_set.frame, label_set.names
    files = [str(f) for f in table["file"]]
    log(f"[data_prep] {len(files) - len(located.missing)} of {len(files)} listed images found under {image_dir}"
        + (f" in {len(located.folders)} folders (indexed in {located.seconds:.1f} s)" if located.seconds else ""))
    paths = [path or image_dir / rel for path, rel in zip(located.paths, files)]  # missing: rejected as not found
    pseudonym = Pseudonymizer(key if key is not None else load_or_create_key())
    manifest = {
        "format_version": FORMAT_VERSION, "name": name, "label_names": names, "size": params.size,
        "params": {**params.hashed(), "label_names": names, "key_id": pseudonym.key_id},
        "label_stats": label_set.stats,  # for a target: the mapping table used
        "inputs": input_hashes(files, located.paths, labels_csv),
    }
    dataset_id = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = out_root / f"{name}-{dataset_id}"
    if (out_dir / "manifest.json").is_file():
        log(f"[data_prep] reusing prepared data set {out_dir}")
        return out_dir
    out_root.mkdir(parents=True, exist_ok=True)
    work = out_root / f".{name}-{dataset_id}.partial"  # same inputs and settings, same place: a rerun resumes
    with FileLock(str(work) + ".lock"):  # two drivers building the same set: one builds, one waits
        if (out_dir / "manifest.json").is_file():
            return out_dir
        work.mkdir(exist_ok=True)
        try:
            counts = _write(work, image_dir, paths, table, names, params, pseudonym, log)
        except DataPrepError:  # nothing to resume: a rerun must not start from this one's journal
            shutil.rmtree(work, ignore_errors=True)
            raise
        manifest.update(dataset_id=dataset_id, counts={**counts, "missing": len(located.missing)})
        (work / JOURNAL).unlink()
        manifest["files"] = file_checksums(work)  # what a node-local copy is checked against (data_prep.node_copy)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(work, out_dir)  # atomic: a half-built set is never visible
    log(f"[data_prep] wrote {out_dir} ({counts['images']} images, {counts['rejected']} rejected)")
    return out_dir


@dataclass
class _Progress:
    """What has been decided so far; rebuilt from the journal on resume."""

    kept: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    seen: dict = field(default_factory=dict)  # pixel hash -> image_key of the first image with it
    index: dict = field(default_factory=dict)  # image_key of a kept film -> its row in `kept`

    @property
    def done(self) -> int:
        return len(self.kept) + len(self.rejected) + len(self.duplicates)

    def add(self, record: dict) -> None:
        if record["list"] == "kept":
            self.index[record["row"]["image_key"]] = len(self.kept)
        getattr(self, record["list"]).append(record["row"])
        for digest in record.get("hashes", ()):
            self.seen.setdefault(digest, record["row"]["image_key"])


def _journal(work: Path) -> _Progress:
    """What an interrupted run recorded; a torn last line is ignored."""
    progress, path = _Progress(), work / JOURNAL
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        progress.add(record)
    return progress


def _append_journal(work: Path, arrays: tuple[np.memmap, ...], records: list[dict]) -> None:
    for array in arrays:
        array.flush()  # pixels reach the file before the journal says they are there
    with (work / JOURNAL).open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())
    records.clear()


def _scratch(work: Path, name: str, resume: bool, dtype, shape) -> np.memmap:
    path = work / f"{name}.tmp.npy"
    return np.load(path, mmap_mode="r+") if resume else np.lib.format.open_memmap(path, "w+", dtype, shape)


def _write(work: Path, image_dir: Path, paths: list[Path], table, names, params: BuildSettings, pseudonym, log) -> dict:
    progress = _journal(work)
    resume = progress.done > 0
    images = _scratch(work, "images", resume, DTYPES[params.bits], (len(table), params.size, params.size))
    thumbs = _scratch(work, "thumbnails", resume, np.float32, (len(table), THUMB * THUMB))
    if resume:
        log(f"[data_prep] resuming an interrupted build at image {progress.done + 1}/{len(table)}")
    _decode_all(work, paths, table, names, params, pseudonym, progress, images, thumbs, log)
    if not progress.kept:
        rejected = progress.rejected
        reasons = pd.Series([r["reason"] for r in rejected]).value_counts()
        raise DataPrepError(f"every image was rejected ({len(rejected)}) from {image_dir}; the label table's row "
                            f"{rejected[0]['csv_row']}: {rejected[0]['reason']}; reasons: "
                            + "; ".join(f"{n} x {why[:120]}" for why, n in reasons.head(3).items()))
    n = len(progress.kept)
    threshold = None if params.near_duplicates == "off" else params.near_duplicates
    dropped = _near_duplicates(progress, images[:n], thumbs[:n], threshold, log)
    keep = np.setdiff1d(np.arange(n), dropped)
    _copy_rows(images, keep, work / "images.npy")
    del images, thumbs
    for name in ("images", "thumbnails"):
        (work / f"{name}.tmp.npy").unlink()
    return _write_tables(work, [progress.kept[k] for k in keep], progress, names, params)


def _near_duplicates(progress: _Progress, images, thumbs, threshold: float | None, log) -> list[int]:
    """Record the kept films that are near-duplicates of earlier ones; return their indices."""
    if threshold is None:
        return []
    log("[data_prep] looking for near-duplicate films")
    found = near_duplicates(images, thumbs, threshold)
    survivor = {progress.kept[d]["image_key"]: progress.kept[k]["image_key"] for d, k, _ in found}
    for dup in progress.duplicates:  # an exact copy of a film that turned out a near-duplicate
        dup["duplicate_of"] = survivor.get(dup["duplicate_of"], dup["duplicate_of"])
    for dropped, kept, score in found:
        progress.duplicates.append({**progress.kept[dropped], "duplicate_of": progress.kept[kept]["image_key"],
                                    "kind": "near", "similarity": round(score, 4)})
    return [d for d, _, _ in found]


def _decode_all(work, paths, table, names, params, pseudonym, progress, images, thumbs, log) -> None:
    """Decode every row not yet journalled: kept films go to `images`, their thumbnails to
    `thumbs`; rejections and exact duplicates are recorded."""
    start = progress.done
    label_matrix = table[names].to_numpy(np.float32)
    results = tqdm(decoded(paths[start:], params.size, params.workers, params.bits), total=len(table), initial=start,
                   desc="decode", unit="img", disable=None, file=sys.stderr)
    pending: list[dict] = []
    for i, (pixels, patient_id, reason, shape, facts, clipped) in enumerate(results, start=start):
        if len(pending) >= JOURNAL_EVERY:
            _append_journal(work, (images, thumbs), pending)
        image_key, row = pseudonym("image", table["file"][i]), int(table["csv_row"][i])
        patient = table["patient"][i] or patient_id
        if reason is None and not patient:
            reason = "no PatientID in the file and no patient column in the CSV"
        if reason is not None:
            record = {"list": "rejected", "row": {"csv_row": row, "image_key": image_key, "reason": reason}}
        else:
            film = {"csv_row": row, "image_key": image_key, "patient_key": pseudonym("patient", patient),
                    **_metadata(table, i, facts), **_official(table, i), "source_height": shape[0], "source_width": shape[1],
                    "clipped": clipped,  # for the manifest's counts; labels.csv's columns leave it out
                    **{n: float(v) for n, v in zip(names, label_matrix[i])}}
            digest = hashlib.sha256(pixels.tobytes()).hexdigest()
            if digest in progress.seen:
                record = {"list": "duplicates", "row": {**film, "duplicate_of": progress.seen[digest],
                                                        "kind": "exact", "similarity": 1.0}}
            else:
                images[len(progress.kept)], thumbs[len(progress.kept)] = pixels, thumbnail(pixels)
                record = {"list": "kept", "hashes": [digest], "row": film}
        progress.add(record)
        pending.append(record)
        if (i + 1) % 1000 == 0:
            log(f"[data_prep] decoded {i + 1}/{len(table)} images")
    _append_journal(work, (images, thumbs), pending)


def _metadata(table: pd.DataFrame, i: int, facts: dict) -> dict:
    """The row's view, sex and age: the label table's value where it has one, else the image header's (DICOM
    ViewPosition, PatientSex, and the age in years data_prep.dicom_header computed), through the same helpers
    as the table's (M, F or empty; 90+ above 89)."""
    header = {"view": facts.get("view", ""), "sex": sex_of([facts.get("sex", "")])[0],
              "age": age_years([facts["age"]])[0] if "age" in facts else ""}
    return {column: table[column][i] or header[column] for column in METADATA}


def _official(table: pd.DataFrame, i: int) -> dict:
    """The row's part in the source's own split, where the build uses it (kept with the film, not written)."""
    return {"official": table["official"][i]} if "official" in table else {}


def _copy_rows(source: np.ndarray, rows: np.ndarray, path: Path, chunk: int = 256) -> None:
    """source[rows] into a new .npy file, a chunk at a time (never the whole set in memory)."""
    out = np.lib.format.open_memmap(path, "w+", source.dtype, (len(rows),) + source.shape[1:])
    for begin in range(0, len(rows), chunk):
        out[begin:begin + chunk] = source[rows[begin:begin + chunk]]
    out.flush()


def _write_tables(work: Path, kept: list[dict], progress: _Progress, names, params: BuildSettings) -> dict:
    labels = pd.DataFrame(kept, columns=columns(names))
    labels.to_csv(work / "labels.csv", index=False, float_format="%g")  # masked (NaN) -> empty
    label_values = labels[names].to_numpy(np.float32)
    if params.split == "official":  # one fold: its test part is the source's own test set
        folds = np.where([film["official"] == "test" for film in kept], 0, -1)
        pd.DataFrame({"image_key": labels["image_key"], "fold": folds}).to_csv(work / "folds.csv", index=False)
    elif params.holdout is None:
        folds = patient_folds(labels["patient_key"], label_values, params.folds, params.seed)
        pd.DataFrame({"image_key": labels["image_key"], "fold": folds}).to_csv(work / "folds.csv", index=False)
    else:  # one "fold": its test part is the held-out test split, its training part train + val
        split = holdout_split(labels["patient_key"], label_values, params.holdout_fractions, params.seed)
        pd.DataFrame({"image_key": labels["image_key"], "fold": np.where(split == "test", 0, -1), "split": split}
                     ).to_csv(work / "folds.csv", index=False)
    pd.DataFrame(progress.rejected, columns=["csv_row", "image_key", "reason"]).to_csv(work / "rejected.csv",
                                                                                      index=False)
    _duplicates_table(progress, names).to_csv(work / "duplicates.csv", index=False)
    folds = pd.read_csv(work / "folds.csv")
    test_patients = set(labels["patient_key"][folds["fold"] == 0])
    clipped = [film.get("clipped", 0) for film in kept]  # a journal from before the count: none
    return {"images": len(kept), "rejected": len(progress.rejected), "duplicates": len(progress.duplicates),
            "lossy_clipped_films": sum(n > 0 for n in clipped), "lossy_clipped_pixels": sum(clipped),
            "patients": int(labels["patient_key"].nunique()),
            "test_patients_also_in_training": len(test_patients & set(labels["patient_key"][folds["fold"] != 0])),
            "positives": {n: int(labels[n].sum()) for n in names},
            "masked": {n: int(labels[n].isna().sum()) for n in names}}


def _duplicates_table(progress: _Progress, names) -> pd.DataFrame:
    """One row per removed film, with whether it came under the same patient and labels as the
    film kept: a duplicate filed under another patient, or with other labels, is worth a look."""
    rows = []
    for dup in progress.duplicates:
        original = progress.kept[progress.index[dup["duplicate_of"]]]
        rows.append({"csv_row": dup["csv_row"], "image_key": dup["image_key"], "duplicate_of": dup["duplicate_of"],
                     "kind": dup["kind"], "similarity": dup["similarity"],
                     "same_patient": dup["patient_key"] == original["patient_key"],
                     "same_labels": np.array_equal([dup[n] for n in names], [original[n] for n in names],
                                                   equal_nan=True)})
    return pd.DataFrame(rows, columns=DUPLICATE_COLUMNS)


COMMAND = cli.Command(
    name="prepare", module="data_prep.build",
    summary="Build a prepared data set from a source's images and label table.",
    description="The prepared set is a folder under --out named KIND-<hash> (or NAME-<hash>): the hash covers the "
                "inputs and every setting, so the same inputs and settings give the same folder and a rebuild does "
                "no work; an interrupted build resumes. The settings' flags are those of a spec's [data] and "
                "[data.prepare.NAME] tables (data_prep/settings.py), with the same defaults.",
    examples=("target --images DICOM_DIR --labels labels.csv --out /data/prepared",
              "nih --images NIH --labels NIH/Data_Entry_2017_v2020.csv --preset seed003 --holdout 60/20/20 "
              "--size 256 --out /data/prepared",
              "chexpert --images CHEXPERT --labels CHEXPERT/CheXpert-v1.0/train.csv --policy u_ignore "
              "--out /data/prepared",
              "mimic --images MIMIC --labels MIMIC --split official --out /data/prepared"))
SETTINGS_SKIPS = ("source",)  # the source kind's options have flags of their own (data_prep.sources)
HAND_MADE = ("split",)  # its help names each kind's official test set, from the registry as the parser is made


def add_arguments(parser: cli.Parser) -> None:
    parser.add_argument("kind", choices=KINDS, help=kind_help())
    cli.add_images(parser, required=True, help="the folder you downloaded or unpacked: listed images are found in "
                                               "any of the source's published layouts under it")
    parser.rename("--dicom-dir", "--images")
    cli.add_labels(parser, required=True, help=f"label table: {table_help()}")
    cli.add_out(parser, "the folder that holds prepared data sets (this one is written into a folder of its own "
                        "inside it)", required=True)
    parser.add_argument("--name", default=None, help="name prefix of the output directory (default: the kind)")
    cli.add_model_flags(parser, BuildSettings, skip=SETTINGS_SKIPS + HAND_MADE)
    split = BuildSettings.model_fields["split"]
    parser.add_argument("--split", choices=SPLITS, default=None, help=f"{split.description}; the official test sets: "
                                                                      f"{official_help()} (default {split.default})")
    add_cli_options(parser)

    def resolve(args) -> None:
        settings = cli.model_from_flags(BuildSettings, args, skip=SETTINGS_SKIPS)
        source = options_from_args(args.kind, args, parser, seed=settings.seed)  # --seed seeds NIH's sampling too
        args.settings = settings.model_copy(update={"source": source})

    parser.check(resolve)


def run(args) -> int:
    print(build(args.images, args.labels, args.out, args.settings, args.name or args.kind))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
