"""PNG/JPG decoding, and NIH-like and CheXpert-like sources built from their real formats."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_prep.dataset import PreparedDataset
from data_prep.decode import read_image
from data_prep.errors import ImageRejected
from phantom.generate import IMAGE_ROOTS, TABLES, make_phantom_set
from data_prep.raster import read_raster
from tests.conftest import REPO


def test_8_and_16_bit_grey_png_scale_to_unit(tmp_path):
    grey8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    np.testing.assert_allclose(read_raster(tmp_path / "g8.png"), grey8 / 255, atol=1e-6)
    grey16 = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(read_raster(tmp_path / "g16.png"), grey16 / 65535, atol=1e-6)


def test_rgba_png_drops_alpha_and_becomes_luminance(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "c.png")
    expected = rgba[..., :3] @ np.array([0.299, 0.587, 0.114]) / 255
    np.testing.assert_allclose(read_raster(tmp_path / "c.png"), expected, atol=1e-5)


def test_truncated_and_non_image_files_are_rejected(tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8) + 100).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    for name in ("cut.png", "junk.jpg"):
        with pytest.raises(ImageRejected, match="not a readable image"):
            read_raster(tmp_path / name)
    with pytest.raises(ImageRejected, match="file not found"):
        read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("kind, extra, expected_labels", [
    ("nih", ["--preset", "none"], 14),
    ("chexpert", ["--policy", "u_ignore"], 5),
])
def test_phantom_sources_build_from_their_real_formats(tmp_path, kind, extra, expected_labels):
    raw = tmp_path / "raw"
    table = make_phantom_set(raw, kind=kind, n_patients=12, image_px=64, prevalence=0.3, seed=2, uncertain=0.3)
    assert table.name == TABLES[kind]
    proc = subprocess.run([sys.executable, "-m", "data_prep.build", kind, "--images", str(raw / IMAGE_ROOTS[kind]),
                           "--labels", str(table), "--out", str(tmp_path / "prep"), "--size", "32", "--folds", "3",
                           "--workers", "1", *extra], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    data = PreparedDataset(proc.stdout.strip().splitlines()[-1])
    source = pd.read_csv(table)
    assert len(data.label_names) == expected_labels and data.images.shape == (len(source), 32, 32)
    assert set(pd.read_csv(data.root / "labels.csv")["view"]) <= {"AP", "PA"}
    assert data.manifest["counts"]["rejected"] == 0
    if kind == "chexpert":  # U-Ignore: uncertain labels are masked, not dropped
        assert np.isnan(data.labels).any() and sum(data.manifest["counts"]["masked"].values()) == np.isnan(data.labels).sum()
    else:
        assert data.labels[:, data.label_names.index("Cardiomegaly")].sum() > 0
