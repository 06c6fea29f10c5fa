"""The PS3.4 greyscale pipeline as one lookup table over every possible stored value.

Modality LUT (LUT, else rescale) -> VOI (LUT, else the first window through its VOI LUT
Function, else the whole modality output range) -> [0, 1] -> "bright = dense" (MONOCHROME1 or
Presentation LUT Shape INVERSE, once). Written from the standard rather than with pydicom's
helpers, which depart from it in corner cases (dcmtk follows the standard in each):

- a window's output rises from its minimum to its maximum whatever the sign of the Rescale
  Slope (PS3.3 C.11.2.1.2); pydicom's `apply_windowing` takes the rescaled stored range as
  (ymin, ymax), so a negative slope inverts the image;
- a LUT is indexed with the full input value; pydicom indexes an 8-bit-entry VOI LUT with
  uint8, so inputs past 255 wrap around;
- VOI LUT Function LINEAR_EXACT and SIGMOID (PS3.3 C.11.2.1.3).

The table has 2**BitsStored entries (4096 for 12-bit films), so the per-pixel cost is one gather
(BENCHMARKS.md "DICOM decode").
"""
from __future__ import annotations

import numpy as np

from data_prep.dicom_header import Header, Lut
from data_prep.errors import ImageRejected


def grey_table(header: Header) -> np.ndarray:
    """float32 table: entry i is the [0, 1] brightness of stored value `stored_range[0] + i`."""
    low, high = header.stored_range
    with np.errstate(over="ignore", invalid="ignore"):
        values, out_low, out_high = modality(header, np.arange(low, high + 1, dtype=np.float64))
        unit = voi(header, values, out_low, out_high)
    if not np.isfinite(unit).all():  # e.g. a rescale of 1e300 overflows
        raise ImageRejected(f"RescaleSlope/Intercept {header.rescale} and window {header.window} overflow; "
                            "expected a modality output within the range of 64-bit floats")
    return (1.0 - unit if header.inverted else unit).astype(np.float32)


def modality(header: Header, stored: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(modality output, its lowest and highest possible value) (PS3.3 C.11.1)."""
    if header.modality_lut is not None:
        return lookup(header.modality_lut, stored), 0.0, float(2**header.modality_lut.bits - 1)
    slope, intercept = header.rescale
    low, high = header.stored_range
    out_low, out_high = sorted((low * slope + intercept, high * slope + intercept))
    return stored * slope + intercept, out_low, out_high


def voi(header: Header, values: np.ndarray, low: float, high: float) -> np.ndarray:
    """VOI LUT, else the first window, else the whole range [low, high]; output in [0, 1]."""
    if header.voi_lut is not None:
        return lookup(header.voi_lut, values) / (2**header.voi_lut.bits - 1)
    if header.window is not None:
        return window(values, *header.window, header.voi_function)
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)


def lookup(lut: Lut, values: np.ndarray) -> np.ndarray:
    """LUT output for integer inputs; a fractional input (from a fractional rescale) is
    truncated toward zero, as dcmtk does."""
    index = np.clip(np.trunc(values) - lut.first, 0, len(lut.table) - 1).astype(np.int64)
    return lut.table[index]


def window(x: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1 (SIGMOID), with the
    output range [ymin, ymax] = [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - centre) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        return np.clip((x - centre) / width + 0.5, 0.0, 1.0)
    if width == 1:  # x <= c - 0.5 -> ymin, x > c - 0.5 -> ymax: a threshold
        return (x > centre - 0.5).astype(np.float64)
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
