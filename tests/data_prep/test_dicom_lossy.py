"""Lossy 10- and 12-bit films whose decoded values lie a few units beyond BitsStored (issue 28).

GDCM codes a 10- or 12-bit film at its 16-bit allocation, so its decoder has nothing to clamp to:
JPEG-LS near-lossless (NEAR 2) gives 1025 for 1023 and JPEG 2000 irreversible 1024. dcmtk codes at
BitsStored and clamps; a film it codes at a wider precision and relabels to BitsStored with its own
dcmodify (what GDCM writes) shows the same, in JPEG-LS and in 12-bit extended JPEG. Such values are
clipped to the stored range and counted; a film further out than its codec allows, and a native or
lossless film beyond BitsStored (unless LossyImageCompression says it was once lossy-compressed),
is still a rejection naming the values.

Films: pydicom-data's real CR chest films, RG3 (10-bit, 1760 x 1760) and RG1 stretched to 12 bits as
a CR reader's output would be. Independent decodings: GDCM's own (python-gdcm) and dcmtk's
(dcmdjpls, dcmdjpeg); one rendering is also compared with dcmtk's (tests/dicom_corpus.py).
"""
from __future__ import annotations

import json
import subprocess
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

from data_prep.build import build
from data_prep.settings import BuildSettings
from data_prep.dicom import read_dicom, read_film
from data_prep.dicom_header import read_header
from data_prep.dicom_lut import grey_table
from data_prep.errors import ImageRejected
from data_prep.sources.target import TargetOptions
from data_prep.summary import summarise
from tests.conftest import TEST_KEY
from tests.dicom_corpus import (LOSSY_UNITS, assert_agrees, dcmtk_dir, dcmtk_encode, quiet_read, real_file,
                                with_pixels)

class Case(NamedTuple):
    source: str  # RG3 (10-bit), RG1-12 or CT-saturated (signed 14-bit)
    bits: int
    encoder: str  # gdcm, or the dcmtk tool
    codec: str  # jpeg-ls (near-lossless), jpeg2000 (irreversible) or jpeg (12-bit extended)
    setting: tuple  # GDCM: NEAR or JPEG 2000 rate (its compression ratio); dcmtk: the precision the
    # film is relabelled to and coded at (then relabelled back, as GDCM writes it), and the tool's options


CASES = {
    "gdcm-jpeg-ls-near-10": Case("RG3", 10, "gdcm", "jpeg-ls", (2,)),  # 66 pixels of 3.1 million at 1024..1025
    "gdcm-jpeg2000-10": Case("RG3", 10, "gdcm", "jpeg2000", (10,)),  # 2 pixels at 1024
    "gdcm-jpeg-ls-near-12": Case("RG1-12", 12, "gdcm", "jpeg-ls", (2,)),  # 1 pixel at 4096
    "gdcm-jpeg2000-12": Case("RG1-12", 12, "gdcm", "jpeg2000", (20,)),  # 3 pixels, up to 4117
    # 1356 pixels of 262144 up to 8213, sign-extended: the old decoder took them as zeros above HighBit and
    # wrapped them to the bottom of the range, black in the brightest bone
    "gdcm-jpeg2000-signed-14": Case("CT-saturated", 14, "gdcm", "jpeg2000", (10,)),
    "dcmtk-jpeg-ls-near-10": Case("RG3", 10, "dcmcjpls", "jpeg-ls", (16, "+en", "+md", "2")),  # as GDCM's: 66
    "dcmtk-jpeg-extended-10": Case("RG3", 10, "dcmcjpeg", "jpeg", (12, "+ee", "+q", "90")),  # 2 pixels at 1024
}
NEAR = 2
# Both toolkits' decoders give our decoder's values exactly: JPEG-LS is integer arithmetic, and GDCM's
# JPEG 2000 decoder is OpenJPEG, as pylibjpeg-openjpeg is. Two JPEG (DCT) decoders may be a unit or two apart.
EXACT = ("jpeg-ls", "jpeg2000")


def _gdcm():
    try:
        import gdcm
    except ImportError as exc:
        raise RuntimeError("python-gdcm is missing: pip install -c constraints.txt -e '.[test]'") from exc
    return gdcm


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lossy")


@cache
def _source(name: str, work: Path) -> Path:
    """RG3 as it is; RG1 (15-bit) stretched to 0..4095, BitsStored 12, as a CR reader writes its films;
    pydicom's real CT 693_UNCR (signed, 14 bits stored) four times brighter, its bone saturating at 8191."""
    if name == "RG3":
        return real_file("RG3_UNCR.dcm")
    if name == "CT-saturated":
        ds = quiet_read(real_file("693_UNCR.dcm"), stop_before_pixels=False)
        ds.PixelData = np.clip(ds.pixel_array.astype(np.int64) * 4, -8192, 8191).astype("<i2").tobytes()
        ds.save_as(work / "CT-saturated.dcm")
        return work / "CT-saturated.dcm"
    ds = quiet_read(real_file("RG1_UNCR.dcm"), stop_before_pixels=False)
    pixels = ds.pixel_array.astype(np.int64)
    twelve = (pixels - pixels.min()) * 4095 // (pixels.max() - pixels.min())
    ds.BitsStored, ds.HighBit, ds.PixelData = 12, 11, twelve.astype("<u2").tobytes()
    ds.save_as(work / "RG1-12.dcm")
    return work / "RG1-12.dcm"


def _gdcm_write(source: Path, out: Path, syntax, codec=None) -> Path:
    gdcm = _gdcm()
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read(), source
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    if codec is not None:
        change.SetUserCodec(codec)
    change.SetInput(reader.GetImage())
    assert change.Change(), out
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(out))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), out
    return out


def _gdcm_encode(source: Path, out: Path, codec: str, parameter: int) -> Path:
    """GDCM's lossy coders as `gdcmconv --jpegls --lossy -e N` and `--j2k --lossy --irreversible -r R` call
    them (gdcmconv also marks the header lossy, which the syntax does here already)."""
    gdcm = _gdcm()
    if codec == "jpeg-ls":
        coder = gdcm.JPEGLSCodec()
        coder.SetLossless(False)
        coder.SetLossyError(parameter)
        return _gdcm_write(source, out, gdcm.TransferSyntax.JPEGLSNearLossless, coder)
    coder = gdcm.JPEG2000Codec()
    coder.SetReversible(False)
    coder.SetRate(0, parameter)
    return _gdcm_write(source, out, gdcm.TransferSyntax.JPEG2000, coder)


def _relabel(path: Path, bits: int) -> Path:
    """dcmtk's dcmodify: BitsStored and HighBit only; the pixel data stay as coded."""
    subprocess.run([str(dcmtk_dir() / "dcmodify"), "--quiet", "-nb", "-m", f"BitsStored={bits}",
                    "-m", f"HighBit={bits - 1}", str(path)], check=True, capture_output=True)
    return path


@cache
def _encoded(name: str, work: Path) -> Path:
    case = CASES[name]
    source, out = _source(case.source, work), work / f"{name}.dcm"
    if case.encoder == "gdcm":
        return _gdcm_encode(source, out, case.codec, *case.setting)
    wide, *options = case.setting
    ds = quiet_read(source, stop_before_pixels=False)
    ds.BitsStored, ds.HighBit = wide, wide - 1  # same values, coded at `wide` bits of precision
    ds.save_as(work / f"{name}.wide.dcm")
    return _relabel(dcmtk_encode(work / f"{name}.wide.dcm", out, case.encoder, *options), case.bits)


def _independent_decoding(name: str, path: Path, work: Path) -> np.ndarray:
    """The stored values as the encoder's own toolkit decodes them, unmasked."""
    native, encoder = work / f"{name}.native.dcm", CASES[name].encoder
    if encoder == "gdcm":
        _gdcm_write(path, native, _gdcm().TransferSyntax.ExplicitVRLittleEndian)
    else:
        dcmtk_encode(path, native, "dcmdjpls" if encoder == "dcmcjpls" else "dcmdjpeg")
    ds = quiet_read(native, stop_before_pixels=False)
    dtype = "<i2" if ds.PixelRepresentation else "<u2"
    return np.frombuffer(ds.PixelData, dtype, count=ds.Rows * ds.Columns).reshape(ds.Rows, ds.Columns)


@pytest.mark.parametrize("name", CASES)
def test_a_lossy_films_few_values_beyond_bits_stored_are_clipped_and_counted(name, work):
    case, path = CASES[name], _encoded(name, work)
    header = read_header(quiet_read(path, stop_before_pixels=False))
    low, high = header.stored_range
    theirs = _independent_decoding(name, path, work)
    beyond = int(np.count_nonzero((theirs < low) | (theirs > high)))
    assert beyond > 0  # the codec did put values beyond BitsStored: the case is real
    image, _, _, clipped = read_film(path)  # the old decoder rejected the whole film here
    assert clipped == beyond if case.codec in EXACT else clipped > 0
    # The film is the one the encoder's toolkit decodes, clipped: as a native film of those values decodes
    # (test_dicom_dcmtk.py compares those with dcmtk), and for the first case as dcmtk renders it.
    reference = with_pixels(path, work / f"{name}.reference.dcm", np.clip(theirs, low, high))
    units = 0 if case.codec in EXACT else LOSSY_UNITS[str(quiet_read(path).file_meta.TransferSyntaxUID)]
    step = float(np.abs(np.diff(grey_table(header))).max())
    np.testing.assert_allclose(image, read_dicom(reference)[0], rtol=0, atol=units * step + 1e-6)
    if name == next(iter(CASES)):
        assert_agrees(path, reference)
    if case.codec == "jpeg-ls":  # clipped, the values are within NEAR of the original, as ISO/IEC 14495-1 says
        original = quiet_read(_source(case.source, work), stop_before_pixels=False).pixel_array
        assert np.abs(np.clip(theirs, low, high).astype(np.int64) - original).max() <= NEAR


@pytest.mark.parametrize("case, bits, message", [
    ("gdcm-jpeg-ls-near-10", 9, r"pixel values 0\.\.1025 outside BitsStored=9 range 0\.\.511 \(unsigned\); "
                                r"a lossy codec's values may lie 2 beyond it"),
    ("gdcm-jpeg2000-12", 11, r"pixel values 0\.\.4117 outside BitsStored=11 range 0\.\.2047 \(unsigned\); "
                             r"a lossy codec's values may lie 63 beyond it"),
])
def test_a_lossy_film_further_out_than_its_codec_allows_is_rejected_naming_its_values(case, bits, message, work):
    """The same coded films with a BitsStored one bit short: a header that is wrong, not a codec's error."""
    ds = quiet_read(_encoded(case, work), stop_before_pixels=False)
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.save_as(work / f"{case}.short.dcm")
    with pytest.raises(ImageRejected, match=message):
        read_film(work / f"{case}.short.dcm")


def test_native_and_lossless_films_beyond_bits_stored_are_rejected_unless_marked_lossy(work):
    """GDCM's decompression of its JPEG-LS film keeps the values (1025 at BitsStored 10) and says
    LossyImageCompression "01": clipped. Without the mark, and coded again losslessly by dcmtk (JPEG-LS
    .80; GDCM's own lossless coder masks 1025 to 1): the values are the file's own, the exact rule holds."""
    gdcm = _gdcm()
    native = _gdcm_write(_encoded("gdcm-jpeg-ls-near-10", work), work / "decompressed.dcm",
                         gdcm.TransferSyntax.ExplicitVRLittleEndian)
    ds = quiet_read(native)
    assert (ds.file_meta.TransferSyntaxUID, ds.LossyImageCompression) == ("1.2.840.10008.1.2.1", "01")
    assert read_film(native)[3] == 66
    ds = quiet_read(native, stop_before_pixels=False)
    del ds.LossyImageCompression
    ds.save_as(work / "unmarked.dcm")
    lossless = dcmtk_encode(work / "unmarked.dcm", work / "lossless.dcm", "dcmcjpls", "+el")
    assert str(quiet_read(lossless).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.80"
    for path in (work / "unmarked.dcm", lossless):
        with pytest.raises(ImageRejected, match=r"pixel values 0\.\.1025 outside BitsStored=10 range 0\.\.1023 "
                                                r"\(unsigned\)$"):
            read_film(path)


def test_a_build_keeps_lossy_films_and_counts_the_clipped_ones_in_its_manifest_and_summary(work, tmp_path):
    films = {"jls.dcm": _encoded("gdcm-jpeg-ls-near-10", work), "j2k.dcm": _encoded("gdcm-jpeg2000-12", work),
             "ct.dcm": real_file("CT_small.dcm")}  # a native film in range: nothing to clip
    (tmp_path / "dicom").mkdir()
    for name, path in films.items():
        (tmp_path / "dicom" / name).write_bytes(path.read_bytes())
    pd.DataFrame({"file": list(films), "effusion": [1, 0, 1], "nodule": [0, 1, 0]}).to_csv(tmp_path / "labels.csv",
                                                                                          index=False)
    params = BuildSettings(size=16, folds=2, near_duplicates="off", workers=1, source=TargetOptions(mapping="none"))
    out = build(tmp_path / "dicom", tmp_path / "labels.csv", tmp_path / "out", params, key=TEST_KEY,
                log=lambda *_: None)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["images"], counts["rejected"]) == (3, 0)
    assert (counts["lossy_clipped_films"], counts["lossy_clipped_pixels"]) == (2, 66 + 3)
    assert summarise(out, figures=False).overview["lossy films clipped to BitsStored"] == "2 (69 pixels)"
