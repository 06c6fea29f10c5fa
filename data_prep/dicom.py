"""Decode one DICOM radiograph to a float image in [0, 1] where bright means dense.

Order (PS3.4 grayscale pipeline): Modality LUT -> VOI LUT (first window, else the full
BitsStored range) -> "bright = dense" made exactly once (MONOCHROME1). pydicom does not
check that the pixel data fits the header, so we do, before trusting any pixel
(DESIGN.md "things known to bite").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from data_prep.errors import ImageRejected

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
MAX_SIDE = 16384


def read_dicom(path: Path) -> tuple[np.ndarray, str | None]:
    """Return (image in [0, 1], bright = dense; PatientID or None). Raises ImageRejected."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types for unreadable files
        raise ImageRejected(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    _validate_header(ds)
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise ImageRejected(f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    _validate_values(ds, stored)
    image = _to_unit_range(ds, stored)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        image = 1.0 - image
    patient_id = str(ds.PatientID) if "PatientID" in ds and str(ds.PatientID).strip() else None
    return image.astype(np.float32), patient_id


def _validate_header(ds) -> None:
    if "PixelData" not in ds:
        raise ImageRejected("no PixelData element")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise ImageRejected(f"PhotometricInterpretation {photometric!r}; expected one of {SUPPORTED_PHOTOMETRIC}")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if not (0 < rows <= MAX_SIDE and 0 < cols <= MAX_SIDE):
        raise ImageRejected(f"image size {rows}x{cols}; expected 1..{MAX_SIDE} pixels per side")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ImageRejected(f"NumberOfFrames {ds.NumberOfFrames}; expected a single frame")
    allocated, stored = int(ds.get("BitsAllocated", 0)), int(ds.get("BitsStored", 0))
    if allocated not in (8, 16) or not 1 <= stored <= allocated:
        raise ImageRejected(f"BitsAllocated {allocated} / BitsStored {stored}; expected 8 or 16 / 1..BitsAllocated")
    for lut in ("ModalityLUTSequence", "VOILUTSequence"):
        if lut in ds:  # their output ranges differ from the window's; not decoded yet (issue 3)
            raise ImageRejected(f"{lut} present; only rescale and window transforms are supported")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = rows * cols * allocated // 8
        actual = len(ds.PixelData)
        if actual not in (expected, expected + 1):  # one pad byte keeps the value length even
            raise ImageRejected(f"PixelData holds {actual} bytes; {rows}x{cols}x{allocated} bits needs {expected}")


def _stored_range(ds) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _validate_values(ds, stored: np.ndarray) -> None:
    """Values must fit BitsStored. pydicom masks the high bits away, so look at the raw buffer."""
    low, high = _stored_range(ds)
    values = stored
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        dtype = np.dtype(f"{'<' if ds.file_meta.TransferSyntaxUID.is_little_endian else '>'}"
                         f"{'i' if signed else 'u'}{int(ds.BitsAllocated) // 8}")
        values = np.frombuffer(ds.PixelData, dtype=dtype, count=int(ds.Rows) * int(ds.Columns))
    vmin, vmax = int(values.min()), int(values.max())
    if vmin < low or vmax > high:
        raise ImageRejected(f"pixel values {vmin}..{vmax} outside BitsStored={ds.BitsStored} range {low}..{high}")


def _to_unit_range(ds, stored: np.ndarray) -> np.ndarray:
    """Modality LUT then VOI LUT, scaled to [0, 1] by the range the VOI output lives in."""
    values = apply_modality_lut(stored, ds)
    low, high = map(float, _stored_range(ds))
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_voi_lut(values, ds, index=0)  # maps into [low, high]
    image = (np.asarray(values, dtype=np.float64) - low) / max(high - low, 1e-12)
    return np.clip(image, 0.0, 1.0)
