"""Decode one DICOM radiograph to a float image in [0, 1] where bright means dense.

Order (PS3.4 grayscale pipeline): Modality LUT (rescale or LUT sequence) -> VOI LUT (LUT
sequence, else the first window, else the full range of the modality output) -> "bright =
dense" made exactly once: MONOCHROME1 and Presentation LUT Shape INVERSE say the same thing
(low value = white), and files often carry both. RGB becomes grey by luminance. pydicom
does not check that the pixel data fits the header, so we do, before trusting any pixel
(DESIGN.md "things known to bite").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

from data_prep.errors import ImageRejected

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB")
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as PIL's convert("L")
MAX_SIDE = 16384


def read_dicom(path: Path) -> tuple[np.ndarray, str | None]:
    """Return (image in [0, 1], bright = dense; PatientID or None). Raises ImageRejected."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types for unreadable files
        raise ImageRejected(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    _validate_header(ds)
    stored = _stored_pixels(ds)
    if ds.PhotometricInterpretation == "RGB":
        image = (stored.astype(np.float64) @ LUMA) / (2 ** int(ds.BitsStored) - 1)
    else:
        lut, low = _grey_lut(ds)
        image = np.take(lut, stored.astype(np.int32) - low if low else stored)  # 2x faster than lut[stored]
    patient_id = str(ds.PatientID) if "PatientID" in ds and str(ds.PatientID).strip() else None
    return image.astype(np.float32, copy=False), patient_id


def read_image(path: Path) -> tuple[np.ndarray, str | None]:
    """Any supported file: DICOM (PatientID from the header) or PNG/JPG (no patient inside)."""
    from data_prep.raster import RASTER_SUFFIXES, read_raster

    if not Path(path).is_file():
        raise ImageRejected("file not found")
    if Path(path).suffix.lower() in RASTER_SUFFIXES:
        return read_raster(path), None
    return read_dicom(path)


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
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != (3 if photometric == "RGB" else 1):
        raise ImageRejected(f"SamplesPerPixel {samples} with {photometric}; expected 3 for RGB, 1 for monochrome")
    if "WindowWidth" in ds and "VOILUTSequence" not in ds and _first(ds.WindowWidth) < 1:
        raise ImageRejected(f"WindowWidth {_first(ds.WindowWidth)}; a window must be at least 1 wide")
    shape = _presentation_shape(ds)
    if shape not in ("IDENTITY", "INVERSE"):
        raise ImageRejected(f"PresentationLUTShape {shape!r}; expected IDENTITY or INVERSE")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = rows * cols * samples * allocated // 8
        actual = len(ds.PixelData)
        if actual not in (expected, expected + 1):  # one pad byte keeps the value length even
            raise ImageRejected(f"PixelData holds {actual} bytes; {rows}x{cols}x{allocated} bits needs {expected}")


def _stored_range(ds) -> tuple[int, int]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _stored_pixels(ds) -> np.ndarray:
    """The stored values, checked against BitsStored. pydicom masks high bits away, so
    uncompressed data are read from the raw buffer (whose length was checked)."""
    samples = int(ds.get("SamplesPerPixel", 1))
    shape = (int(ds.Rows), int(ds.Columns)) + ((samples,) if samples > 1 else ())
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        try:
            values = ds.pixel_array
        except Exception as exc:  # missing decoder, corrupt stream, ...
            raise ImageRejected(f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    else:
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        dtype = np.dtype(f"{'<' if ds.file_meta.TransferSyntaxUID.is_little_endian else '>'}"
                         f"{'i' if signed else 'u'}{int(ds.BitsAllocated) // 8}")
        if samples > 1 and int(ds.get("PlanarConfiguration", 0)) == 1:
            shape = (samples,) + shape[:2]
        values = np.frombuffer(ds.PixelData, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        if len(shape) == 3 and shape[0] == samples:
            values = np.moveaxis(values, 0, -1)
    low, high = _stored_range(ds)
    vmax = int(values.max())
    vmin = int(values.min()) if low < 0 or vmax > high else 0  # unsigned and in range: min cannot be below 0
    if vmin < low or vmax > high:
        raise ImageRejected(f"pixel values {vmin}..{vmax} outside BitsStored={ds.BitsStored} range {low}..{high}")
    return values


def _grey_lut(ds) -> tuple[np.ndarray, int]:
    """(table, lowest stored value): the whole grey pipeline evaluated once per possible stored
    value (4096 for 12-bit data) with the same pydicom calls, then one gather per image."""
    low, high = _stored_range(ds)
    unit = _grey_to_unit(ds, np.arange(low, high + 1))
    return (1.0 - unit if _inverted(ds) else unit).astype(np.float32), low


def _first(value) -> float:
    """The first of a multi-valued element (window centre/width), as a float."""
    return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)


def _modality_range(ds) -> tuple[float, float]:
    """The range of the Modality LUT's output: the LUT's entry bits, or the rescaled stored range."""
    if "ModalityLUTSequence" in ds:
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    low, high = map(float, _stored_range(ds))
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def _grey_to_unit(ds, stored: np.ndarray) -> np.ndarray:
    """Modality LUT then VOI LUT, scaled to [0, 1] by the range the last step's output lives in."""
    values = apply_modality_lut(stored, ds)
    low, high = _modality_range(ds)
    if "VOILUTSequence" in ds:
        if np.array_equal(values, np.round(values)):  # a rescale gives floats; LUT entries are indexed by integers
            values = np.asarray(values).astype(np.int64)
        values = apply_voi(values, ds, index=0)
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = apply_windowing(values, ds, index=0)  # first window; output spans [low, high]
    image = (np.asarray(values, dtype=np.float64) - low) / max(high - low, 1e-12)
    return np.clip(image, 0.0, 1.0)


def _inverted(ds) -> bool:
    """Low value = white: said by MONOCHROME1 or by Presentation LUT Shape INVERSE (or both: once)."""
    return ds.PhotometricInterpretation == "MONOCHROME1" or _presentation_shape(ds) == "INVERSE"


def _presentation_shape(ds) -> str:
    return str(ds.get("PresentationLUTShape", "IDENTITY")).strip().upper()
