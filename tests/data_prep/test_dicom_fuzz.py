"""A malformed header is a rejected file with its reason, never an exception that stops a build.

Real files (tests/dicom_corpus.py) with one header element replaced by raw bytes, as a writer
with a bug would leave it: deleted, empty, not a number, out of range, several values, another
VR, a length its VR cannot have. Each goes through `decode_and_resize`, the function a build
calls per file: it either decodes or comes back rejected with a reason; nothing raises.
"""
from __future__ import annotations

import copy
import random
import warnings
from collections import Counter

import numpy as np
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from data_prep.decode import decode_and_resize
from tests.dicom_corpus import quiet_read, real_file

# Small real files covering each code path: CR (MONOCHROME1, rescale, window), signed CT,
# Modality LUT, VOI LUT, deflated, RLE, JPEG lossless, JPEG-LS, JPEG 2000, JPEG 12-bit, colour JPEG.
BASES = ["6154", "CT_small.dcm", "mlut_18.dcm", "vlut_04.dcm", "image_dfl.dcm", "MR_small_RLE.dcm",
         "JPEG-LL.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "JPGExtended.dcm",
         "SC_rgb_dcmtk_+eb+cy+np.dcm", "MR_small_bigendian.dcm"]
ELEMENTS = ["Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
            "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "RescaleSlope", "RescaleIntercept",
            "WindowCenter", "WindowWidth", "VOILUTFunction", "PresentationLUTShape", "PatientID"]
# (VR, raw value) written in place of an element: plausible values first, then broken ones.
RAW_VALUES = [
    ("DS", b"1000"), ("DS", b"2047.5\\100 "), ("DS", b"-2.5"), ("DS", b"1 "), ("CS", b"IDENTITY"), ("LO", b"PID-7 "),
    ("IS", b""), ("DS", b"  "), ("IS", b"1A"), ("DS", b"abc "), ("DS", b"NaN "), ("DS", b"inf "), ("DS", b"1e400 "),
    ("DS", b"-1e300"), ("IS", b"0 "), ("IS", b"-1"), ("IS", b"99999999999 "), ("DS", b"1\\2 "), ("DS", b"0.5 "),
    ("US", b"\x00\x00"), ("US", b"\xff\xff"), ("US", b"\x01"), ("US", b"\x0c\x00\x10\x00"), ("SS", b"\x00\x80"),
    ("FD", b"\x00" * 7 + b"\x7f"), ("FL", b"\x00\x00\xc0\x7f"), ("OB", b"\x00\x01\x02\x03"), ("UN", b"\x10\x00"),
    ("LO", b"MONOCHROME3 "), ("CS", b"SIGMOID "), ("CS", b"LOG "), ("CS", b"INVERSE "), ("SQ", b"\x01\x02"),
    ("PN", b"Doe^John"), ("UI", b"1.2.3\x00"), ("AT", b"\x28\x00\x10\x00"),
]


def _raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    tag = Tag(keyword)
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _lut_item(descriptor, data) -> Dataset:
    item = Dataset()
    if descriptor is not None:
        item.LUTDescriptor = descriptor
    if data is not None:
        item.add_new("LUTData", "US" if isinstance(data, list) else "OW", data)
    return item


# Whole-sequence mutations: empty, an item without a descriptor or data, a short descriptor, data
# of another length, entries wider than the declared bits, a descriptor of 17 bits, floats.
LUT_MUTATIONS = [
    [], [Dataset()], [_lut_item([4096, 0, 16], None)], [_lut_item([4096, 0], [0] * 4096)],
    [_lut_item([4096, 0, 16], [0] * 100)], [_lut_item([256, 0, 8], [300] * 256)], [_lut_item([256, 0, 17], [1] * 256)],
    [_lut_item([0, 0, 16], b"\x00\x01" * 10)], [_lut_item([256, 0, 8], b"\x01" * 255)], [_lut_item([3, 0, 8], [1, 2, 3])],
]


def _mutations(rng: random.Random, count: int):
    """`count` (name, base file, change) triples, drawn with a fixed seed."""
    for number in range(count):
        base = BASES[number % len(BASES)]
        if rng.random() < 0.15:
            keyword = rng.choice(["VOILUTSequence", "ModalityLUTSequence"])
            items = rng.randrange(len(LUT_MUTATIONS))
            yield f"{number}-{base}-{keyword}-{items}", base, lambda ds, k=keyword, i=items: setattr(
                ds, k, Sequence(LUT_MUTATIONS[i]))
        elif rng.random() < 0.1:
            keyword = rng.choice(ELEMENTS)
            yield f"{number}-{base}-{keyword}-deleted", base, lambda ds, k=keyword: k in ds and delattr(ds, k)
        else:
            keyword, (vr, value) = rng.choice(ELEMENTS), rng.choice(RAW_VALUES)
            yield f"{number}-{base}-{keyword}-{vr}-{value!r}", base, lambda ds, k=keyword, v=vr, x=value: _raw(ds, k, v, x)


def test_header_mutations_of_real_files_decode_or_are_rejected_never_raise(tmp_path):
    outcomes, failures = Counter(), []
    sources = {name: quiet_read(real_file(name), stop_before_pixels=False) for name in BASES}
    for name, base, change in _mutations(random.Random(16), 360):
        ds = copy.deepcopy(sources[base])  # Dataset.copy() shares the elements
        change(ds)
        path = tmp_path / "mutated.dcm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds.save_as(path)
            except Exception:  # noqa: BLE001 - pydicom cannot write this one; not a file anyone gets
                outcomes["not writable"] += 1
                continue
            try:
                image, _, reason, *_ = decode_and_resize(path, 32)
            except Exception as exc:  # noqa: BLE001 - the point of the test
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
        if image is None:
            assert isinstance(reason, str) and len(reason) > 10, (name, reason)
            outcomes["rejected"] += 1
        else:
            assert image.shape == (32, 32) and reason is None, name
            outcomes["decoded"] += 1
    print(f"\nheader mutations: {dict(outcomes)}")
    assert not failures, "\n".join(failures[:20])
    assert outcomes["rejected"] > 100 and outcomes["decoded"] > 50


def _set(keyword, vr, value):
    return lambda ds: _raw(ds, keyword, vr, value)


# The malformed headers that used to raise out of data_prep.build, each with the reason it gets.
@pytest.mark.parametrize("base, change, reason", [
    ("6154", _set("NumberOfFrames", "IS", b"1A"), "NumberOfFrames '1A'; expected an integer"),
    ("6154", _set("WindowWidth", "DS", b"wide"), "WindowWidth 'wide'; expected a number"),
    ("6154", _set("WindowCenter", "DS", b"mid "), "WindowCenter 'mid'; expected a number"),
    ("6154", _set("WindowWidth", "DS", b""), "WindowWidth missing or empty; expected a number with the other"),
    ("6154", _set("WindowCenter", "DS", b""), "WindowCenter missing or empty; expected a number with the other"),
    ("6154", _set("RescaleSlope", "DS", b""), "RescaleSlope missing or empty; expected a number"),
    ("6154", _set("VOILUTFunction", "CS", b"LOG "), "VOILUTFunction 'LOG'; expected one of LINEAR, LINEAR_EXACT"),
    ("6154", lambda ds: setattr(ds, "VOILUTSequence", Sequence([])), "VOILUTSequence is empty; expected one LUT item"),
    ("6154", lambda ds: delattr(ds, "PixelRepresentation"), "PixelRepresentation missing or empty; expected 0"),
    ("CT_small.dcm", _set("RescaleSlope", "DS", b"1e308 "), "overflow"),
    ("6154", _set("Rows", "US", b"\x01"), "Rows cannot be read"),
])
def test_malformed_header_is_rejected_naming_the_element(base, change, reason, tmp_path):
    ds = quiet_read(real_file(base), stop_before_pixels=False)
    change(ds)
    ds.save_as(tmp_path / "bad.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image, patient, got, shape, facts, _ = decode_and_resize(tmp_path / "bad.dcm", 32)
    assert (image, patient, shape, facts) == (None, None, None, {}) and reason in got, got


def test_a_malformed_file_does_not_stop_a_build(phantom_dir, tmp_path):
    """data_prep.build quarantines the file with its reason and builds the rest."""
    import shutil

    import pandas as pd

    from data_prep.build import build
    from data_prep.settings import BuildSettings
    from tests.conftest import TEST_KEY

    raw = tmp_path / "raw"
    shutil.copytree(phantom_dir, raw)
    first = sorted((raw / "images").glob("*.dcm"))[0]
    ds = quiet_read(first, stop_before_pixels=False)
    _raw(ds, "WindowWidth", "DS", b"wide")
    ds.save_as(first)
    out = build(raw, raw / "labels.csv", tmp_path / "prepared", BuildSettings(size=32, folds=3, seed=0), key=TEST_KEY,
                log=lambda *_: None)
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected["reason"].str.contains("WindowWidth 'wide'; expected a number").sum() == 1
    assert np.load(out / "images.npy", mmap_mode="r").shape[0] > 10
