"""The header elements a DICOM decode depends on, each read and checked once.

pydicom reads a malformed value lazily and hands back whatever it could make of it (a string
for an IS "1A", bytes for a wrong VR, nothing for an empty value) or raises only when the
element is touched. Every element the decoder uses is read here, checked against what the
standard allows, and turned into a plain Python value; any problem becomes an ImageRejected
that names the element, what it held and what was expected. Nothing after `read_header`
touches the dataset's grey-pipeline elements again.

`film_facts` reads the few patient facts a prepared data set may carry (sex, age in years, view)
the other way round: a malformed value is left out, never a rejection, and the dates an age is
computed from stay inside it.
"""
from __future__ import annotations

import datetime
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID

from data_prep.errors import ImageRejected

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
MAX_SIDE = 16384
# Every transfer syntax pydicom has a pixel handler for: native, deflated, RLE, JPEG (baseline,
# 12-bit extended, lossless), JPEG-LS, JPEG 2000 and HTJ2K.
SUPPORTED_SYNTAXES = tuple(UID(f"1.2.840.10008.1.2{tail}") for tail in (
    "", ".1", ".1.99", ".2", ".5", ".4.50", ".4.51", ".4.57", ".4.70", ".4.80", ".4.81", ".4.90", ".4.91",
    ".4.201", ".4.202", ".4.203"))
# The syntaxes whose codestream may hold lossy-compressed values (PS3.5 8.2, PS3.6 A): JPEG baseline and
# extended, JPEG-LS near-lossless, JPEG 2000 and HTJ2K that allow irreversible coding. A .91 or .203 file
# may hold a lossless codestream too, and a reversible JPEG 2000 codestream truncated to a rate is lossy,
# so the syntax, not the codestream, decides. The other syntaxes are lossless.
LOSSY_SYNTAXES = tuple(UID(f"1.2.840.10008.1.2.4.{tail}") for tail in ("50", "51", "81", "91", "203"))


@dataclass(frozen=True)
class Lut:
    """One Modality or VOI LUT: `table[i]` is the output for input `first + i`; inputs below
    `first` take the first entry, inputs past the end the last. Output range 0 .. 2**bits - 1."""
    first: int
    table: np.ndarray
    bits: int


@dataclass(frozen=True)
class Header:
    syntax: UID
    photometric: str
    rows: int
    cols: int
    samples: int
    allocated: int
    stored: int
    signed: bool
    rescale: tuple[float, float]  # slope, intercept; (1, 0) when the file has none
    modality_lut: Lut | None
    voi_lut: Lut | None
    window: tuple[float, float] | None  # first window: centre, width
    voi_function: str
    inverted: bool  # low value = white: MONOCHROME1 or Presentation LUT Shape INVERSE (once)
    lossy: bool = False  # a lossy syntax, or LossyImageCompression "01": the values passed through a lossy codec

    @property
    def stored_range(self) -> tuple[int, int]:
        return stored_range(self.stored, self.signed)


def stored_range(bits: int, signed: bool) -> tuple[int, int]:
    """The values `bits` bits hold, two's complement when signed."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def read_header(ds: Dataset) -> Header:
    """The checked header of one image, or ImageRejected naming the element at fault."""
    if "PixelData" not in ds:
        raise ImageRejected("no PixelData element")
    syntax = _transfer_syntax(ds)
    photometric = _code(ds, "PhotometricInterpretation", MONOCHROME + COLOUR)
    rows = _int(ds, "Rows", range(1, MAX_SIDE + 1))
    cols = _int(ds, "Columns", range(1, MAX_SIDE + 1))
    _int(ds, "NumberOfFrames", (1,), default=1, expected="1 (a single frame)")
    allocated = _int(ds, "BitsAllocated", (8, 16))
    stored = _int(ds, "BitsStored", range(1, allocated + 1))
    _int(ds, "HighBit", (stored - 1,), default=stored - 1, expected=f"BitsStored - 1 = {stored - 1}")
    signed = _int(ds, "PixelRepresentation", (0, 1), expected="0 (unsigned) or 1 (signed)") == 1
    colour = photometric in COLOUR
    samples = _int(ds, "SamplesPerPixel", (3,) if colour else (1,), default=1,
                   expected=f"{3 if colour else 1} for {photometric}")
    if colour:
        _int(ds, "PlanarConfiguration", (0, 1), default=0)
    modality_lut = _lut(ds, "ModalityLUTSequence", syntax, signed_input=signed)
    rescale = (1.0, 0.0) if modality_lut else _rescale(ds)
    low, high = stored_range(stored, signed)
    negative_output = modality_lut is None and min(low * rescale[0], high * rescale[0]) + rescale[1] < 0
    voi_lut = _lut(ds, "VOILUTSequence", syntax, signed_input=negative_output)
    voi_function = _code(ds, "VOILUTFunction", VOI_FUNCTIONS, default="LINEAR")
    window = None if voi_lut else _window(ds, voi_function)
    inverse = _code(ds, "PresentationLUTShape", ("IDENTITY", "INVERSE"), default="IDENTITY") == "INVERSE"
    # a lossy flag only widens the range check (`dicom.fit_range`), so a malformed one is no rejection
    lossy = syntax in LOSSY_SYNTAXES or _text(ds, "LossyImageCompression") == "01"
    return Header(syntax, photometric, rows, cols, samples, allocated, stored, signed, rescale, modality_lut,
                  voi_lut, window, voi_function, inverted=photometric == "MONOCHROME1" or inverse, lossy=lossy)


def patient_id(ds: Dataset) -> str | None:
    """The PatientID when it is one text value; else None, never a rejection and never quoted (it is an
    identifier): the label table's patient column is then needed, and the builder says so."""
    try:
        value = ds["PatientID"].value if "PatientID" in ds else None
    except Exception:  # noqa: BLE001 - an unreadable ID is no ID; its text must not reach a message
        return None
    if not isinstance(value, str):  # several values (MRN1\\MRN2), bytes, ...: not one ID
        return None
    return value.strip() or None


AGE_UNITS = {"D": 365.2425, "W": 365.2425 / 7, "M": 12, "Y": 1}  # PS3.5 AS: nnnD, nnnW, nnnM or nnnY
OLDEST_PLAUSIBLE = 130  # an older age is a placeholder birth date or a typo, not an age
DATE_KEYWORDS = ("StudyDate", "AcquisitionDate", "ContentDate")  # the exam's date, in order of preference
VIEW_CODE = re.compile(r"[A-Z][A-Z _]{0,15}")  # a CS of letters: PA, AP, LL, LATERAL (no digits, so no IDs)


def film_facts(ds: Dataset) -> dict[str, str | int]:
    """What a prepared data set may carry from the header, for subgroup analysis: `sex` (PatientSex as
    written, up to 16 characters), `age` (whole years at the exam, from PatientAge or else from PatientBirthDate
    and the exam's date, computed here so that neither date leaves this function) and `view` (ViewPosition).
    An absent or malformed value is left out; this never raises."""
    with warnings.catch_warnings():  # pydicom's warnings about a malformed value can quote it
        warnings.simplefilter("ignore")
        return _film_facts(ds)


def _film_facts(ds: Dataset) -> dict[str, str | int]:
    facts: dict[str, str | int] = {}
    sex = _text(ds, "PatientSex")
    if sex:
        facts["sex"] = sex[:16]
    age = _age(_text(ds, "PatientAge"))
    if age is None:
        birth = _date(_text(ds, "PatientBirthDate"))
        exam = next((d for d in (_date(_text(ds, k)) for k in DATE_KEYWORDS) if d is not None), None)
        if birth is not None and exam is not None:
            age = exam.year - birth.year - ((exam.month, exam.day) < (birth.month, birth.day))
    if age is not None and 0 <= age <= OLDEST_PLAUSIBLE:
        facts["age"] = age
    view = (_text(ds, "ViewPosition") or "").upper()
    if VIEW_CODE.fullmatch(view):
        facts["view"] = view
    return facts


def _text(ds: Dataset, keyword: str) -> str | None:
    """One stripped text value, or None: absent, empty, several values, another type or unreadable."""
    try:
        value = _value(ds, keyword)
    except ImageRejected:
        return None
    return value.strip(" \0") or None if isinstance(value, str) else None


def _age(text: str | None) -> int | None:
    """Whole years from a DICOM AS value ("045Y", "006M", "003W", "010D"); None when malformed."""
    if text is None or len(text) != 4 or not text[:3].isdigit() or text[3] not in AGE_UNITS:
        return None
    return int(int(text[:3]) / AGE_UNITS[text[3]])


def _date(text: str | None) -> datetime.date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None when malformed."""
    if text is None or len(text) != 8 or not text.isdigit():
        return None
    try:
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _value(ds: Dataset, keyword: str):
    """The element's value; None when it is absent or empty. Reading it may raise (wrong VR,
    wrong length): that is a rejection naming the element."""
    try:
        if keyword not in ds:
            return None
        value = ds[keyword].value
    except Exception as exc:  # pydicom converts raw values lazily and raises many types
        raise ImageRejected(f"{keyword} cannot be read ({type(exc).__name__}: {exc})") from exc
    if value is None or (isinstance(value, str) and not value.strip(" \0")) or value == b"":
        return None
    return value


def _shown(value) -> str:
    text = repr(value if isinstance(value, (str, bytes, int, float)) else str(value))
    return text if len(text) <= 40 else text[:37] + "..."


def _number(keyword: str, value, *, integer: bool, expected: str):
    """One number from an element value (IS/DS strings, US/SS/FL ints and floats)."""
    if isinstance(value, (MultiValue, list, tuple, bytes, Sequence, Dataset)) or isinstance(value, bool):
        raise ImageRejected(f"{keyword} {_shown(value)}; expected {expected}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ImageRejected(f"{keyword} {_shown(value)}; expected {expected}") from None
    if not math.isfinite(number) or (integer and number != int(number)):
        raise ImageRejected(f"{keyword} {_shown(value)}; expected {expected}")
    return int(number) if integer else number


def _int(ds: Dataset, keyword: str, allowed, *, default: int | None = None, expected: str = "") -> int:
    expected = expected or (f"{allowed.start}..{allowed.stop - 1}" if isinstance(allowed, range)
                            else " or ".join(map(str, allowed)))
    value = _value(ds, keyword)
    if value is None:
        if default is None:
            raise ImageRejected(f"{keyword} missing or empty; expected {expected}")
        return default
    number = _number(keyword, value, integer=True, expected=f"an integer, {expected}")
    if number not in allowed:
        raise ImageRejected(f"{keyword} {_shown(value) if isinstance(value, str) else number}; expected {expected}")
    return number


def _code(ds: Dataset, keyword: str, allowed: tuple[str, ...], *, default: str | None = None) -> str:
    value = _value(ds, keyword)
    if value is None:
        if default is None:
            raise ImageRejected(f"{keyword} missing or empty; expected one of {', '.join(allowed)}")
        return default
    code = value.strip().upper() if isinstance(value, str) else value
    if code not in allowed:
        raise ImageRejected(f"{keyword} {_shown(value)}; expected one of {', '.join(allowed)}")
    return code


def _first_number(ds: Dataset, keyword: str, expected: str) -> float | None:
    """The first value of a possibly multi-valued number (Window Center/Width are VM 1-n)."""
    value = _value(ds, keyword)
    if isinstance(value, (MultiValue, list)):
        value = value[0] if len(value) else None
    return None if value is None else _number(keyword, value, integer=False, expected=expected)


def _rescale(ds: Dataset) -> tuple[float, float]:
    present = [k for k in ("RescaleSlope", "RescaleIntercept") if k in ds]
    if not present:
        return 1.0, 0.0
    slope = _first_number(ds, "RescaleSlope", "a non-zero number")
    intercept = _first_number(ds, "RescaleIntercept", "a number")
    if slope is None or intercept is None:
        missing = "RescaleSlope" if slope is None else "RescaleIntercept"
        raise ImageRejected(f"{missing} missing or empty; expected a number with {' and '.join(present)}")
    if slope == 0:
        raise ImageRejected("RescaleSlope 0; expected a non-zero number")
    return slope, intercept


def _window(ds: Dataset, function: str) -> tuple[float, float] | None:
    """The first window, checked for the VOI LUT Function (PS3.3 C.11.2.1.2)."""
    centre = _first_number(ds, "WindowCenter", "a number")
    width = _first_number(ds, "WindowWidth", "a number")
    if centre is None and width is None:
        return None
    if centre is None or width is None:
        raise ImageRejected(f"{'WindowCenter' if centre is None else 'WindowWidth'} missing or empty; "
                            "expected a number with the other of WindowCenter/WindowWidth")
    if width < 1 if function == "LINEAR" else width <= 0:
        raise ImageRejected(f"WindowWidth {width:g}; a {function} window must be "
                            f"{'at least 1' if function == 'LINEAR' else 'more than 0'} wide")
    return centre, width


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    value = _value(meta, "TransferSyntaxUID") if meta is not None else None
    if value is None:
        raise ImageRejected("no TransferSyntaxUID in the file meta information")
    syntax = UID(str(value).strip())
    if syntax not in SUPPORTED_SYNTAXES:
        raise ImageRejected(f"TransferSyntaxUID {str(syntax)!r} ({syntax.name}); expected one with a pixel decoder: "
                            "native, deflated, RLE, JPEG, JPEG-LS, JPEG 2000 or HTJ2K")
    return syntax


def _lut(ds: Dataset, keyword: str, syntax: UID, *, signed_input: bool) -> Lut | None:
    """The first item of a Modality or VOI LUT Sequence (PS3.3 C.11.1.1.1, C.11.2.1.1.1)."""
    if keyword not in ds:
        return None
    items = _value(ds, keyword)
    if not isinstance(items, Sequence) or not len(items):
        raise ImageRejected(f"{keyword} {'is empty' if not items else 'is not a sequence'}; expected one LUT item")
    item = items[0]
    name = f"{keyword} LUTDescriptor"
    descriptor = _value(item, "LUTDescriptor")
    if not isinstance(descriptor, (MultiValue, list)) or len(descriptor) != 3:
        raise ImageRejected(f"{name} {_shown(descriptor)}; expected 3 numbers (entries, first input, bits)")
    count, first, bits = (_number(name, v, integer=True, expected="3 integers") for v in descriptor)
    count = count or 65536  # PS3.3: 0 means 2**16 entries
    if signed_input and first >= 2**15:
        first -= 2**16  # a US-encoded descriptor of a signed input range
    if not (1 <= count <= 65536 and 8 <= bits <= 16):
        raise ImageRejected(f"{name} {list(descriptor)}; expected 1..65536 entries of 8..16 bits")
    table = _lut_entries(item, keyword, count, bits, syntax)
    return Lut(first=first, table=table, bits=bits)


def _lut_entries(item: Dataset, keyword: str, count: int, bits: int, syntax: UID) -> np.ndarray:
    """LUT Data as numbers: 8-bit entries come one per byte or one per 16-bit word, wider ones
    one per 16-bit word (PS3.3 C.11.1.1.1); every entry must fit the descriptor's bits."""
    data = _value(item, "LUTData")
    if isinstance(data, bytes):
        words = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2" if syntax.is_little_endian else ">u2")
        table = np.frombuffer(data, np.uint8) if bits == 8 and len(data) in (count, count + 1) else words
    elif isinstance(data, (int, MultiValue, list)):
        table = np.array([data] if isinstance(data, int) else list(data))
        if table.dtype.kind not in "iu":
            raise ImageRejected(f"{keyword} LUTData {_shown(data)}; expected integers")
    else:
        raise ImageRejected(f"{keyword} LUTData {_shown(data)}; expected {count} entries")
    if len(table) not in (count, count + 1):  # + 1: an odd count of bytes padded to even
        raise ImageRejected(f"{keyword} LUTData holds {len(table)} entries; its LUTDescriptor says {count}")
    table = table[:count].astype(np.float64)
    if table.min() < 0 or table.max() > 2**bits - 1:
        raise ImageRejected(f"{keyword} LUTData entries {table.min():g}..{table.max():g}; "
                            f"its LUTDescriptor says {bits} bits (0..{2**bits - 1})")
    return table
