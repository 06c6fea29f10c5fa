"""The phantom world: every label is visible where it belongs, shares follow the real sources,
and the knobs (label noise, films per patient, near-duplicates, seed) do what they say."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
import pytest

from phantom.generate import make_phantom_set
from phantom.anatomy import Pose, film, patient_anatomy
from phantom.findings import PHANTOM_SETS, paint_findings

STILL = Pose(dy=0, dx=0, angle=0, scale=1, inspiration=0, exposure=1, noise=0)  # no pose, no noise
SIDE = 96
SET_LABELS = [(kind, label) for kind, signs in PHANTOM_SETS.items() for label in signs]


def _films(kind: str, label: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The same patient filmed the same way, without and with `label`."""
    signs = {name: sign for name, (sign, _) in PHANTOM_SETS[kind].items()}
    out = []
    for findings in ([], [label]):
        body = patient_anatomy(np.random.default_rng(seed))
        paint = paint_findings(findings, signs, body, {label: np.random.default_rng([seed, 1])})
        out.append(film((SIDE, SIDE), body, STILL, paint, np.random.default_rng(seed)))
    return out[0], out[1]


@pytest.mark.parametrize("kind,label", SET_LABELS)
def test_every_label_of_every_source_is_a_visible_change_of_the_film(kind, label):
    healthy, sick = _films(kind, label)
    changed = np.abs(sick - healthy) > 0.05
    assert changed.mean() > 0.002, f"{kind}/{label} changes {changed.sum()} pixels"


# (label, rows, cols) in fractions of the film: where the change must be centred.
WHERE = [
    ("cardiac hypertrophy", (0.45, 0.85), (0.35, 0.75)),
    ("aortic sclerosis/calcification", (0.25, 0.4), (0.5, 0.65)),
    ("arterial curvature", (0.3, 0.75), (0.45, 0.65)),
    ("heart pacemaker placement", (0.15, 0.55), (0.55, 0.8)),
    ("intercostal pleural thickening", (0.3, 0.7), (0.0, 1.0)),
]


@pytest.mark.parametrize("label,rows,cols", WHERE)
def test_a_target_finding_is_drawn_where_it_shows_on_a_real_film(label, rows, cols):
    healthy, sick = _films("target", label, seed=4)
    weight = np.abs(sick - healthy)
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    cy, cx = (weight * y).sum() / weight.sum(), (weight * x).sum() / weight.sum()
    assert rows[0] < cy < rows[1] and cols[0] < cx < cols[1], (cy, cx)


def test_cardiac_hypertrophy_is_a_bigger_heart_shadow():
    healthy, sick = _films("target", "cardiac hypertrophy", seed=2)
    heart_rows = slice(int(0.5 * SIDE), int(0.8 * SIDE))
    dense = lambda img: (img[heart_rows] > 0.52).sum()  # noqa: E731
    assert dense(sick) > 1.4 * dense(healthy)


def _shares(table: pd.DataFrame, column: str, names: list[str], none: str) -> dict[str, float]:
    split = table[column].str.get_dummies("|")
    return {n: float(split[n].mean()) if n in split else 0.0 for n in names if n != none}


@pytest.mark.parametrize("kind,column,none", [("target", "findings", "normal"), ("nih", "Finding Labels", "No Finding")])
def test_default_label_shares_are_the_seed_table_and_the_real_nih_table(tmp_path, kind, column, none):
    table = pd.read_csv(make_phantom_set(tmp_path, kind, n_patients=700, image_px=16, prevalence="real", seed=1))
    names = list(PHANTOM_SETS[kind])
    shares = _shares(table, column, names, none)
    for name, (_, expected) in PHANTOM_SETS[kind].items():
        tolerance = 4 * np.sqrt(expected * (1 - expected) / 700) + 0.005  # films of a patient are correlated
        assert abs(shares[name] - expected) < tolerance, (name, shares[name], expected)


def test_label_noise_changes_the_written_labels_not_the_films(tmp_path):
    clean = pd.read_csv(make_phantom_set(tmp_path / "a", "nih", n_patients=300, image_px=16, prevalence=0.3, seed=3))
    noisy = pd.read_csv(make_phantom_set(tmp_path / "b", "nih", n_patients=300, image_px=16, prevalence=0.3, seed=3,
                                         label_noise=0.25))
    for name in clean["Image Index"][:20]:
        assert (tmp_path / "a/images" / name).read_bytes() == (tmp_path / "b/images" / name).read_bytes()
    a = clean["Finding Labels"].str.get_dummies("|").drop(columns="No Finding")
    b = noisy["Finding Labels"].str.get_dummies("|").drop(columns="No Finding").reindex(columns=a.columns, fill_value=0)
    dropped = ((a == 1) & (b == 0)).to_numpy().sum() / (a == 1).to_numpy().sum()
    assert 0.2 < dropped < 0.3
    assert abs(b.to_numpy().mean() - a.to_numpy().mean()) < 0.02  # as many negatives flipped: shares kept


def test_films_per_patient_follow_the_option(tmp_path):
    table = pd.read_csv(make_phantom_set(tmp_path, "nih", n_patients=40, image_px=16, images_per_patient=(2, 4)))
    counts = table.groupby("Patient ID").size()
    assert counts.between(2, 4).all() and counts.nunique() == 3


def test_the_same_seed_writes_the_same_files(tmp_path):
    first = make_phantom_set(tmp_path / "a", "target", n_patients=4, image_px=48, seed=7)
    second = make_phantom_set(tmp_path / "b", "target", n_patients=4, image_px=48, seed=7)
    assert first.read_bytes() == second.read_bytes()
    for path in sorted((tmp_path / "a/images").glob("*.dcm")):
        assert path.read_bytes() == (tmp_path / "b/images" / path.name).read_bytes(), path.name
    other = make_phantom_set(tmp_path / "c", "target", n_patients=4, image_px=48, seed=8)
    assert other.read_bytes() != first.read_bytes()


def test_target_films_have_the_seed_study_header_traits_and_sizes(tmp_path):
    make_phantom_set(tmp_path, "target", n_patients=3, image_px="real", seed=0)  # full size
    shapes = set()
    for path in (tmp_path / "images").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert (ds.BitsStored, ds.PhotometricInterpretation, ds.PresentationLUTShape) == (12, "MONOCHROME1", "INVERSE")
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (2048, 4096)
        assert 1824 <= ds.Rows <= 2688 and 1536 <= ds.Columns <= 2680
        shapes.add((ds.Rows, ds.Columns))
    assert len(shapes) > 1 and any(r != c for r, c in shapes)


def test_chexpert_tables_have_uncertain_and_blank_values_at_the_real_shares(tmp_path):
    table = pd.read_csv(make_phantom_set(tmp_path, "chexpert", n_patients=400, image_px=16, prevalence="real", seed=2),
                        keep_default_na=False)
    atelectasis = table["Atelectasis"].value_counts(normalize=True)
    assert 0.09 < atelectasis["-1.0"] < 0.17  # CheXpert: 13% of Atelectasis labels are uncertain
    assert atelectasis[""] > atelectasis["0.0"]  # most negatives are unmentioned (blank)


def test_near_duplicates_are_planted_on_request(tmp_path):
    table = pd.read_csv(make_phantom_set(tmp_path, "nih", n_patients=50, image_px=32, seed=0, refiled=0.5))
    copies = table[table["Follow-up #"] >= 100]
    assert 0.3 < len(copies) / (len(table) - len(copies)) < 0.7
    originals = table.set_index(["Patient ID", "Follow-up #"])
    for _, copy in copies.iterrows():
        assert originals.loc[(copy["Patient ID"], copy["Follow-up #"] - 100), "Finding Labels"] == copy["Finding Labels"]


def test_phantom_cli_writes_a_set(tmp_path):
    done = subprocess.run([sys.executable, "-m", "phantom", "chexpert", "--n", "3", "--size", "32",
                           "--label-noise", "0.1", "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(tmp_path / "train.csv")) >= 3


@pytest.mark.parametrize("argv, expected", [
    (["--n", "0"], "--n-patients: Input should be greater than or equal to 1"),  # the older name, with a note
    (["--images-per-patient", "3", "1"], "--images-per-patient: 3 1: expected MIN MAX with 1 <= MIN <= MAX"),
    (["--prevalence", "1.5"], "--prevalence: must be between 0 and 1 (exclusive), or 'real'"),
    (["--image-px", "8"], "--image-px: must be at least 16 pixels, or 'real'"),
    (["--refiled", "2"], "--refiled: Input should be less than or equal to 1"),
])
def test_phantom_cli_mistakes_are_one_error_line_and_write_nothing(argv, expected, tmp_path, capsys):
    from phantom.generate import main

    assert main(["nih", "--out", str(tmp_path / "out"), *argv]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("note: ")]
    assert errors == [f"error: {expected} (see python -m phantom --help)"] and not (tmp_path / "out").exists()
