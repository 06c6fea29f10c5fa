"""Find each label-table row's image in the folder the user downloaded, in whatever layout it unpacked.

Public data sets ship in several layouts whose label tables all carry the same paths: NIH's box
layout (`images/`) and Kaggle's (`images_001/images` ... `images_012/images`); CheXpert's `Path`
column keeps `CheXpert-v1.0-small/` where Kaggle's copy drops that folder, and the Stanford AIMI
release spreads patients over `CheXpert-v1.0 batch N (train K)/` folders. So a row is looked up by
the part of its path every layout keeps (NIH and MIMIC: the file name, unique in the set; CheXpert:
patient/study/file), in one walk of the folder, after the paths as listed have been tried.

A build must not silently lack most of its images: `check_missing` stops when more than 1% of the
listed images are not found, naming the folders searched, the count, examples and the likely cause.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from data_prep.errors import DataPrepError

# How many trailing path parts identify an image in every layout of the kind (0: the paths as listed only)
KEY_PARTS = {"target": 0, "nih": 1, "chexpert": 3, "mimic": 1}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
MISSING_TOLERANCE = 0.01  # more than this share of listed images not found: the build stops
LIKELY_CAUSE = {
    "nih": "NIH ships its images in 12 archives (images_001 ... images_012): extract them all under one folder",
    "chexpert": "CheXpert's images come in several archives or batch folders: extract them all under one folder",
    "mimic": "MIMIC-CXR-JPG's files/p10 ... files/p19 folders: download them all under one folder",
    "target": "the label table's paths are relative to --images: check that folder and that every archive is "
              "extracted",
}


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
    """Each listed relative path's file under `root`: as listed first, else by the path's last KEY_PARTS[kind]
    parts anywhere under root (one directory walk)."""
    root = Path(root)
    depth = KEY_PARTS[kind]
    sample = [(root / rel).is_file() for rel in files[:100]]
    listed = any(sample) or depth == 0  # none of the first hundred as listed: another layout, skip the stats
    found: list[Path | None] = [root / rel if listed and (root / rel).is_file() else None for rel in files]
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


def check_missing(kind: str, located: Located, files: list[str], table: Path, allow: bool) -> None:
    """Stop (DataPrepError) when more than MISSING_TOLERANCE of the listed images are not found, unless allowed."""
    missing = located.missing
    if not missing or allow or len(missing) <= MISSING_TOLERANCE * len(files):
        return
    raise DataPrepError(f"{len(missing)} of {len(files)} images listed in {table} were not found under "
                        f"{located.root} ({_searched(located.folders)}); {_examples(kind, missing, files)}. Likely "
                        f"cause: {LIKELY_CAUSE[kind]}. To build from the images found, pass --allow-missing "
                        f"(data.prepare.NAME.allow_missing = true in a spec)")


def _searched(folders: list[str]) -> str:
    if not folders:
        return "no image files in any folder there"
    shown = ", ".join(folders[:6]) + (f" and {len(folders) - 6} more" if len(folders) > 6 else "")
    return f"image files found in {len(folders)} folder(s): {shown}"


def _examples(kind: str, missing: list[int], files: list[str]) -> str:
    """Three missing rows; a public set's paths are shown, a hospital's are not (file names can carry
    patient identifiers, DESIGN.md decision 5)."""
    rows = missing[:3]
    if kind == "target":
        return "not found: the images of label-table rows " + ", ".join(str(i + 2) for i in rows)
    return "for example " + ", ".join(f"{files[i]} (row {i + 2})" for i in rows)
