"""Where pydicom's LUT helpers depart from the standard, we follow the standard and dcmtk agrees.

Each case is a real file with one header change made with pydicom; each test states what
PS3.3/PS3.5 say the image must be, checks our decoder against that and against dcmtk's
rendering, and shows what pydicom 3.0's helpers give instead.
"""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi, apply_windowing
from pydicom.sequence import Sequence

from data_prep.dicom import read_dicom
from tests.dicom_corpus import TOLERANCE, assert_agrees, quiet_read, real_file, render

CT = "693_UNCR.dcm"  # real CT: signed, 14 of 16 bits, rescale 1 / -1024, window 40 / 100
CR = "6154"  # real CR film: MONOCHROME1, 12-bit, stored values 1994..2802


def _variant(name: str, tmp_path, change) -> tuple:
    ds = quiet_read(real_file(name), stop_before_pixels=False)
    change(ds)
    path = tmp_path / f"{name}.variant.dcm"
    ds.save_as(path)
    return path, quiet_read(path, stop_before_pixels=False)


def _linear(x, centre, width):
    """PS3.3 C.11.2.1.2.1: x <= c - 0.5 - (w-1)/2 -> ymin; x > c - 0.5 + (w-1)/2 -> ymax;
    else ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin; here [ymin, ymax] = [0, 1]."""
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0, 1)


def test_window_with_negative_rescale_slope_rises_from_ymin_to_ymax(tmp_path):
    """Slope -1, intercept 1024 turns HU into -HU; the window is mirrored to centre -40. The
    standard: the window's output rises with its input x = slope * stored + intercept, whatever
    the slope's sign. pydicom's apply_windowing takes ymin/ymax from the rescaled stored range,
    which a negative slope swaps, and so inverts the image."""
    def negative(ds):
        ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = -1, 1024, -40, 100

    path, ds = _variant(CT, tmp_path, negative)
    x = -1.0 * ds.pixel_array + 1024
    expected = _linear(x, -40, 100)
    ours, _ = read_dicom(path)
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    assert_agrees(path, path)
    ymin, ymax = sorted((-(2**13) * -1.0 + 1024, (2**13 - 1) * -1.0 + 1024))
    pydicoms = (apply_windowing(x, ds) - ymin) / (ymax - ymin)
    np.testing.assert_allclose(pydicoms, 1 - expected, atol=1 / 99 + 1e-6)  # inverted (up to one step)


@pytest.mark.parametrize("encoding", ["US words", "OW bytes"])
def test_8_bit_voi_lut_on_12_bit_input_is_indexed_with_the_whole_value(encoding, tmp_path):
    """A 4096-entry VOI LUT with 8-bit entries (square root curve) on stored values 1994..2802.
    The standard (PS3.3 C.11.2.1.1): output = LUTData[input - first mapped], in 0..255; the
    film is MONOCHROME1, so bright = 1 - output / 255. pydicom's apply_voi computes the index in
    the entries' dtype (uint8), so input 1994 wraps to 202."""
    table = np.round(255 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint8)

    def voi_lut(ds):
        del ds.WindowCenter, ds.WindowWidth, ds.RescaleSlope, ds.RescaleIntercept
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 8]
        if encoding == "US words":
            item.add_new("LUTData", "US", table.tolist())
        else:
            item.add_new("LUTData", "OW", table.tobytes())
        ds.VOILUTSequence = Sequence([item])

    path, ds = _variant(CR, tmp_path, voi_lut)
    expected = 1 - table[ds.pixel_array] / 255
    ours, _ = read_dicom(path)
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    assert_agrees(path, path)
    if encoding == "US words":
        wrapped = 1 - apply_voi(ds.pixel_array, ds) / 255
        assert np.abs(wrapped - expected).max() > 0.1


def test_9_bit_voi_lut_is_decoded_in_its_own_range(tmp_path):
    """PS3.3 C.11.2.1.1.1: entries of 9 to 16 bits are stored one per 16-bit word; output range
    0 .. 2**bits - 1. pydicom's apply_voi raises NotImplementedError for 9 bits."""
    table = np.round(511 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)

    def voi_lut(ds):
        del ds.WindowCenter, ds.WindowWidth, ds.RescaleSlope, ds.RescaleIntercept
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 9]
        item.add_new("LUTData", "US", table.tolist())
        ds.VOILUTSequence = Sequence([item])

    path, ds = _variant(CR, tmp_path, voi_lut)
    np.testing.assert_allclose(read_dicom(path)[0], 1 - table[ds.pixel_array] / 511, atol=1e-6)
    assert_agrees(path, path)
    with pytest.raises(NotImplementedError):
        apply_voi(ds.pixel_array, ds)


def test_signed_values_with_zeros_above_high_bit_are_masked_and_sign_extended(tmp_path):
    """PS3.5 8.1.1: only bits 0..HighBit hold a value. The CT's negative values rewritten with
    zeros above bit 13 (-2000 = 0x3830 instead of 0xF830) are the same image."""
    def zero_high_bits(ds):
        raw = np.frombuffer(ds.PixelData, "<i2").astype(np.int32)
        ds.PixelData = (raw & 0x3FFF).astype("<u2").tobytes()

    path, ds = _variant(CT, tmp_path, zero_high_bits)
    assert np.frombuffer(ds.PixelData, "<u2").max() > 2**13  # really not sign-extended
    original, _ = read_dicom(real_file(CT))
    np.testing.assert_array_equal(read_dicom(path)[0], original)
    assert_agrees(path, path)


def test_sigmoid_voi_lut_function(tmp_path):
    """PS3.3 C.11.2.1.3.1: y = (ymax - ymin) / (1 + exp(-4 (x - c) / w)) + ymin."""
    path, ds = _variant(CT, tmp_path, lambda ds: setattr(ds, "VOILUTFunction", "SIGMOID"))
    x = ds.pixel_array * 1.0 - 1024
    np.testing.assert_allclose(read_dicom(path)[0], 1 / (1 + np.exp(-4 * (x - 40) / 100)), atol=1e-6)
    assert_agrees(path, path)


def test_linear_exact_voi_lut_function(tmp_path):
    """PS3.3 C.11.2.1.3.2: x <= c - w/2 -> ymin; x > c + w/2 -> ymax; else ((x - c) / w + 0.5).
    dcmtk 3.6.7 does not know LINEAR_EXACT (it warns and uses LINEAR), so the reference is its
    LINEAR window with centre c + 0.5 and width w + 1, which is the same function."""
    path, ds = _variant(CT, tmp_path, lambda ds: setattr(ds, "VOILUTFunction", "LINEAR_EXACT"))
    x = ds.pixel_array * 1.0 - 1024
    ours, _ = read_dicom(path)
    np.testing.assert_allclose(ours, np.clip((x - 40) / 100 + 0.5, 0, 1), atol=1e-6)
    assert np.abs(ours - render(path, ["+Ww", "40.5", "101"])).max() <= TOLERANCE
    assert np.abs(ours - render(path)).max() > 0.5 / 100  # what LINEAR gives is measurably different
