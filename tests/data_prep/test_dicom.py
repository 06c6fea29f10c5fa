"""DICOM decoding: bright = dense exactly once, and bad files rejected, never mis-decoded."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from data_prep.dicom import read_dicom
from data_prep.errors import ImageRejected


def _first_dicom(phantom_dir: Path) -> Path:
    return sorted((phantom_dir / "images").glob("*.dcm"))[0]


def test_monochrome1_phantom_decodes_bright_where_dense(phantom_dir):
    image, patient_id = read_dicom(_first_dicom(phantom_dir))
    size = image.shape[0]
    spine = image[int(size * 0.3), size // 2]  # spine column, above the heart
    lung = image[size // 2, int(size * 0.3)]  # middle of the right lung
    air = image[1, 1]
    assert spine > lung > air
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert patient_id.startswith("PID")


def test_same_pixels_as_monochrome2_decode_inverted(phantom_dir, tmp_path):
    ds = pydicom.dcmread(_first_dicom(phantom_dir))
    ds.PhotometricInterpretation = "MONOCHROME2"
    del ds.PresentationLUTShape  # IDENTITY: no inversion at all
    ds.save_as(tmp_path / "m2.dcm")
    mono1, _ = read_dicom(_first_dicom(phantom_dir))
    mono2, _ = read_dicom(tmp_path / "m2.dcm")
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_truncated_pixel_data_is_rejected(phantom_dir, tmp_path):
    ds = pydicom.dcmread(_first_dicom(phantom_dir))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(tmp_path / "short.dcm")
    with pytest.raises(ImageRejected, match="PixelData holds"):
        read_dicom(tmp_path / "short.dcm")


def test_values_beyond_bits_stored_are_rejected(phantom_dir, tmp_path):
    ds = pydicom.dcmread(_first_dicom(phantom_dir))
    pixels = ds.pixel_array.copy()
    pixels[0, 0] = 5000  # 12-bit data holds at most 4095
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(tmp_path / "wide.dcm")
    with pytest.raises(ImageRejected, match="outside BitsStored=12"):
        read_dicom(tmp_path / "wide.dcm")


def test_non_dicom_file_is_rejected(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(ImageRejected, match="not a readable DICOM"):
        read_dicom(tmp_path / "x.dcm")


def test_real_signed_rescaled_file_maps_the_full_stored_range_to_unit(tmp_path):
    """pydicom's CT_small: signed 16-bit with a rescale and no window -> full BitsStored range."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    image, _ = read_dicom(Path(get_testdata_file("CT_small.dcm")))
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    low, high = -(2**15) * slope + intercept, (2**15 - 1) * slope + intercept
    expected = (ds.pixel_array * slope + intercept - low) / (high - low)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def _variant(phantom_dir: Path, tmp_path: Path, name: str, change) -> Path:
    ds = pydicom.dcmread(_first_dicom(phantom_dir))
    change(ds)
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path)
    return path


def _without_inverse(ds):
    del ds.PresentationLUTShape


def test_monochrome1_with_inverse_is_inverted_once(phantom_dir, tmp_path):
    both, _ = read_dicom(_first_dicom(phantom_dir))  # MONOCHROME1 + INVERSE, like the seed's files
    only_mono1, _ = read_dicom(_variant(phantom_dir, tmp_path, "m1", _without_inverse))
    np.testing.assert_allclose(both, only_mono1)


def test_monochrome2_with_inverse_equals_monochrome1(phantom_dir, tmp_path):
    def mono2_inverse(ds):
        ds.PhotometricInterpretation = "MONOCHROME2"

    np.testing.assert_allclose(read_dicom(_variant(phantom_dir, tmp_path, "m2i", mono2_inverse))[0],
                               read_dicom(_first_dicom(phantom_dir))[0], atol=1e-6)


def test_voi_lut_sequence_is_applied_with_its_own_output_range(phantom_dir, tmp_path):
    """A 4096-entry VOI LUT that squares the normalised input: the output must be that square."""
    from pydicom.dataset import Dataset

    def voi_square(ds):
        del ds.WindowCenter, ds.WindowWidth
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.LUTData = np.round((np.arange(4096) / 4095) ** 2 * 65535).astype("<u2").tobytes()  # OW
        ds.VOILUTSequence = [item]

    stored = pydicom.dcmread(_first_dicom(phantom_dir)).pixel_array / 4095
    image, _ = read_dicom(_variant(phantom_dir, tmp_path, "voi", voi_square))
    np.testing.assert_allclose(image, 1.0 - stored**2, atol=1e-4)  # then MONOCHROME1 inversion


def test_first_of_several_windows_is_used(phantom_dir, tmp_path):
    def two_windows(ds):
        ds.WindowCenter, ds.WindowWidth = [1024, 2048], [1024, 4096]

    stored = pydicom.dcmread(_first_dicom(phantom_dir)).pixel_array.astype(float)
    image, _ = read_dicom(_variant(phantom_dir, tmp_path, "win", two_windows))
    expected = np.clip(((stored - 1024) / 1024 + 0.5), 0, 1)  # centre 1024, width 1024 (pydicom LINEAR ~)
    np.testing.assert_allclose(image, 1.0 - expected, atol=2e-3)


def test_rgb_becomes_luminance_grey(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.PatientID = meta, "X"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 8, 8, 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.PixelData = rgb.tobytes()
    pydicom.dcmwrite(tmp_path / "rgb.dcm", ds, enforce_file_format=True)
    image, _ = read_dicom(tmp_path / "rgb.dcm")
    np.testing.assert_allclose(image, (rgb @ np.array([0.299, 0.587, 0.114])) / 255, atol=1e-6)


def _header_only(ds):
    del ds.PixelData


def _extra_bytes(ds):
    ds.PixelData = ds.PixelData + b"\x00\x01" * 64


def _multi_frame(ds):
    ds.NumberOfFrames = 2


def _signed_garbage_above_high_bit(ds):
    """Signed 12-bit data may hold zeros or a sign extension above HighBit (PS3.5 8.1.1); bit 13
    set on a positive value is neither."""
    ds.PixelRepresentation = 1
    pixels = ds.pixel_array.astype("<u2") & 0x07FF
    pixels[0, 0] = 0x2000 | 5
    ds.PixelData = pixels.tobytes()


def _window_zero(ds):
    ds.WindowWidth = 0


def _palette(ds):
    ds.PhotometricInterpretation = "PALETTE COLOR"


def _bits_stored_too_small(ds):
    ds.BitsStored, ds.HighBit = 8, 7  # values above 255 must not be masked silently


@pytest.mark.parametrize("change, reason", [
    (_header_only, "no PixelData"), (_extra_bytes, "PixelData holds"), (_multi_frame, "NumberOfFrames 2"),
    (_signed_garbage_above_high_bit, "outside BitsStored=12 range -2048..2047"), (_window_zero, "WindowWidth 0"),
    (_palette, "PhotometricInterpretation 'PALETTE COLOR'"), (_bits_stored_too_small, "outside BitsStored=8"),
])
def test_bad_files_are_rejected_with_their_reason(phantom_dir, tmp_path, change, reason):
    path = _variant(phantom_dir, tmp_path, change.__name__, change)
    with pytest.raises(ImageRejected, match=reason):
        read_dicom(path)


def test_corrupt_compressed_stream_is_rejected(phantom_dir, tmp_path):
    from pydicom.encaps import encapsulate

    def jpeg2000(ds):
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000: a codestream cut after SIZ's marker
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 32])

    with pytest.raises(ImageRejected, match="pixel data cannot be decoded"):
        read_dicom(_variant(phantom_dir, tmp_path, "j2k", jpeg2000))


def _pydicom_test_files(pattern: str) -> list[Path]:
    import pydicom.data

    return sorted(Path(pydicom.data.__file__).parent.joinpath("test_files").glob(pattern))


@pytest.mark.parametrize("path", _pydicom_test_files("dicomdirtests/77654033/CR*/*"), ids=lambda p: p.parent.name)
def test_pydicoms_real_cr_files_match_pydicoms_own_per_pixel_pipeline(path):
    """Real MONOCHROME1 12-bit CR films: our lookup-table path equals pydicom's arithmetic, inverted once."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image, _ = read_dicom(path)
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(float)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)  # these files rescale
    low, high = intercept, (2 ** int(ds.BitsStored) - 1) * slope + intercept  # pydicom's window output range
    expected = 1.0 - np.clip((values - low) / (high - low), 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-5)
    assert image.std() > 0.01


def test_signed_values_with_zeros_above_high_bit_are_sign_extended(phantom_dir, tmp_path):
    """PS3.5 8.1.1: only the bits up to HighBit hold the value. 12-bit signed data written with
    zeros above bit 11 (0x0FFB for -5) decode as the sign-extended values (0xFFFB)."""
    def signed(ds, extend):
        values = ds.pixel_array.astype(np.int32) - 2048  # -2048..2047
        ds.PixelRepresentation, ds.WindowCenter = 1, 0
        ds.PixelData = (values if extend else values & 0x0FFF).astype("<i4").astype("<u2").tobytes()

    extended = read_dicom(_variant(phantom_dir, tmp_path, "ext", lambda ds: signed(ds, True)))[0]
    zeroed = read_dicom(_variant(phantom_dir, tmp_path, "zero", lambda ds: signed(ds, False)))[0]
    np.testing.assert_array_equal(zeroed, extended)
    assert extended.std() > 0.01


def test_pydicoms_truncated_file_is_rejected():
    (path,) = _pydicom_test_files("MR_truncated.dcm")
    with pytest.raises(ImageRejected, match="PixelData holds"):
        read_dicom(path)


def test_a_patient_id_of_several_values_is_no_id_and_never_quoted(tmp_path):
    """A PACS can write MRN1\\MRN2: the film still decodes; the label table's patient column is then needed."""
    from pydicom.data import get_testdata_file

    from data_prep.decode import decode_and_resize

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID = ["MRN-PLANTED-1", "MRN-PLANTED-2"]
    ds.save_as(tmp_path / "two_ids.dcm")
    image, patient = read_dicom(tmp_path / "two_ids.dcm")
    assert patient is None and image.shape == (128, 128)
    decoded = decode_and_resize(tmp_path / "two_ids.dcm", 16)
    assert decoded.reason is None and "MRN-PLANTED" not in repr(decoded)
