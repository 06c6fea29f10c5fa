"""Real DICOM files, re-encodings of them by other toolkits, and dcmtk's rendering of them: the
inputs and the independent reference for the decoder tests ("test against what the world makes").

- Files: pydicom's own test files and the pydicom-data wheel's (a test dependency pinned in
  constraints.txt): real CR chest films (RG1, RG3), CT, MR, NM, US in native, deflated, RLE, JPEG,
  JPEG-LS and JPEG 2000 encodings.
- Re-encodings: dcmtk's dcmconv/dcmcrle/dcmcjpeg/dcmcjpls turn native files into every syntax
  they write; OpenJPH's ojph_compress makes HTJ2K codestreams of the same pixels.
- Reference: dcmtk's dcmj2pnm/dcml2pnm rendering (the PS3.4 grey pipeline with the same VOI
  choice as ours: the first VOI LUT, else the first window, else none) as 16-bit PGM, in [0, 1].
  dcmtk decodes no JPEG 2000 or HTJ2K, so those are compared with dcmtk's rendering of a native
  file with the same pixels: pydicom-data's own native counterpart, or OpenJPH's decoding.

dcmtk and OpenJPH come from `tests/services/start.sh` (CXR_SWEEP_TEST_DCMTK / _OPENJPH); without
them these tests skip, or fail under CXR_SWEEP_REQUIRE_SERVICES=1, like the other services.
"""
from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, UID

from data_prep.dicom import read_dicom
from data_prep.dicom_header import read_header
from data_prep.dicom_lut import grey_table
from tests.services_fixtures import _service

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
NO_DCMTK_DECODER = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                    "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
# A decoder's tolerance, in stored units, for lossy syntaxes. JPEG DCT: ISO/IEC 10918-2 lets a
# compliant decoder be 1 off the reference decoder per sample, so two may be 2 apart (libjpeg vs
# dcmtk's IJG 6b: measured 2). JPEG-LS near-lossless decoding is exact (NEAR bounds the encoder's
# error, not the decoder's). JPEG 2000 / HTJ2K 9-7 irreversible: floating-point inverse wavelet,
# 1 unit of rounding (measured 0 against pydicom-data's and OpenJPH's decodings).
LOSSY_UNITS = {"1.2.840.10008.1.2.4.50": 2, "1.2.840.10008.1.2.4.51": 2, "1.2.840.10008.1.2.4.81": 0,
               "1.2.840.10008.1.2.4.91": 1, "1.2.840.10008.1.2.4.203": 1}
# "Equal within 1/255 plus rounding": dcmtk writes 16-bit output.
TOLERANCE = 1 / 255 + 1 / 65535


def pydicom_data_files() -> Path:
    try:
        import data_store  # the pydicom-data wheel
    except ImportError as exc:
        raise RuntimeError("pydicom-data is missing: pip install -c constraints.txt -e '.[test]'") from exc
    return Path(data_store.__file__).parent / "data"


def real_file(name: str) -> Path:
    """A file of pydicom's test set or of pydicom-data, by name."""
    for root in (PYDICOM_FILES, pydicom_data_files()):
        found = sorted(root.rglob(name))
        if found:
            return found[0]
    raise FileNotFoundError(name)


def all_real_files() -> list[Path]:
    """Every file of both sets that holds pixel data, and every .dcm file pydicom cannot read
    (DICOMDIRs, reports, plans and dumps left out)."""
    found = []
    for root in (PYDICOM_FILES, pydicom_data_files()):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            header = quiet_read(path, stop_before_pixels=False, tolerant=True)
            if (header is None and path.suffix == ".dcm") or (header is not None and "PixelData" in header):
                found.append(path)
    return found


def quiet_read(path: Path, *, stop_before_pixels: bool = True, tolerant: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except Exception:
            if tolerant:
                return None
            raise


def dcmtk_dir() -> Path:
    return Path(_service("CXR_SWEEP_TEST_DCMTK", "dcmtk"))


def openjph_dir() -> Path:
    return Path(_service("CXR_SWEEP_TEST_OPENJPH", "OpenJPH"))


def voi_options(ds) -> list[str]:
    """dcmtk's options for our VOI choice: the first VOI LUT, else the first window, else none."""
    if "VOILUTSequence" in ds:
        return ["+Wl", "1"]
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return ["+Wi", "1"]
    return []


def render(path: Path, options: list[str] | None = None) -> np.ndarray:
    """dcmtk's rendering in [0, 1] (16-bit PGM; colour made grey by dcmtk's +G luminance)."""
    ds = quiet_read(path)
    tool = "dcml2pnm" if ds.file_meta.TransferSyntaxUID in JPEG_LS else "dcmj2pnm"
    grey = [] if str(ds.get("PhotometricInterpretation", "")).startswith("MONO") else ["+G"]
    options = voi_options(ds) if options is None else options
    done = subprocess.run([str(dcmtk_dir() / tool), "--quiet", "-O", "+opw", *grey, *options, str(path)],
                          capture_output=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{tool} {path.name}: {done.stderr.decode(errors='replace')[-500:]}")
    magic, width, height, top, body = done.stdout.split(maxsplit=4)
    assert magic == b"P2", magic
    values = np.fromstring(body.decode(), dtype=np.int64, sep=" ")  # text mode: fast and not deprecated
    return values.reshape(int(height), int(width)) / int(top)


def dcmtk_encode(source: Path, out: Path, tool: str, *options: str) -> Path:
    subprocess.run([str(dcmtk_dir() / tool), "--quiet", *options, str(source), str(out)], check=True,
                   capture_output=True)
    return out


# (name, dcmtk tool and options) of every syntax dcmtk writes from a native file.
DCMTK_ENCODINGS = [
    ("implicit", "dcmconv", "+ti"), ("big-endian", "dcmconv", "+tb"), ("deflated", "dcmconv", "+td"),
    ("rle", "dcmcrle"), ("jpeg-lossless-57", "dcmcjpeg", "+el"), ("jpeg-lossless-70", "dcmcjpeg", "+e1"),
    ("jpeg-ls-lossless", "dcmcjpls", "+el"), ("jpeg-ls-near-lossless", "dcmcjpls", "+en"),
    ("jpeg-baseline-8", "dcmcjpeg", "+eb"), ("jpeg-extended-12", "dcmcjpeg", "+ee"),
]


def with_pixels(template: Path, out: Path, pixels: np.ndarray, syntax: UID = ExplicitVRLittleEndian,
                encapsulated: bytes | None = None) -> Path:
    """`template`'s header with other pixel data: native `pixels` (RGB when they have 3 samples),
    or one encapsulated frame."""
    ds = quiet_read(template, stop_before_pixels=False)
    ds.file_meta.TransferSyntaxUID = syntax
    if encapsulated is None:
        if pixels.ndim == 3:
            ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
        kind = "i" if ds.PixelRepresentation else "u"
        ds.PixelData = pixels.astype(f"<{kind}{ds.BitsAllocated // 8}").tobytes()
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    else:
        ds.PixelData = encapsulate([encapsulated])
        ds["PixelData"].VR = "OB"
    ds.save_as(out, enforce_file_format=True)
    return out


def htj2k_pair(source: Path, work: Path, *, lossless: bool) -> tuple[Path, Path]:
    """(HTJ2K file made by OpenJPH from `source`'s unsigned pixels, native file holding OpenJPH's
    own decoding of it). HTJ2K lossless is .201, lossy (9-7, qstep 0.002) .203."""
    ds = quiet_read(source, stop_before_pixels=False)
    assert not ds.PixelRepresentation, "OpenJPH's raw input of signed samples does not round-trip"
    pixels = ds.pixel_array
    stem = f"{source.stem}.htj2k-{'lossless' if lossless else 'lossy'}"
    pgm = work / f"{stem}.pgm"
    pgm.write_bytes(b"P5\n%d %d\n%d\n" % (pixels.shape[1], pixels.shape[0], 2**ds.BitsStored - 1)
                    + pixels.astype(">u2").tobytes())
    codestream, back = work / f"{stem}.j2c", work / f"{stem}.back.pgm"
    # OpenJPH 0.9's decoder gets a 16 x 16 image with 5 wavelet levels wrong (openjpeg decodes it)
    levels = ["-num_decomps", str(min(5, max(1, int(np.log2(min(pixels.shape))) - 1)))]
    options = [*levels, "-reversible", "true"] if lossless else [*levels, "-qstep", "0.002"]
    subprocess.run([str(openjph_dir() / "ojph_compress"), "-i", str(pgm), "-o", str(codestream), *options],
                   check=True, capture_output=True)
    subprocess.run([str(openjph_dir() / "ojph_expand"), "-i", str(codestream), "-o", str(back)],
                   check=True, capture_output=True)
    decoded = np.frombuffer(back.read_bytes()[-pixels.size * 2:], ">u2").reshape(pixels.shape)
    syntax = UID("1.2.840.10008.1.2.4.201" if lossless else "1.2.840.10008.1.2.4.203")
    return (with_pixels(source, work / f"{stem}.dcm", pixels, syntax, codestream.read_bytes()),
            with_pixels(source, work / f"{stem}.reference.dcm", decoded))


def assert_agrees(path: Path, reference: Path, options: list[str] | None = None) -> float:
    """Our image of `path` equals dcmtk's rendering of `reference` within the tolerance; returns
    the largest difference (1.0 = the whole output range)."""
    ours, _ = read_dicom(path)
    theirs = render(reference, options)
    assert ours.shape == theirs.shape
    ds = quiet_read(path)
    units = LOSSY_UNITS.get(str(ds.file_meta.TransferSyntaxUID), 0)
    if ds.PhotometricInterpretation.startswith("MONOCHROME"):
        step = float(np.abs(np.diff(grey_table(read_header(quiet_read(path, stop_before_pixels=False))))).max())
        tolerance = TOLERANCE + units * step
    else:  # dcmtk's +G rounds luminance to the stored grid (1 unit), then writes it scaled to 16 bits
        tolerance = (2 + units) / (2**ds.BitsStored - 1) + 1 / 65535
    difference = float(np.abs(ours - theirs).max())
    assert difference <= tolerance, f"{path.name}: {difference * 255:.3f}/255 from dcmtk (allowed {tolerance * 255:.3f})"
    return difference


# Files dcmtk cannot decode and a native file with the same pixels: pydicom-data's JPEG 2000
# files, and pydicom's SC_rgb_jpeg.dcm, whose meta header says explicit VR for an implicit VR
# data set (dcmtk stops reading; SC_rgb_jpeg_dcmd.dcm is its decompressed copy).
COUNTERPARTS = {
    "SC_rgb_jpeg.dcm": "SC_rgb_jpeg_dcmd.dcm",
    "RG1_J2KR.dcm": "RG1_UNCR.dcm", "RG1_J2KI.dcm": "RG1_UNCI.dcm", "RG3_J2KR.dcm": "RG3_UNCR.dcm",
    "RG3_J2KI.dcm": "RG3_UNCI.dcm", "MR2_J2KR.dcm": "MR2_UNCR.dcm", "MR2_J2KI.dcm": "MR2_UNCI.dcm",
    "693_J2KR.dcm": "693_UNCR.dcm", "693_J2KI.dcm": "693_UNCI.dcm", "JPEG2000.dcm": "JPEG2000_UNC.dcm",
    "MR_small_jp2klossless.dcm": "MR_small.dcm", "US1_J2KR.dcm": "US1_UNCR.dcm", "US1_J2KI.dcm": "US1_UNCI.dcm",
}
# Native files dcmtk re-encodes: a CR chest film (10-bit MONOCHROME1), a CR with a fractional
# rescale (12-bit), a signed CT (14 of 16 bits, rescale and narrow window), a signed 16-bit MR.
REENCODED = ["RG3_UNCR.dcm", "6154", "693_UNCR.dcm", "MR_small.dcm"]
HTJ2K_SOURCES = ["RG3_UNCR.dcm", "6154"]  # unsigned: OpenJPH's signed raw input does not round-trip
