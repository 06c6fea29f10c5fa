"""Phantom sources: synthetic chest radiographs in each real source's format.

target: DICOM files with the seed study's header traits (12-bit, MONOCHROME1, Presentation LUT
Shape INVERSE, window 2048/4096, 1536 to 2688 px) and planted identifiers (name, ID, birth
date, accession number, UIDs, a sequence, a private tag) that must never reach an output,
plus `labels.csv`; nih: PNGs plus `Data_Entry_2017.csv`; chexpert: JPGs plus `train.csv`
with -1 and blanks. Anatomy is in `phantom.anatomy`, how each label shows in
`phantom.findings`. Everything is deterministic by seed.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from data_prep.sources.chexpert import ALL_LABELS as CHEXPERT_COLUMNS
from phantom.anatomy import film, film_pose, patient_anatomy
from phantom.findings import PHANTOM_SETS, UNCERTAIN, paint_findings
from phantom.settings import PhantomSettings
from vocab import cli

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
# Film sizes at full scale (rows, cols ranges): seed 000's table for the target, NIH's
# 1024 x 1024 PNGs, CheXpert's portrait films. `image_px` scales the largest side.
SIZES = {"target": ((1824, 2688), (1536, 2680)), "nih": ((1024, 1024), (1024, 1024)),
         "chexpert": ((2320, 2320), (1860, 2320))}
DEFAULT_SIZE = {"target": 2688, "nih": 1024, "chexpert": 512}


def _write_dicom(path: Path, density: np.ndarray, patient: dict, rng: np.random.Generator) -> None:
    token = str(rng.integers(2**62))  # UIDs are random-looking but follow from the seed
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[token, "instance"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[token, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[token, "series"])
    ds.Modality, ds.ViewPosition = "CR", "PA"
    ds.PatientName, ds.PatientID = patient["name"], patient["id"]
    ds.PatientBirthDate, ds.PatientSex = patient["birth_date"], patient["sex"]
    ds.AccessionNumber = f"ACC{rng.integers(10**7, 10**8)}"
    ds.InstitutionName, ds.ReferringPhysicianName = "PHANTOM GENERAL HOSPITAL", f"DR^{patient['name'][8:]}"
    request = Dataset()  # identifiers nested in a sequence, as real RIS headers carry them
    request.RequestedProcedureID, request.ScheduledProcedureStepID = f"RP{patient['id']}", f"SPS{patient['id']}"
    ds.RequestAttributesSequence = [request]
    block = ds.private_block(0x0029, "PHANTOM PRIVATE", create=True)
    block.add_new(0x10, "LO", f"PRIV-{patient['id']}")  # and in a private tag
    ds.StudyDate = f"20{rng.integers(15, 21)}0{rng.integers(1, 9)}1{rng.integers(0, 9)}"
    ds.Rows, ds.Columns = density.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.PresentationLUTShape = "INVERSE"  # as in the seed's files: says the same as MONOCHROME1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
    stored = np.round((1.0 - density) * 4095).astype("<u2")  # MONOCHROME1: low value = white
    ds.PixelData = stored.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def make_phantom_set(out_dir: Path, kind: str = "target", settings: PhantomSettings | None = None,
                     **values) -> Path:
    """Write a phantom source in its real format; return its label table. `settings` (default PhantomSettings())
    with `values` (its fields, checked by it) say what it looks like."""
    if kind not in PHANTOM_SETS:
        raise ValueError(f"unknown phantom set {kind!r}; expected one of {sorted(PHANTOM_SETS)}")
    opts = PhantomSettings(**{**(settings or PhantomSettings()).model_dump(), **values})
    signs = {name: sign for name, (sign, _) in PHANTOM_SETS[kind].items()}
    names = list(signs)
    share = np.array([p if opts.prevalence == "real" else opts.prevalence for _, p in PHANTOM_SETS[kind].values()])
    rng = np.random.default_rng(opts.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for p, patient in _patients(opts.n_patients, opts.seed, rng):
        body = patient_anatomy(rng)
        has = rng.random(len(names)) < np.minimum(1.0, share / opts.persist)
        for i in range(int(rng.integers(opts.images_per_patient[0], opts.images_per_patient[1] + 1))):
            truth = has & (rng.random(len(names)) < opts.persist)
            written = _written_labels(kind, names, truth, share, opts, rng)  # may change truth (CheXpert -1)
            film_body = dataclasses.replace(body, extra=dict(body.extra))
            rngs = {n: np.random.default_rng([opts.seed, p, j]) for j, n in enumerate(names)}  # signs stay put
            paint = paint_findings([n for n, t in zip(names, truth) if t], signs, film_body, rngs)
            density = film(_film_shape(kind, opts.image_px, rng), film_body, film_pose(rng), paint, rng)
            rows.append(_WRITERS[kind](out_dir, p, i, patient, written, density, rng))
            if rng.random() < opts.refiled:
                rows.append(_WRITERS[kind](out_dir, p, i + 100, patient, written, _re_exported(density, rng), rng))
    return _write_table(out_dir, kind, rows)


def _written_labels(kind, names, truth, share, opts: PhantomSettings, rng) -> dict[str, str]:
    """The label table's values: truth with label noise, and for CheXpert -1 and blanks."""
    flip_up = np.clip(opts.label_noise * share / np.maximum(1 - share, 1e-6), 0, 1)  # keeps prevalence
    draw = rng.random(len(names))
    positive = np.where(truth, draw >= opts.label_noise, draw < flip_up)
    values = {n: "1.0" if pos else "0.0" for n, pos in zip(names, positive)}
    if kind == "chexpert":
        for j, n in enumerate(names):
            if rng.random() < (UNCERTAIN[n] if opts.uncertain == "real" else opts.uncertain):
                values[n], truth[j] = "-1.0", rng.random() < 0.5  # the report was unsure; the film decides
            elif values[n] == "0.0" and rng.random() < opts.blank_share:
                values[n] = ""
    return values


def _film_shape(kind: str, image_px: int | str, rng) -> tuple[int, int]:
    (r0, r1), (c0, c1) = SIZES[kind]
    scale = (DEFAULT_SIZE[kind] if image_px == "real" else image_px) / max(r1, c1)
    return max(8, round(rng.uniform(r0, r1) * scale)), max(8, round(rng.uniform(c0, c1) * scale))


def _re_exported(density: np.ndarray, rng) -> np.ndarray:
    """The same film sent again: through another grey curve, at another matrix size."""
    scale = rng.uniform(0.7, 0.9)
    shape = (max(8, round(density.shape[1] * scale)), max(8, round(density.shape[0] * scale)))
    return np.clip(cv2.resize(density, shape, interpolation=cv2.INTER_AREA), 0, 1) ** rng.uniform(0.85, 1.15)


def _patients(n_patients: int, seed: int, rng: np.random.Generator):
    for p in range(n_patients):
        yield p, {
            "name": f"PHANTOM^{rng.choice(['ALICE', 'BOB', 'CAROL', 'DAVE'])}{p:04d}",
            "id": f"PID{seed:03d}{p:05d}X",
            "birth_date": f"19{rng.integers(30, 99)}0{rng.integers(1, 9)}1{rng.integers(0, 9)}",
            "sex": str(rng.choice(["F", "M"])),
        }


def _positives(written: dict[str, str]) -> list[str]:
    return [n for n, v in written.items() if v == "1.0"]


def _target_image(out_dir, p, i, patient, written, density, rng) -> dict:
    rel = f"images/{patient['id']}_{i}.dcm"  # identifier in the path, on purpose
    (out_dir / "images").mkdir(exist_ok=True)
    _write_dicom(out_dir / rel, density, patient, rng)
    return {"file": rel, "findings": "|".join(_positives(written)) or "normal"}


def _nih_image(out_dir, p, i, patient, written, density, rng) -> dict:
    rel = f"{p + 1:08d}_{i:03d}.png"
    (out_dir / "images").mkdir(exist_ok=True)
    Image.fromarray(np.round(density * 255).astype(np.uint8)).save(out_dir / "images" / rel)
    return {"Image Index": rel, "Finding Labels": "|".join(_positives(written)) or "No Finding", "Follow-up #": i,
            "Patient ID": p + 1, "Patient Age": int(rng.integers(20, 90)), "Patient Gender": patient["sex"],
            "View Position": str(rng.choice(["PA", "AP"]))}


def _chexpert_image(out_dir, p, i, patient, written, density, rng) -> dict:
    rel = f"CheXpert-v1.0-small/train/patient{p + 1:05d}/study{i + 1}/view1_frontal.jpg"
    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(density * 255).astype(np.uint8)).save(out_dir / rel, quality=92)
    row = {"Path": rel, "Sex": "Female" if patient["sex"] == "F" else "Male", "Age": int(rng.integers(20, 90)),
           "Frontal/Lateral": "Frontal", "AP/PA": str(rng.choice(["AP", "PA"]))}
    row.update({name: written.get(name, "") for name in CHEXPERT_COLUMNS})  # every column of the real train.csv
    row["No Finding"] = "" if any(v in ("1.0", "-1.0") for v in written.values()) else "1.0"
    return row


_WRITERS = {"target": _target_image, "nih": _nih_image, "chexpert": _chexpert_image}
TABLES = {"target": "labels.csv", "nih": "Data_Entry_2017.csv", "chexpert": "train.csv"}
IMAGE_ROOTS = {"target": ".", "nih": "images", "chexpert": "."}  # what the table's paths are relative to
# The pseudonym key a sweep builds phantom sets with, public because a phantom patient has nothing to hide: the
# pseudonyms order the patients that folds are drawn from, so with each machine's own secret key the demo's folds,
# and its numbers, differed from one machine to the next (docs/demo.md). Real data keeps the user's key.
PSEUDONYM_KEY = b"cxr-sweep phantom data: generated patients, public key"


def _write_table(out_dir: Path, kind: str, rows: list[dict]) -> Path:
    path = out_dir / TABLES[kind]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


COMMAND = cli.Command(
    name="phantom", module="phantom",
    summary="Write a phantom source set (target DICOM, NIH-like PNGs or CheXpert-like JPGs) in its real format.",
    description="Synthetic films of generated patients, every label a visible change, with the real source's "
                "label table (docs/data-sets.md: Phantom sources). The settings' flags are those of a spec's "
                "[data.phantom] table (phantom/settings.py), with the same defaults; the same seed writes the "
                "same bytes.",
    examples=("target --n-patients 24 --image-px 64 --seed 3 --out phantom-target",
              "nih --n-patients 300 --out phantom-nih",
              "chexpert --image-px real --prevalence real --label-noise 0.1 --out phantom-chexpert"))
CLI_SKIPS = ("source_patients",)  # a spec's: how many patients its phantom sources have; one set is n_patients


def add_arguments(parser: cli.Parser) -> None:
    parser.add_argument("kind", choices=sorted(PHANTOM_SETS), help="the real source whose format the set takes")
    cli.add_out(parser, "the folder to write the set into (its label table and images)", required=True)
    cli.add_model_flags(parser, PhantomSettings, skip=CLI_SKIPS)
    for old, new in (("--n", "--n-patients"), ("--size", "--image-px"), ("--blank", "--blank-share"),
                     ("--near-duplicates", "--refiled")):
        parser.rename(old, new)

    def resolve(args) -> None:
        args.settings = cli.model_from_flags(PhantomSettings, args, skip=CLI_SKIPS)

    parser.check(resolve)


def run(args) -> int:
    print(f"wrote {make_phantom_set(args.out, args.kind, args.settings)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(COMMAND, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
