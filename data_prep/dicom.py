"""Decode one DICOM radiograph to a float image in [0, 1] where bright means dense.

1. The header elements the decode needs are read and checked (`dicom_header.read_header`):
   a malformed one is an ImageRejected naming the element, never an exception.
2. The stored values: native data straight from the buffer (whose length is checked first);
   compressed data (RLE, JPEG, JPEG-LS, JPEG 2000, HTJ2K) and colour through pydicom's pixel
   handlers with the pylibjpeg plugins. pydicom masks bits above HighBit away, so values are
   taken unmasked and checked here: unsigned values above BitsStored are rejected; signed
   values may carry zeros or a sign extension above HighBit (PS3.5 8.1.1: only the bits up to
   HighBit hold the value), anything else there is rejected. A lossy codec's values a little
   beyond the range are clipped to it and counted (`fit_range`, `lossy_tolerance`).
3. Grey: the PS3.4 pipeline as one table over the stored values (`dicom_lut.grey_table`).
   Colour (RGB; YBR_* converted to RGB by pydicom) becomes grey by luminance.
4. `read_film` also returns the header's patient facts (sex, age in years, view; `film_facts`)
   and how many pixels it clipped.
See docs/design.md §4 (traps) for why nothing pydicom returns is trusted unchecked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import _get_jpg_parameters  # pydicom's own JPEG-LS header parser (pinned 3.0)
from pydicom.uid import JPEGLSNearLossless

from data_prep.dicom_header import COLOUR, Header, film_facts, patient_id, read_header
from data_prep.dicom_lut import grey_table
from data_prep.errors import ImageRejected

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as PIL's convert("L") and dcmtk's +G
OVERSHOOT_SHARE = 32  # a lossy transform codec's values may lie 1/32 of the stored range beyond it (`lossy_tolerance`)


def read_dicom(path: Path) -> tuple[np.ndarray, str | None]:
    """Return (image in [0, 1], bright = dense; PatientID or None). Raises ImageRejected."""
    image, patient, _, _ = read_film(path)
    return image, patient


def read_film(path: Path) -> tuple[np.ndarray, str | None, dict[str, str | int], int]:
    """`read_dicom`, the header's patient facts (`dicom_header.film_facts`: sex, age in years, view) and
    how many pixels of a lossy film were clipped to BitsStored (`fit_range`)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types for unreadable files
        raise ImageRejected(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    header = read_header(ds)
    patient = patient_id(ds)
    facts = film_facts(ds)
    if header.photometric in COLOUR:
        rgb, _, clipped = fit_range(_decoded(ds, header), header, ds)
        image = (rgb.astype(np.float64) @ LUMA) / (2**header.stored - 1)
    else:
        values, vmax, clipped = fit_range(_stored_values(ds, header), header, ds)
        image = np.take(grey_table(header), _table_index(values, vmax, header))
    return image.astype(np.float32, copy=False), patient, facts, clipped


def _stored_values(ds, header: Header) -> np.ndarray:
    """Greyscale stored values, unmasked: native ones are a view of the checked buffer."""
    if header.syntax.is_encapsulated:
        return _decoded(ds, header)
    expected = header.rows * header.cols * header.allocated // 8
    try:
        data = ds.PixelData
    except Exception as exc:  # noqa: BLE001 - a PixelData of the wrong VR or length
        raise ImageRejected(f"PixelData cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, bytes) or len(data) not in (expected, expected + 1):  # + 1: even-length pad
        size = len(data) if isinstance(data, bytes) else type(data).__name__
        raise ImageRejected(f"PixelData holds {size} bytes; "
                            f"{header.rows}x{header.cols}x{header.allocated} bits needs {expected}")
    order = "<" if header.syntax.is_little_endian else ">"
    dtype = np.dtype(f"{order}{'i' if header.signed else 'u'}{header.allocated // 8}")
    return np.frombuffer(data, dtype=dtype, count=header.rows * header.cols).reshape(header.rows, header.cols)


def _decoded(ds, header: Header) -> np.ndarray:
    """pydicom's pixel handler (pylibjpeg plugins for compressed data), unmasked. The catch-all
    is the last safety net: the header was checked before, so what fails here is the data."""
    options = {"index": 0, "as_rgb": True, "correct_unused_bits": False}
    if header.syntax.is_encapsulated:
        options["decoding_plugin"] = "pylibjpeg"
    try:
        values, _ = get_decoder(header.syntax).as_array(ds, **options)
    except Exception as exc:  # missing plugin, corrupt or truncated stream, header the codec disagrees with
        raise ImageRejected(f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    shape = (header.rows, header.cols) + ((header.samples,) if header.samples > 1 else ())
    if values.shape != shape:
        raise ImageRejected(f"decoded pixel data has shape {values.shape}; the header says {shape}")
    return values


def fit_range(values: np.ndarray, header: Header, ds) -> tuple[np.ndarray, int, int]:
    """(values, their max, how many pixels were clipped). Stored values must fit BitsStored: unsigned ones
    below 2**BitsStored; signed ones as two's complement, sign-extended or with zeros above HighBit.
    A lossy film's values beyond the range by no more than its codec's tolerance (`lossy_tolerance`)
    are clipped to it; further out, or in a lossless film, they are a rejection naming them."""
    low, high = header.stored_range
    vmax = int(values.max())
    vmin = int(values.min()) if header.signed or vmax > high else 0  # unsigned and in range: min >= 0
    # Signed values above `high` are zeros above HighBit, unless the values are sign-extended numbers
    # from a lossy decoder: there they are the codec's overshoot.
    zero_padded = header.signed and not (header.lossy and vmin < 0)
    if low <= vmin and vmax <= (2**header.stored - 1 if zero_padded else high):
        return values, vmax, 0
    tolerance = lossy_tolerance(ds, header) if header.lossy else 0
    if not header.lossy or vmin < low - tolerance or vmax > high + tolerance:
        kind = "signed, sign-extended or zero above HighBit" if header.signed else "unsigned"
        beyond = f"; a lossy codec's values may lie {tolerance} beyond it" if header.lossy else ""
        raise ImageRejected(f"pixel values {vmin}..{vmax} outside BitsStored={header.stored} range {low}..{high} "
                            f"({kind}){beyond}")
    outside = (values < low) | (values > high)
    clipped = int(np.count_nonzero(outside.any(axis=-1) if values.ndim == 3 else outside))  # pixels, not samples
    return np.clip(values, low, high), min(vmax, high), clipped


def lossy_tolerance(ds, header: Header) -> int:
    """How far beyond the stored range a lossy codec may put a value, in stored units. An encoder that
    codes at a wider precision than BitsStored (GDCM codes 10- and 12-bit films at 16) leaves the
    decoder nothing to clamp to: 1025 comes back for a 1023 (issue 28).
    - JPEG-LS near-lossless: NEAR, from the frame's scan header; ISO/IEC 14495-1 bounds every
      sample's error by it, so a value further out is no codec error.
    - JPEG (DCT), JPEG 2000 and HTJ2K irreversible, or a film of another syntax whose
      LossyImageCompression is "01" (the codec unknown): quantised transform coefficients ring at
      edges with no fixed bound. GDCM's JPEG 2000 overshot a real CR film scaled to 12 bits, its
      densest part saturated, by 0.9 % of the range at rate 10, 1.4 % at 20 and 2.4 % at 160
      (guidelines for CR chest films stop at 10:1 to 30:1); a 10-bit CR film by 1 unit. 1/32 of the
      range (3.1 %) admits those; a BitsStored one bit short of the data puts values a whole range
      (100 %) beyond."""
    if header.syntax == JPEGLSNearLossless:
        try:
            near = _get_jpg_parameters(get_frame(ds.PixelData, 0, number_of_frames=1)).get("lossy_error")
        except Exception:  # noqa: BLE001 - no readable scan header: no tolerance
            near = None
        return int(near or 0)
    return (2**header.stored - 1) // OVERSHOOT_SHARE


def _table_index(values: np.ndarray, vmax: int, header: Header) -> np.ndarray:
    """Index into `grey_table` of values in range (`fit_range`; `vmax` their max). Signed values: masked
    to BitsStored and offset by 2**(BitsStored-1), which maps a sign-extended value and its zero-padded
    form to the same entry."""
    if not header.signed:
        return values
    low, high = header.stored_range
    index = values.astype(np.int32) - low
    return index & (2**header.stored - 1) if vmax > high else index
