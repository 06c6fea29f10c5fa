"""data_prep.dicom agrees with dcmtk, an independent implementation of the PS3.4 grey pipeline,
on every real test file and on re-encodings of real files in every syntax; what it cannot
decode correctly is rejected with its reason. Inputs and reference: tests/dicom_corpus.py.

Agreement: within 1/255 plus rounding of dcmtk's 16-bit output; for lossy syntaxes, plus the
decoders' tolerance in stored units times the largest step one stored unit makes in the
rendering (a narrow CT window turns one unit into a third of the output range).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from data_prep.dicom import _stored_values, read_dicom
from data_prep.dicom_header import read_header
from data_prep.errors import ImageRejected
from tests.dicom_corpus import (COUNTERPARTS, DCMTK_ENCODINGS, HTJ2K_SOURCES, LOSSY_UNITS, NO_DCMTK_DECODER, REENCODED,
                                all_real_files, assert_agrees, dcmtk_encode, htj2k_pair, quiet_read, real_file,
                                with_pixels)

# What we reject, and why. Policy: one frame, 8 or 16 bits allocated, no palette colour, exactly
# the pixel bytes the header describes. Defects: the rest (dcmtk decodes JPEG-lossy.dcm: IJG 6b
# accepts its non-conforming scan header, which libjpeg refuses; pydicom's README calls it
# invalid, and JPGExtended.dcm is its fixed copy, which we decode).
EXPECTED_REJECTIONS = {
    "NumberOfFrames": [
        "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_32bit_2frame.dcm", "examples_ybr_color.dcm",
        "rtdose.dcm", "rtdose_expb.dcm", "rtdose_rle.dcm", "SC_rgb_16bit_2frame.dcm", "SC_rgb_2frame.dcm",
        "SC_rgb_32bit_2frame.dcm", "SC_rgb_expb_16bit_2frame.dcm", "SC_rgb_expb_2frame.dcm",
        "SC_rgb_expb_32bit_2frame.dcm", "color3d_jpeg_baseline.dcm", "eCT_Supplemental.dcm", "emri_small.dcm",
        "emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm", "liver.dcm", "liver_expb.dcm"],
    "NumberOfFrames '1A'; expected an integer": ["badVR.dcm"],
    "BitsAllocated 32; expected 8 or 16": [
        "SC_rgb_rle_32bit.dcm", "rtdose_1frame.dcm", "rtdose_expb_1frame.dcm", "rtdose_rle_1frame.dcm",
        "SC_rgb_32bit.dcm", "SC_rgb_expb_32bit.dcm"],
    "BitsAllocated 1; expected 8 or 16": ["liver_1frame.dcm", "liver_expb_1frame.dcm"],
    "PhotometricInterpretation 'PALETTE COLOR'": [
        "examples_palette.dcm", "OBXXXX1A.dcm", "OBXXXX1A_2frame.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_expb_2frame.dcm",
        "OBXXXX1A_rle.dcm", "OBXXXX1A_rle_2frame.dcm", "gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"],
    "PhotometricInterpretation missing": ["nested_priv_SQ.dcm"],
    "PixelData holds 8130 bytes": ["MR_truncated.dcm"],
    "PixelData holds 8320 bytes": ["MR_small_padded.dcm"],  # 128 bytes past the one frame
    "no TransferSyntaxUID": ["meta_missing_tsyntax.dcm"],
    "not a readable DICOM file": [  # no File Meta Information: not DICOM files (PS3.10)
        "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "no_meta.dcm", "rtstruct.dcm", "OT-PAL-8-face.dcm"],
    "pixel data cannot be decoded (RuntimeError": [
        "JPEG-lossy.dcm",  # libjpeg: "scan start must be zero and scan stop must be 63" (see above)
        "JPEG2000-embedded-sequence-delimiter.dcm"],  # 4 codestream bytes overwritten (pydicom's README)
}
REJECTED = {name: reason for reason, names in EXPECTED_REJECTIONS.items() for name in names}
REAL_FILES = all_real_files()


def _id(path: Path) -> str:
    return path.name if path.suffix else f"{path.parent.name}/{path.name}"


def _reference(path: Path, tmp_path: Path) -> Path:
    """The file dcmtk renders for `path`: itself, or a native file with the same pixels (a
    counterpart from the same set; else a native copy of pydicom's decoding, which checks the grey
    pipeline but not the JPEG 2000 decoder)."""
    if path.name in COUNTERPARTS:
        return real_file(COUNTERPARTS[path.name])
    if str(quiet_read(path).file_meta.TransferSyntaxUID) not in NO_DCMTK_DECODER:
        return path
    full = quiet_read(path, stop_before_pixels=False)
    return with_pixels(path, tmp_path / "native.dcm", full.pixel_array)


@pytest.mark.parametrize("path", REAL_FILES, ids=_id)
def test_real_file_agrees_with_dcmtk_or_is_rejected_with_its_reason(path, tmp_path):
    if path.name in REJECTED:
        with pytest.raises(ImageRejected, match=REJECTED[path.name].replace("(", r"\(")):
            read_dicom(path)
        return
    assert_agrees(path, _reference(path, tmp_path))


def test_the_corpus_is_what_the_table_says():
    """Real CR chest films, CT and MR are in it; every named rejection is a file we have."""
    names = {p.name for p in REAL_FILES}
    assert {"RG1_UNCR.dcm", "RG3_J2KR.dcm", "693_UNCR.dcm", "MR2_J2KI.dcm", "JPEG-LL.dcm"} <= names
    assert set(REJECTED) <= names
    assert len(REAL_FILES) - len(REJECTED) >= 100


SIGNED_SOURCES = {"693_UNCR.dcm", "MR_small.dcm"}
REENCODINGS = [(source, encoding) for source in REENCODED for encoding in DCMTK_ENCODINGS
               # dcmcjpls: "Unsupported pixel representation for near-lossless JPEG-LS compression"
               if not (source in SIGNED_SOURCES and encoding[0] == "jpeg-ls-near-lossless")]


@pytest.mark.parametrize("source, encoding", REENCODINGS, ids=lambda v: v if isinstance(v, str) else v[0])
def test_dcmtk_reencoding_agrees_with_dcmtk(source, encoding, tmp_path):
    name, tool, *options = encoding
    encoded = dcmtk_encode(real_file(source), tmp_path / f"{name}.dcm", tool, *options)
    syntax = str(quiet_read(encoded).file_meta.TransferSyntaxUID)
    assert syntax != quiet_read(real_file(source)).file_meta.TransferSyntaxUID
    assert_agrees(encoded, encoded)
    if syntax in LOSSY_UNITS:  # and the stored values are the decoders' tolerance apart at most
        decompress = "dcmdjpls" if tool == "dcmcjpls" else "dcmdjpeg"
        native = quiet_read(dcmtk_encode(encoded, tmp_path / "native.dcm", decompress), stop_before_pixels=False)
        ds = quiet_read(encoded, stop_before_pixels=False)
        ours = _stored_values(ds, read_header(ds)).astype(np.int64)
        assert np.abs(ours - native.pixel_array).max() <= LOSSY_UNITS[syntax]


@pytest.mark.parametrize("lossless", [True, False], ids=["lossless-201", "lossy-203"])
@pytest.mark.parametrize("source", HTJ2K_SOURCES)
def test_htj2k_from_openjph_agrees_with_dcmtk_on_openjphs_own_decoding(source, lossless, tmp_path):
    encoded, reference = htj2k_pair(real_file(source), tmp_path, lossless=lossless)
    assert_agrees(encoded, reference)
    if lossless:  # and OpenJPH's decoding is the original film
        original = pydicom.dcmread(real_file(source)).pixel_array
        np.testing.assert_array_equal(pydicom.dcmread(reference).pixel_array, original)
