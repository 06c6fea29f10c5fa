"""Decode and resize many images on all cores, in order, with bounded memory.

Kept apart from `build` so that a worker process imports only what decoding needs (numpy,
OpenCV, pydicom, PIL): importing the builder would pull in pandas and scikit-learn and add
about a second to every worker's start-up.
"""
from __future__ import annotations

import ctypes
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from data_prep.dicom import read_film
from data_prep.errors import ImageRejected
from data_prep.raster import RASTER_SUFFIXES, read_raster

PARALLEL_MIN_IMAGES = 64  # below this, worker start-up costs more than it saves
DTYPES = {8: np.uint8, 16: np.uint16}
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc mallopt parameters (malloc.h)


def read_image(path: Path) -> tuple[np.ndarray, str | None, dict[str, str | int], int]:
    """Any supported file: DICOM (PatientID, patient facts from the header and how many pixels a lossy codec
    put beyond BitsStored were clipped) or PNG/JPG (nothing inside, nothing clipped)."""
    if not Path(path).is_file():
        raise ImageRejected("file not found")
    if Path(path).suffix.lower() in RASTER_SUFFIXES:
        return read_raster(path), None, {}, 0
    return read_film(path)


def resize(image: np.ndarray, size: int, bits: int = 8) -> np.ndarray:
    """Area averaging when shrinking (antialiased, 2x faster than PIL's bilinear here), linear
    when growing; then 8- or 16-bit."""
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    top = 2**bits - 1
    return np.clip(np.round(resized * top), 0, top).astype(DTYPES[bits])


class Decoded(NamedTuple):
    """One file's decode: small enough to cross a process boundary."""

    pixels: np.ndarray | None  # size x size, or None when rejected
    patient_id: str | None  # the header's PatientID (DICOM only)
    reason: str | None  # why the file was rejected, or None
    shape: tuple[int, int] | None  # the image's own height and width
    facts: dict[str, str | int]  # the header's sex, age (whole years) and view, where present and well-formed
    clipped: int = 0  # pixels a lossy codec put beyond BitsStored, clipped to it (data_prep.dicom.fit_range)


def decode_and_resize(path: Path, size: int, bits: int = 8) -> Decoded:
    """(size x size image, PatientID, None, the image's own height and width, header facts, pixels clipped) or
    (None, None, rejection reason, None, {}, 0). Runs in workers: only the small result crosses the process
    boundary, so memory stays bounded, and the header's dates never leave it (an age in years does)."""
    try:
        pixels, patient_id, facts, clipped = read_image(path)
    except ImageRejected as exc:
        return Decoded(None, None, str(exc), None, {})
    return Decoded(resize(pixels, size, bits), patient_id, None, (int(pixels.shape[0]), int(pixels.shape[1])), facts,
                   clipped)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core
    _reuse_freed_memory()


def _reuse_freed_memory() -> None:
    """Keep glibc from returning each image's ~30 MB of buffers to the kernel: otherwise every
    image faults in fresh zeroed pages, which cost a third of a worker's time (measured in
    bench/decode_bench.py). No-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's upper limit: big buffers come from the heap,
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)  # stay there when freed,
        libc.mallopt(M_TOP_PAD, 64 << 20)  # and the heap grows in big steps (all three are needed)
    except (OSError, AttributeError):
        pass


def decoded(paths: list[Path], size: int, workers: int, bits: int = 8):
    """decode_and_resize over `paths`, in order, on `workers` processes (in-process for small jobs)."""
    if workers <= 1 or len(paths) < PARALLEL_MIN_IMAGES:
        yield from (decode_and_resize(p, size, bits) for p in paths)
        return
    # spawn, not fork: the caller may hold threads (torch, Ray) that fork would copy half-way
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker) as pool:
        yield from pool.map(decode_and_resize, paths, [size] * len(paths), [bits] * len(paths), chunksize=4)
