"""Decode one DICOM radiograph to a float image in [0, 1] where bright means dense.

1. The header elements the decode needs are read and checked (`dicom_header.read_header`):
   a malformed one is an ImageRejected naming the element, never an exception.
2. The stored values: native data straight from the buffer (whose length is checked first);
   compressed data (RLE, JPEG, JPEG-LS, JPEG 2000, HTJ2K) and colour through pydicom's pixel
   handlers with the pylibjpeg plugins. pydicom masks bits above HighBit away, so values are
   taken unmasked and checked here: unsigned values above BitsStored are rejected; signed
   values may carry zeros or a sign extension above HighBit (PS3.5 8.1.1: only the bits up to
   HighBit hold the value), anything else there is rejected.
3. Grey: the PS3.4 pipeline as one table over the stored values (`dicom_lut.grey_table`).
   Colour (RGB; YBR_* converted to RGB by pydicom) becomes grey by luminance.
4. `read_film` also returns the header's patient facts (sex, age in years, view; `film_facts`).
See docs/design.md §4 (traps) for why nothing pydicom returns is trusted unchecked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import get_decoder

from data_prep.dicom_header import COLOUR, Header, film_facts, patient_id, read_header
from data_prep.dicom_lut import grey_table
from data_prep.errors import ImageRejected

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as PIL's convert("L") and dcmtk's +G


def read_dicom(path: Path) -> tuple[np.ndarray, str | None]:
    """Return (image in [0, 1], bright = dense; PatientID or None). Raises ImageRejected."""
    image, patient, _ = read_film(path)
    return image, patient


def read_film(path: Path) -> tuple[np.ndarray, str | None, dict[str, str | int]]:
    """`read_dicom` and the header's patient facts (`dicom_header.film_facts`: sex, age in years, view)."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types for unreadable files
        raise ImageRejected(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    header = read_header(ds)
    patient = patient_id(ds)
    facts = film_facts(ds)
    if header.photometric in COLOUR:
        rgb = _decoded(ds, header)
        _check_range(rgb, header)
        image = (rgb.astype(np.float64) @ LUMA) / (2**header.stored - 1)
    else:
        image = np.take(grey_table(header), _table_index(_stored_values(ds, header), header))
    return image.astype(np.float32, copy=False), patient, facts


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


def _check_range(values: np.ndarray, header: Header) -> tuple[int, int]:
    """(min, max) of the stored values, which must fit BitsStored: unsigned ones below
    2**BitsStored; signed ones as two's complement, sign-extended or with zeros above HighBit."""
    low, high = header.stored_range
    top = 2**header.stored - 1 if header.signed else high
    vmax = int(values.max())
    vmin = int(values.min()) if header.signed or vmax > high else 0  # unsigned and in range: min >= 0
    if vmin < low or vmax > top:
        kind = "signed, sign-extended or zero above HighBit" if header.signed else "unsigned"
        raise ImageRejected(f"pixel values {vmin}..{vmax} outside BitsStored={header.stored} range {low}..{high} "
                            f"({kind})")
    return vmin, vmax


def _table_index(values: np.ndarray, header: Header) -> np.ndarray:
    """Index into `grey_table`. Signed values: masked to BitsStored and offset by 2**(BitsStored-1),
    which maps a sign-extended value and its zero-padded form to the same entry."""
    _, vmax = _check_range(values, header)
    if not header.signed:
        return values
    low, high = header.stored_range
    index = values.astype(np.int32) - low
    return index & (2**header.stored - 1) if vmax > high else index
