"""Decode PNG and JPG radiographs (NIH, CheXpert) to a float image in [0, 1], bright = dense.

These are display images already (bright = dense), 8- or 16-bit grey, or colour. Colour and
alpha become one grey channel (luminance; alpha dropped). Size is checked before pixels are
decoded; truncated and unreadable files are rejected, never half-decoded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.dicom import LUMA
from data_prep.dicom_header import MAX_SIDE
from data_prep.errors import ImageRejected

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_raster(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            width, height = image.size
            if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
                raise ImageRejected(f"image size {height}x{width}; expected 1..{MAX_SIDE} pixels per side")
            if getattr(image, "n_frames", 1) != 1:
                raise ImageRejected(f"{image.n_frames} frames; expected one")
            image.load()  # raises on truncated data instead of returning grey padding
            return _to_unit(image)
    except ImageRejected:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"not a readable image ({type(exc).__name__}: {exc})") from exc


def _to_unit(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        return (values / 65535.0).astype(np.float32)  # 16-bit grey (PIL opens it as I;16 or I)
    if image.mode == "L":
        return (np.asarray(image, dtype=np.float32) / 255.0)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)  # P, LA, RGBA, CMYK, YCbCr: alpha dropped
    return (rgb @ LUMA / 255.0).astype(np.float32)
