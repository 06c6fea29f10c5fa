"""Synthetic ("phantom") chest radiographs written as real DICOM files plus a label CSV.

Each finding is drawn where it would show on a film (a big heart for cardiac hypertrophy,
a bright aortic knob for calcification, a curved spine for spinal lesions, ...), so a model
can learn the labels from the pixels. Files are 12-bit MONOCHROME1 with a window, like the
seed study's, and carry planted identifiers (name, ID, birth date, accession number, UIDs)
that must never reach an output.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from data_prep.chexpert import ALL_LABELS as CHEXPERT_COLUMNS
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return y, x


def _ellipse(y, x, cy, cx, ry, rx) -> np.ndarray:
    return (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) <= 1.0


def _draw_big_heart(img, y, x, rng, anatomy):
    anatomy["heart_scale"] = rng.uniform(1.45, 1.65)


def _draw_aortic_calcification(img, y, x, rng, anatomy):
    cy, cx = 0.36 + rng.uniform(-0.02, 0.02), 0.45 + rng.uniform(-0.02, 0.02)
    ring = np.abs(np.hypot(y - cy, x - cx) - 0.06) < 0.015
    img[ring & (y < cy + 0.01)] = 0.97


def _draw_lung_patterns(img, y, x, rng, anatomy):
    lungs = anatomy["lungs"]
    for _ in range(int(rng.integers(10, 16))):
        cy, cx = rng.uniform(0.3, 0.75), rng.choice([rng.uniform(0.22, 0.4), rng.uniform(0.6, 0.78)])
        angle = rng.uniform(0, np.pi)
        along = (y - cy) * np.cos(angle) + (x - cx) * np.sin(angle)
        across = -(y - cy) * np.sin(angle) + (x - cx) * np.cos(angle)
        streak = (np.abs(along) < 0.09) & (np.abs(across) < 0.012) & lungs
        img[streak] = np.maximum(img[streak], 0.5)


def _draw_nodules(img, y, x, rng, anatomy):
    lungs = anatomy["lungs"]
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0.3, 0.7), rng.choice([rng.uniform(0.25, 0.38), rng.uniform(0.62, 0.75)])
        spot = _ellipse(y, x, cy, cx, 0.035, 0.035) & lungs
        img[spot] = 0.8


def _draw_pleural_thickening(img, y, x, rng, anatomy):
    for cx, side in ((0.3, -1), (0.7, 1)):
        edge = _ellipse(y, x, 0.52, cx, 0.3, 0.17) & ~_ellipse(y, x, 0.52, cx - side * 0.02, 0.28, 0.14)
        img[edge & (y > 0.35)] = 0.75


def _draw_tortuous_aorta(img, y, x, rng, anatomy):
    """Arterial curvature: a wavy bright descending aorta left of the spine."""
    amplitude, phase = rng.uniform(0.025, 0.04), rng.uniform(0, 2 * np.pi)
    centre = 0.43 + amplitude * np.sin((y - 0.35) * 4 * np.pi + phase)
    img[(np.abs(x - centre) < 0.012) & (y > 0.35) & (y < 0.8)] = 0.75


def _draw_pacemaker(img, y, x, rng, anatomy):
    """A dense generator box below the left clavicle with a lead into the heart."""
    cy, cx = rng.uniform(0.18, 0.24), rng.uniform(0.68, 0.78)
    img[(np.abs(y - cy) < 0.03) & (np.abs(x - cx) < 0.045)] = 1.0
    t = np.clip((y - cy) / (0.62 - cy), 0, 1)
    lead = np.abs(x - (cx + (0.56 - cx) * t)) < 0.006
    img[lead & (y > cy) & (y < 0.62)] = 0.95


def _draw_effusion(img, y, x, rng, anatomy):
    """Fluid in a costophrenic angle: the lung base turns dense under a meniscus."""
    cx = rng.choice([0.3, 0.7])
    level = rng.uniform(0.66, 0.72) + 0.04 * np.abs(x - cx) / 0.15
    img[anatomy["lungs"] & (np.abs(x - cx) < 0.16) & (y > level)] = 0.6


def _draw_consolidation(img, y, x, rng, anatomy):
    cy, cx = rng.uniform(0.4, 0.65), rng.choice([rng.uniform(0.25, 0.35), rng.uniform(0.65, 0.75)])
    img[_ellipse(y, x, cy, cx, 0.08, 0.06) & anatomy["lungs"]] = 0.55


def _draw_edema(img, y, x, rng, anatomy):
    """Perihilar haze over both lungs."""
    haze = np.exp(-(((x - 0.5) / 0.22) ** 2) - (((y - 0.5) / 0.2) ** 2)) * 0.3
    img[anatomy["lungs"]] += haze[anatomy["lungs"]]


def _draw_atelectasis(img, y, x, rng, anatomy):
    """A plate-like band of collapsed lung."""
    cy, cx = rng.uniform(0.55, 0.7), rng.choice([0.3, 0.7])
    img[(np.abs(y - cy - 0.1 * (x - cx)) < 0.015) & (np.abs(x - cx) < 0.12) & anatomy["lungs"]] = 0.6


def _draw_mass(img, y, x, rng, anatomy):
    cy, cx = rng.uniform(0.35, 0.6), rng.choice([rng.uniform(0.25, 0.35), rng.uniform(0.65, 0.75)])
    img[_ellipse(y, x, cy, cx, 0.06, 0.06) & anatomy["lungs"]] = 0.8


def _draw_scoliosis(img, y, x, rng, anatomy):
    anatomy["spine_curve"] = rng.choice([-1, 1]) * rng.uniform(0.05, 0.08)


# Finding name -> how it shows. Target names follow seed 000's categories; the "nih" set
# follows NIH ChestX-ray14 names, so a recipe can pretrain on one and fine-tune on the other.
PHANTOM_SETS: dict[str, dict[str, object]] = {
    "target": {
        "cardiac hypertrophy": _draw_big_heart,
        "aortic sclerosis/calcification": _draw_aortic_calcification,
        "increased lung patterns": _draw_lung_patterns,
        "spinal lesions": _draw_scoliosis,
        "abnormal lung fields": _draw_nodules,
        "arterial curvature": _draw_tortuous_aorta,
        "intercostal pleural thickening": _draw_pleural_thickening,
        "heart pacemaker placement": _draw_pacemaker,  # discarded by the seed 000 mapping
    },
    "nih": {
        "Cardiomegaly": _draw_big_heart,
        "Infiltration": _draw_lung_patterns,
        "Nodule": _draw_nodules,
        "Mass": _draw_mass,
        "Pleural_Thickening": _draw_pleural_thickening,
        "Effusion": _draw_effusion,
        "Consolidation": _draw_consolidation,
        "Edema": _draw_edema,
        "Atelectasis": _draw_atelectasis,
    },
    "chexpert": {
        "Cardiomegaly": _draw_big_heart,
        "Edema": _draw_edema,
        "Consolidation": _draw_consolidation,
        "Atelectasis": _draw_atelectasis,
        "Pleural Effusion": _draw_effusion,
    },
}


# Drawers that change the anatomy itself (heart size, spine shape) run before it is drawn;
# the others paint on top of it.
ANATOMY_CHANGES = (_draw_big_heart, _draw_scoliosis)


def render(findings: list[str], drawers: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """One radiograph as density in [0, 1] (bright = dense)."""
    y, x = _grid(size)
    anatomy = {"heart_scale": rng.uniform(0.9, 1.1), "spine_curve": rng.uniform(-0.01, 0.01)}
    for name in findings:
        if drawers[name] in ANATOMY_CHANGES:
            drawers[name](None, y, x, rng, anatomy)
    img = np.full((size, size), 0.05, np.float32)
    img[_ellipse(y, x, 0.55, 0.5, 0.5, 0.42)] = 0.4  # body
    lungs = _ellipse(y, x, 0.5, 0.3, 0.3, 0.15) | _ellipse(y, x, 0.5, 0.7, 0.3, 0.15)
    anatomy["lungs"] = lungs
    img[lungs] = 0.15
    for k in range(6):  # ribs
        rib = np.abs(y - (0.3 + 0.08 * k) - 0.05 * np.cos((x - 0.5) * 6)) < 0.008
        img[rib & lungs] = 0.3
    spine_x = 0.5 + anatomy["spine_curve"] * np.sin((y - 0.2) * np.pi / 0.7)
    img[(np.abs(x - spine_x) < 0.04) & (y > 0.1)] = 0.7
    s = anatomy["heart_scale"]
    img[_ellipse(y, x, 0.66, 0.54, 0.13 * s, 0.14 * s)] = 0.55
    for name in findings:
        if drawers[name] not in ANATOMY_CHANGES:
            drawers[name](img, y, x, rng, anatomy)
    img = img * rng.uniform(0.85, 1.1) + rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _write_dicom(path: Path, density: np.ndarray, patient: dict, rng: np.random.Generator) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
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


def _patients(n_patients: int, seed: int, rng: np.random.Generator):
    for p in range(n_patients):
        yield p, {
            "name": f"PHANTOM^{rng.choice(['ALICE', 'BOB', 'CAROL', 'DAVE'])}{p:04d}",
            "id": f"PID{seed:03d}{p:05d}X",
            "birth_date": f"19{rng.integers(30, 99)}0{rng.integers(1, 9)}1{rng.integers(0, 9)}",
            "sex": str(rng.choice(["F", "M"])),
        }


def make_phantom_set(
    out_dir: Path, kind: str = "target", n_patients: int = 60, size: int = 128,
    prevalence: float = 0.3, seed: int = 0, uncertain: float = 0.1,
) -> Path:
    """Write a phantom source in its real format; return its label table.

    target: images/*.dcm + labels.csv (file, findings); nih: images/*.png +
    Data_Entry_2017.csv; chexpert: CheXpert-v1.0-small/train/patientN/studyM/view1_frontal.jpg
    + train.csv (a fraction `uncertain` of each image's labels written as -1, some blank).
    """
    if kind not in PHANTOM_SETS:
        raise ValueError(f"unknown phantom set {kind!r}; expected one of {sorted(PHANTOM_SETS)}")
    drawers = PHANTOM_SETS[kind]
    names = list(drawers)
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for p, patient in _patients(n_patients, seed, rng):
        has = rng.random(len(names)) < prevalence
        for i in range(int(rng.integers(1, 4))):  # 1-3 images per patient
            keep = has & (rng.random(len(names)) < 0.9)  # findings mostly persist per patient
            findings = [n for n, k in zip(names, keep) if k]
            density = render(findings, drawers, size, rng)
            rows.append(_WRITERS[kind](out_dir, p, i, patient, findings, density, rng, names, uncertain))
    return _write_table(out_dir, kind, rows)


def _target_image(out_dir, p, i, patient, findings, density, rng, names, uncertain) -> dict:
    rel = f"images/{patient['id']}_{i}.dcm"  # identifier in the path, on purpose
    (out_dir / "images").mkdir(exist_ok=True)
    _write_dicom(out_dir / rel, density, patient, rng)
    return {"file": rel, "findings": "|".join(findings) or "normal"}


def _nih_image(out_dir, p, i, patient, findings, density, rng, names, uncertain) -> dict:
    rel = f"{p + 1:08d}_{i:03d}.png"
    (out_dir / "images").mkdir(exist_ok=True)
    Image.fromarray(np.round(density * 255).astype(np.uint8)).save(out_dir / "images" / rel)
    return {"Image Index": rel, "Finding Labels": "|".join(findings) or "No Finding", "Follow-up #": i,
            "Patient ID": p + 1, "Patient Age": int(rng.integers(20, 90)), "Patient Gender": patient["sex"],
            "View Position": str(rng.choice(["PA", "AP"]))}


def _chexpert_image(out_dir, p, i, patient, findings, density, rng, names, uncertain) -> dict:
    rel = f"CheXpert-v1.0-small/train/patient{p + 1:05d}/study{i + 1}/view1_frontal.jpg"
    (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(density * 255).astype(np.uint8)).save(out_dir / rel, quality=92)
    row = {"Path": rel, "Sex": "Female" if patient["sex"] == "F" else "Male", "Age": int(rng.integers(20, 90)),
           "Frontal/Lateral": "Frontal", "AP/PA": str(rng.choice(["AP", "PA"]))}
    for name in CHEXPERT_COLUMNS:  # every column of the real train.csv
        draw = rng.random()
        if name in findings:
            row[name] = "-1.0" if draw < uncertain else "1.0"
        elif name in names:
            row[name] = "-1.0" if draw < uncertain / 2 else ("" if draw < 0.5 else "0.0")
        else:
            row[name] = ""
    row["No Finding"] = "" if findings else "1.0"
    return row


_WRITERS = {"target": _target_image, "nih": _nih_image, "chexpert": _chexpert_image}
TABLES = {"target": "labels.csv", "nih": "Data_Entry_2017.csv", "chexpert": "train.csv"}
IMAGE_ROOTS = {"target": ".", "nih": "images", "chexpert": "."}  # what the table's paths are relative to


def _write_table(out_dir: Path, kind: str, rows: list[dict]) -> Path:
    path = out_dir / TABLES[kind]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m data_prep.phantom",
                                     description="Write a phantom source set in its real format.")
    parser.add_argument("kind", choices=sorted(PHANTOM_SETS))
    parser.add_argument("--n", type=int, default=60, help="patients (1-3 images each; default 60)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--prevalence", type=float, default=0.3, help="chance of each finding per patient")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    table = make_phantom_set(args.out, args.kind, args.n, args.size, args.prevalence, args.seed)
    print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
