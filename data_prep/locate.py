"""Find each label-table row's image in the folder the user downloaded, in whatever layout it unpacked.

Public data sets ship in several layouts whose label tables all carry the same paths: NIH's box
layout (`images/`) and Kaggle's (`images_001/images` ... `images_012/images`); CheXpert's `Path`
column keeps `CheXpert-v1.0-small/` where Kaggle's copy drops that folder, and the Stanford AIMI
release spreads patients over `CheXpert-v1.0 batch N (train K)/` folders. So a row is looked up by
the part of its path every layout keeps (NIH and MIMIC: the file name, unique in the set; CheXpert:
patient/study/file), in one walk of the folder, after the paths as listed have been tried.

A hospital's target names each image by its path under `--images` (nested folders, files without a
suffix), by a Referenced File ID of the DICOMDIR there (`IMAGES\\IM0001`: PS3.10 media, read whatever
the case of the names on disk), or by the SOP Instance UID or Accession Number in its header: then
`find_by_header` reads the header of every DICOM file under `--images` once (about 0.4 ms a file on one
core, well under 1% of what decoding the same images costs, so it stays in one process).

A build must not silently lack most of its images: `check_missing` stops when more than 1% of the
listed images are not found, naming the folders searched, the count, examples and the likely cause.
A hospital's paths, folder names and identifiers are never shown (docs/design.md §3.5).
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from data_prep.errors import DataPrepError
from data_prep.labelset import LabelSet
from data_prep.sources import REGISTRY

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
MISSING_TOLERANCE = 0.01  # more than this share of listed images not found: the build stops
# How a kind's images are found (key_parts) and why they are missing (likely_cause) are in its SourceKind; this
# cause is for images named by a header element (a target table's sop_instance_uid or accession_number)
HEADER_CAUSE = ("the images are found by the {element} in their headers: check --images, and that the files are "
                "DICOM files with the DICM preamble (PS3.10); other files are skipped")
DICOMDIR = "DICOMDIR"
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a DICOMDIR, not an image
HEADER_ELEMENTS = {"sop_instance_uid": "SOPInstanceUID", "accession_number": "AccessionNumber"}


@dataclass(frozen=True)
class Located:
    """Where each row's image is (None: not found), and what was searched."""

    paths: list[Path | None]
    root: Path
    folders: list[str]  # folders under root that hold images, as searched
    seconds: float  # time spent indexing the folder (0: every path as listed)

    @property
    def missing(self) -> list[int]:
        return [i for i, path in enumerate(self.paths) if path is None]


def locate(kind: str, root: Path, files: list[str]) -> Located:
    """Each listed relative path's file under `root`: as listed first, else by the path's last `key_parts` (the
    kind's SourceKind) parts anywhere under root (one directory walk)."""
    root = Path(root)
    depth = REGISTRY[kind].key_parts
    sample = [(root / rel).is_file() for rel in files[:100]]
    listed = any(sample) or depth == 0  # none of the first hundred as listed: another layout, skip the stats
    found: list[Path | None] = [root / rel if listed and (root / rel).is_file() else None for rel in files]
    if depth == 0 and not all(found):
        found = _as_file_ids(root, files, found)
    if depth == 0 or all(found):
        return Located(found, root, [root.name or str(root)], 0.0)
    started = time.perf_counter()
    index, folders = index_images(root, depth)
    for i, rel in enumerate(files):
        if found[i] is None:
            parts = _parts(rel)
            found[i] = _best(index.get(parts[-depth:], ()), parts, root)
    return Located(found, root, folders, time.perf_counter() - started)


def _parts(rel: str) -> tuple[str, ...]:
    return PurePosixPath(str(rel).replace("\\", "/")).parts


def _as_file_ids(root: Path, files: list[str], found: list[Path | None]) -> list[Path | None]:
    """The paths not found as listed, read as File IDs: backslash-separated (written on Windows, or a
    DICOMDIR's), else looked up among the DICOMDIR's Referenced File IDs in any case. An unreadable DICOMDIR
    stops the build only where it would stop anyway (too many images not found): then it says why."""
    found = [path or (root.joinpath(*_parts(rel)) if "\\" in rel and root.joinpath(*_parts(rel)).is_file() else None)
             for path, rel in zip(found, files)]
    dicomdir = _dicomdir(root)
    if all(found) or dicomdir is None:
        return found
    try:
        ids = dicomdir_files(dicomdir)
    except DataPrepError:
        if found.count(None) <= MISSING_TOLERANCE * len(files):
            return found
        raise
    return [path or ids.get(tuple(p.upper() for p in _parts(rel))) for path, rel in zip(found, files)]


def _dicomdir(root: Path) -> Path | None:
    """The DICOMDIR at the top of root, its name in any case."""
    exact = root / DICOMDIR
    if exact.is_file():
        return exact
    return next((p for p in root.iterdir() if p.name.upper() == DICOMDIR and p.is_file()), None)


def dicomdir_files(path: Path) -> dict[tuple[str, ...], Path]:
    """{Referenced File ID, its components upper case: the file} for each record of the DICOMDIR at `path`
    that references a file present in its folder. A File ID's file is taken as written, else in any case (a CD
    mounted with lower-case names). pydicom's FileSet leaves such files out (it checks the File ID as
    written), so the DICOMDIR's records are read here; a File ID that leaves the folder is ignored."""
    import pydicom

    root = path.parent
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = pydicom.dcmread(path, stop_before_pixels=True).DirectoryRecordSequence
            ids = [_file_id(record) for record in records]
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; its message may quote a File ID
        raise DataPrepError(f"{path}: not a readable DICOMDIR ({type(exc).__name__}); the label table's paths "
                            "that are not files under --images are looked up in it: repair or remove it") from None
    on_disk: dict[tuple[str, ...], Path] | None = None
    files = {}
    for parts in ids:
        if parts is None:
            continue
        exact = root.joinpath(*parts)
        if exact.is_file():
            files[tuple(p.upper() for p in parts)] = exact
            continue
        if on_disk is None:  # one walk, only when a name differs in case
            on_disk = {tuple(p.upper() for p in rel): root.joinpath(*rel) for rel in _files(root)}
        key = tuple(p.upper() for p in parts)
        if key in on_disk:
            files[key] = on_disk[key]
    return files


def _file_id(record) -> tuple[str, ...] | None:
    """A directory record's Referenced File ID (CS, 1-8 components) as path components, or None."""
    value = record.get("ReferencedFileID")
    parts = [value] if isinstance(value, str) else list(value or [])
    parts = [str(p).strip() for p in parts]
    if not parts or any(p in ("", ".", "..") or "/" in p or "\\" in p for p in parts):
        return None
    return tuple(parts)


def _files(root: Path):
    """The relative parts of every file under root, in a stable order."""
    prefix = len(str(root)) + 1
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        here = tuple(folder[prefix:].split(os.sep)) if len(folder) >= prefix else ()
        for name in sorted(names):
            yield here + (name,)


def locate_label_set(kind: str, root: Path, label_set: LabelSet) -> tuple[LabelSet, Located]:
    """Where each row's image is. Rows named by path: `locate`. Rows named by SOP Instance UID or Accession
    Number (a target table's `images_named_by`): `find_by_header`, and a row becomes one row per image found
    (a study's every image), whose `file` is the image's SOP Instance UID (its path where it has none); a row
    whose image is not found stays one row, not found."""
    files = [str(f) for f in label_set.frame["file"]]
    named_by = label_set.stats.get("images_named_by", "file")
    if named_by == "file":
        return label_set, locate(kind, root, files)
    started = time.perf_counter()
    images, folders = find_by_header(root, named_by, files)
    rows, keys, paths = [], [], []
    for i, found in enumerate(images):
        for key, path in found or [(files[i], None)]:
            rows.append(i)
            keys.append(key)
            paths.append(path)
    frame = label_set.frame.iloc[rows].reset_index(drop=True)
    frame["file"] = keys
    located = Located(paths, Path(root), folders, time.perf_counter() - started)
    return LabelSet(frame, label_set.names, label_set.stats), located


def find_by_header(root: Path, named_by: str, values: list[str]) -> tuple[list[list[tuple[str, Path]]], list[str]]:
    """For each value (a SOP Instance UID or an Accession Number, `named_by` one of HEADER_ELEMENTS), the
    (SOP Instance UID, file) of each DICOM file under root whose header holds it, in path order, and the
    folders holding DICOM files. Every file's header is read once (stop_before_pixels, two elements); files
    without the DICM preamble (PS3.10), DICOMDIRs and unreadable files are skipped. A SOP Instance found in
    several files (a copy) counts once: its first file."""
    root = Path(root)
    paths = [root.joinpath(*rel) for rel in _files(root)]
    headers = [header_ids(p) for p in paths]
    wanted = {value: i for i, value in enumerate(values)}
    found: list[list[tuple[str, Path]]] = [[] for _ in values]
    seen, holding = set(), {}
    prefix = len(str(root)) + 1
    for path, ids in zip(paths, headers):
        if ids is None:
            continue
        uid, accession = ids
        holding.setdefault(str(path.parent)[prefix:].replace(os.sep, "/") or ".", None)
        key = uid or str(path.relative_to(root))
        i = wanted.get(uid if named_by == "sop_instance_uid" else accession)
        if i is None or key in seen:
            continue
        seen.add(key)
        found[i].append((key, path))
    return found, list(holding)


def header_ids(path: Path) -> tuple[str, str] | None:
    """(SOP Instance UID, Accession Number; "" where absent) of a DICOM file, or None where it is not one: no
    DICM preamble, a DICOMDIR, or unreadable."""
    import pydicom

    try:
        with open(path, "rb") as f:
            if f.read(132)[128:] != b"DICM":
                return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_ELEMENTS.values()))
            meta = ds.file_meta
            if _text(meta.get("MediaStorageSOPClassUID")) == MEDIA_DIRECTORY:
                return None
            uid = _text(ds.get("SOPInstanceUID")) or _text(meta.get("MediaStorageSOPInstanceUID"))
            return uid, _text(ds.get("AccessionNumber"))
    except Exception:  # noqa: BLE001 - unreadable: skipped like any other non-DICOM file
        return None


def _text(value) -> str:
    return value.strip(" \0") if isinstance(value, str) else ""


def index_images(root: Path, depth: int) -> tuple[dict[tuple[str, ...], list[tuple[str, ...]]], list[str]]:
    """{last `depth` parts: [relative parts of each image file with them]} and the folders holding images."""
    index: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    folders = []
    prefix = len(str(root)) + 1
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        images = [n for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            continue
        here = tuple(folder[prefix:].split(os.sep)) if len(folder) >= prefix else ()
        folders.append("/".join(here) or ".")
        for name in images:
            parts = here + (name,)
            index.setdefault(parts[-depth:], []).append(parts)
    return index, folders


def _best(candidates, parts: tuple[str, ...], root: Path) -> Path | None:
    """The candidate that shares the longest tail with the listed path (two copies of a set under one root)."""
    if not candidates:
        return None
    shared = (lambda c: next((k for k in range(min(len(c), len(parts))) if c[-1 - k] != parts[-1 - k]),
                             min(len(c), len(parts))))
    return root.joinpath(*max(candidates, key=shared))


def check_missing(kind: str, located: Located, files: list[str], table: Path, allow: bool,
                  rows: list[int] | None = None, named_by: str = "file") -> None:
    """Stop (DataPrepError) when more than MISSING_TOLERANCE of the listed images are not found, unless allowed.
    `rows`: each file's row in the table (default: its position + 2); `named_by`: the column naming them."""
    missing = located.missing
    if not missing or allow or len(missing) <= MISSING_TOLERANCE * len(files):
        return
    rows = rows or [i + 2 for i in range(len(files))]
    if named_by == "file":
        searched, cause = _searched(located.folders), REGISTRY[kind].likely_cause
    else:  # folder names under a hospital's tree can carry patient names or IDs: counted, not shown
        searched = f"DICOM files found in {len(located.folders)} folder(s)"
        cause = HEADER_CAUSE.format(element=HEADER_ELEMENTS[named_by])
    raise DataPrepError(f"{len(missing)} of {len(files)} images listed in {table} were not found under "
                        f"{located.root} ({searched}); {_examples(kind, missing, files, rows)}. Likely "
                        f"cause: {cause}. To build from the images found, pass --allow-missing "
                        f"(data.prepare.NAME.allow_missing = true in a spec)")


def _searched(folders: list[str]) -> str:
    if not folders:
        return "no image files in any folder there"
    shown = ", ".join(folders[:6]) + (f" and {len(folders) - 6} more" if len(folders) > 6 else "")
    return f"image files found in {len(folders)} folder(s): {shown}"


def _examples(kind: str, missing: list[int], files: list[str], rows: list[int]) -> str:
    """Three missing rows; a public set's paths are shown, a hospital's are not (file names can carry
    patient identifiers, docs/design.md §3.5; nor are UIDs or accession numbers shown): a kind's SourceKind
    says which it is."""
    first = missing[:3]
    if not REGISTRY[kind].public_paths:
        return "not found: the images of label-table rows " + ", ".join(str(rows[i]) for i in first)
    return "for example " + ", ".join(f"{files[i]} (row {rows[i]})" for i in first)
