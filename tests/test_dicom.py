"""DICOM decoding: bright = dense exactly once, and bad files rejected, never mis-decoded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from data_prep.dicom import read_dicom
from data_prep.errors import ImageRejected


def _first_dicom(phantom_dir: Path) -> Path:
    return sorted((phantom_dir / "images").glob("*.dcm"))[0]


def test_monochrome1_phantom_decodes_bright_where_dense(phantom_dir):
    image, patient_id = read_dicom(_first_dicom(phantom_dir))
    size = image.shape[0]
    spine = image[int(size * 0.3), size // 2]  # spine column, above the heart
    lung = image[size // 2, int(size * 0.3)]  # middle of the right lung
    air = image[1, 1]
    assert spine > lung > air
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert patient_id.startswith("PID")


def test_same_pixels_as_monochrome2_decode_inverted(phantom_dir, tmp_path):
    ds = pydicom.dcmread(_first_dicom(phantom_dir))
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.save_as(tmp_path / "m2.dcm")
    mono1, _ = read_dicom(_first_dicom(phantom_dir))
    mono2, _ = read_dicom(tmp_path / "m2.dcm")
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_truncated_pixel_data_is_rejected(phantom_dir, tmp_path):
    ds = pydicom.dcmread(_first_dicom(phantom_dir))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(tmp_path / "short.dcm")
    with pytest.raises(ImageRejected, match="PixelData holds"):
        read_dicom(tmp_path / "short.dcm")


def test_values_beyond_bits_stored_are_rejected(phantom_dir, tmp_path):
    ds = pydicom.dcmread(_first_dicom(phantom_dir))
    pixels = ds.pixel_array.copy()
    pixels[0, 0] = 5000  # 12-bit data holds at most 4095
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(tmp_path / "wide.dcm")
    with pytest.raises(ImageRejected, match="outside BitsStored=12"):
        read_dicom(tmp_path / "wide.dcm")


def test_non_dicom_file_is_rejected(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(ImageRejected, match="not a readable DICOM"):
        read_dicom(tmp_path / "x.dcm")


def test_real_signed_rescaled_file_maps_the_full_stored_range_to_unit(tmp_path):
    """pydicom's CT_small: signed 16-bit with a rescale and no window -> full BitsStored range."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    image, _ = read_dicom(Path(get_testdata_file("CT_small.dcm")))
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    low, high = -(2**15) * slope + intercept, (2**15 - 1) * slope + intercept
    expected = (ds.pixel_array * slope + intercept - low) / (high - low)
    np.testing.assert_allclose(image, expected, atol=1e-6)
