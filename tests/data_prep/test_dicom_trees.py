"""Hospital DICOM trees as PACS exports and media leave them, built into a target data set: nested folders and
files without a suffix named by path; a DICOMDIR's Referenced File IDs (pydicom's test media, and dcmtk's
dcmmkdir over real files, also read back from a CD mounted with lower-case names); images named by SOP
Instance UID or by Accession Number (every image of the study) found by reading the headers once; the
header's sex, age and view in labels.csv. The inputs are real files (pydicom's test files and
pydicom-data's, tests/dicom_corpus.py), their headers changed by pydicom where a case needs it, and no
identifier of theirs reaches an output."""
from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pydicom.data
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.fileset import FileSet
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from data_prep import locate as locating
from data_prep.build import build, main as build_main
from data_prep.settings import BuildSettings
from data_prep.decode import decode_and_resize
from data_prep.dicom_header import film_facts
from data_prep.errors import DataPrepError
from data_prep.locate import dicomdir_files, find_by_header
from data_prep.pseudonym import Pseudonymizer
from data_prep.sources.target import TargetOptions, read_target_labels
from tests.conftest import TEST_KEY
from tests.dicom_corpus import dcmtk_dir, quiet_read, real_file

MEDIA = Path(pydicom.data.get_testdata_file("DICOMDIR")).parent  # pydicom's test media: DICOMDIR + 3 patients
PATIENT_FOLDERS = ["77654033", "98892001", "98892003"]
# Real films placed deeper, as a PACS export names them: patient / study date / series / instance, no suffix
FILMS = {"RG1_UNCR.dcm": "export/9RG1/20040826/SE1/IM1", "RG3_UNCR.dcm": "export/11RG3/20040826/SE1/IM1",
         "CT_small.dcm": "export/1CT1/20040119/SE2/IM7", "MR_small.dcm": "export/4MR1/20040826/SE3/IM1"}
SMALL = BuildSettings(size=16, folds=2, near_duplicates="off", workers=1, source=TargetOptions(mapping="none"))
PSEUDONYM = Pseudonymizer(TEST_KEY)


def _build(root: Path, table: Path, out: Path, params: BuildSettings = SMALL, logs: list | None = None) -> Path:
    return build(root, table, out, params, key=TEST_KEY, log=(logs.append if logs is not None else lambda *_: None))


def _tree(root: Path) -> list[str]:
    """pydicom's test media as they are (DICOMDIR at the top, patient/series/instance without suffixes, a
    README, another file-set with its own DICOMDIR in TINY_ALPHA/), real films nested deeper, and what else
    such a folder holds: a text file, a JPEG preview, a file that merely ends in .dcm, a copy of a film under
    another name. Returns the paths of the images the tests list (TINY_ALPHA's and the copy left out)."""
    shutil.copytree(MEDIA, root, ignore=shutil.ignore_patterns("DICOMDIR-*"))
    images = sorted(str(p.relative_to(root)) for folder in PATIENT_FOLDERS for p in (root / folder).rglob("*")
                    if p.is_file())
    for name, rel in FILMS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real_file(name), root / rel)
        images.append(rel)
    (root / "export" / "README.txt").write_text("exported from PACS\n")
    (root / "export" / "9RG1" / "preview.jpg").write_bytes(b"\xff\xd8\xff\xe0 not much of a JPEG")
    (root / "export" / "notes.dcm").write_bytes(b"not DICOM at all")
    shutil.copy(root / FILMS["CT_small.dcm"], root / "export" / "1CT1" / "20040119" / "SE2" / "IM7_copy")
    return images


def _table(path: Path, column: str, values: list[str], **extra) -> Path:
    labels = {"effusion": [i % 2 for i in range(len(values))], "nodule": [(i // 2) % 2 for i in range(len(values))]}
    pd.DataFrame({column: values, **labels, **extra}).to_csv(path, index=False)
    return path


def _labels(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)


def _counts(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["counts"]


def _uid(path: Path) -> str:
    return str(quiet_read(path).SOPInstanceUID)


# ---------------------------------------------------------------- paths as listed


def test_paths_as_listed_find_nested_files_without_a_suffix(tmp_path):
    root = tmp_path / "pacs"
    images = _tree(root)
    assert all(Path(rel).suffix == "" for rel in images) and len(images) == 35
    out = _build(root, _table(tmp_path / "labels.csv", "file", images), tmp_path / "prep")
    counts = _counts(out)
    assert counts["missing"] == 0 and counts["rejected"] == 0
    assert counts["images"] + counts["duplicates"] == len(images)
    keys = [PSEUDONYM("image", rel) for rel in images]
    assert set(_labels(out)["image_key"]) | set(pd.read_csv(out / "duplicates.csv")["image_key"]) == set(keys)


def test_backslash_paths_written_on_windows_are_found(tmp_path):
    root = tmp_path / "pacs"
    images = _tree(root)
    shutil.move(root / "DICOMDIR", tmp_path / "elsewhere")  # found without it
    out = _build(root, _table(tmp_path / "labels.csv", "file", [rel.replace("/", "\\") for rel in images]),
                 tmp_path / "prep")
    assert _counts(out)["missing"] == 0 and _counts(out)["rejected"] == 0


# ---------------------------------------------------------------- DICOMDIR


def test_our_reading_of_pydicoms_test_dicomdir_agrees_with_its_fileset(tmp_path):
    root = tmp_path / "media"
    _tree(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fileset = FileSet(root / "DICOMDIR")
    theirs = {tuple(str(c).upper() for c in instance["ReferencedFileID"].value): Path(instance.path)
              for instance in fileset}
    ours = {ids: path.resolve() for ids, path in dicomdir_files(root / "DICOMDIR").items()}
    assert len(theirs) == 31 and ours == {ids: path.resolve() for ids, path in theirs.items()}


def _dcmmkdir_media(root: Path) -> list[str]:
    """Real films laid out as a CD burner names them (8-character upper-case components, no suffix) and dcmtk's
    dcmmkdir's DICOMDIR over them; returns the File IDs, backslash-separated as a DICOMDIR writes them."""
    ids = []
    sources = [real_file(n) for n in ("RG3_UNCR.dcm", "CT_small.dcm", "MR_small.dcm")]
    sources += sorted(p for p in (MEDIA / "77654033").rglob("*") if p.is_file())
    for k, source in enumerate(sources):
        parts = ("IMAGES", f"P{k // 4:07d}", f"IM{k:06d}")
        (root / parts[0] / parts[1]).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root.joinpath(*parts))
        ids.append("\\".join(parts))
    done = subprocess.run([str(dcmtk_dir() / "dcmmkdir"), "--quiet", "+r", "+id", ".", "--invent"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode == 0 and (root / "DICOMDIR").is_file(), done.stderr
    return ids


@pytest.mark.parametrize("mounted", ["as written", "lower case"])
def test_a_dcmmkdir_dicomdirs_file_ids_name_the_images(tmp_path, mounted):
    """dcmtk writes the DICOMDIR (an independent implementation); a CD mounted on Linux often shows every name,
    the DICOMDIR's own included, in lower case, where pydicom's FileSet finds none of its files."""
    root = tmp_path / "cd"
    ids = _dcmmkdir_media(root)
    if mounted == "lower case":
        for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
            path.rename(path.with_name(path.name.lower()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert len(FileSet(root / "dicomdir")) == 0
    found = dicomdir_files(next(root.glob("[Dd][Ii][Cc][Oo][Mm][Dd][Ii][Rr]")))
    assert sorted(found) == sorted(tuple(i.split("\\")) for i in ids) and all(p.is_file() for p in found.values())
    out = _build(root, _table(tmp_path / "labels.csv", "file", ids), tmp_path / "prep")
    counts = _counts(out)
    assert counts["missing"] == 0 and counts["rejected"] == 0 and counts["images"] + counts["duplicates"] == len(ids)
    assert _labels(out)["image_key"].tolist()[:3] == [PSEUDONYM("image", i) for i in ids[:3]]


def test_an_unreadable_dicomdir_that_is_needed_is_named(tmp_path):
    root = tmp_path / "cd"
    ids = _dcmmkdir_media(root)
    (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    with pytest.raises(DataPrepError, match=r"DICOMDIR: not a readable DICOMDIR .*repair or remove it"):
        _build(root, _table(tmp_path / "labels.csv", "file", [i.lower() for i in ids]), tmp_path / "prep")
    listed = [f"IMAGES/{k:03d}" for k in range(150)]  # one not there: within the tolerance, the DICOMDIR not needed
    for rel in listed[1:]:
        (root / rel).touch()
    assert locating.locate("target", root, listed).missing == [0]


# ---------------------------------------------------------------- SOP Instance UIDs and accession numbers


def test_images_named_by_sop_instance_uid_are_found_by_their_headers(tmp_path):
    root = tmp_path / "pacs"
    images = _tree(root)
    uids = [_uid(root / rel) for rel in images]
    order = np.random.default_rng(0).permutation(len(uids))  # the table's order, not the tree's
    table = _table(tmp_path / "labels.csv", "sop_instance_uid", [uids[k] for k in order])
    logs = []
    out = _build(root, table, tmp_path / "prep", logs=logs)
    counts = _counts(out)
    assert counts["missing"] == 0 and counts["rejected"] == 0 and counts["images"] + counts["duplicates"] == 35
    labels = _labels(out)
    expected = [PSEUDONYM("image", uids[k]) for k in order]
    duplicates = pd.read_csv(out / "duplicates.csv")["image_key"].tolist()
    assert labels["image_key"].tolist() == [key for key in expected if key not in duplicates]
    assert json.loads((out / "manifest.json").read_text())["label_stats"]["images_named_by"] == "sop_instance_uid"
    assert any("35 of 35 listed images found" in line for line in logs)


def test_an_accession_number_gives_every_image_of_its_study_the_rows_labels(tmp_path):
    """pydicom's test media: accession 134 holds 4 MR images, 428 holds 2, in two series each; pydicom-data's
    RG3 is alone in its study."""
    root = tmp_path / "pacs"
    images = _tree(root)
    headers = {rel: quiet_read(root / rel) for rel in images}
    study = {acc: [rel for rel in images if headers[rel].get("AccessionNumber") == acc]
             for acc in ("134", "428", "FUJI95706")}
    assert [len(study["134"]), len(study["428"]), len(study["FUJI95706"])] == [4, 2, 1]
    table = tmp_path / "labels.csv"
    pd.DataFrame({"accession_number": ["428", "134", "FUJI95706"], "effusion": [1, 0, 1], "nodule": ["", 1, 0]}
                 ).to_csv(table, index=False)
    out = _build(root, table, tmp_path / "prep")
    labels = _labels(out)
    in_order = study["428"] + study["134"] + study["FUJI95706"]
    assert labels["image_key"].tolist() == [PSEUDONYM("image", _uid(root / rel)) for rel in in_order]
    assert labels["effusion"].tolist() == ["1"] * 2 + ["0"] * 4 + ["1"]
    assert labels["nodule"].tolist() == [""] * 2 + ["1"] * 4 + ["0"]
    by_uid = _table(tmp_path / "uids.csv", "sop_instance_uid", [_uid(root / rel) for rel in in_order])
    assert _labels(_build(root, by_uid, tmp_path / "prep"))["image_key"].tolist() == labels["image_key"].tolist()


def test_a_study_not_found_stops_the_build_naming_its_row_not_its_number(tmp_path, capsys):
    root = tmp_path / "pacs"
    _tree(root)
    table = tmp_path / "labels.csv"
    pd.DataFrame({"accession_number": ["428", "ACC-NOT-THERE-7", "FUJI95706"], "effusion": [1, 0, 1]}
                 ).to_csv(table, index=False)
    code = build_main(["target", "--images", str(root), "--labels", str(table), "--out", str(tmp_path / "prep"),
                       "--size", "16", "--folds", "2", "--workers", "1", "--mapping", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "1 of 4 images listed" in err and "the images of label-table rows 3" in err
    assert "AccessionNumber in their headers" in err and "ACC-NOT-THERE-7" not in err
    params = SMALL.model_copy(update={"allow_missing": True})
    out = _build(root, table, tmp_path / "prep", params)
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected["csv_row"].tolist() == [3] and rejected["image_key"][0] == PSEUDONYM("image", "ACC-NOT-THERE-7")
    assert _counts(out)["images"] == 3 and _counts(out)["missing"] == 1


def test_each_file_is_read_once_and_a_copy_of_an_image_counts_once(tmp_path, monkeypatch):
    root = tmp_path / "pacs"
    images = _tree(root)
    uids = [_uid(root / rel) for rel in images]
    read, real = [], locating.header_ids
    monkeypatch.setattr(locating, "header_ids", lambda path: read.append(path) or real(path))
    found, folders = find_by_header(root, "sop_instance_uid", uids)
    assert sorted(read) == sorted(p for p in root.rglob("*") if p.is_file())  # DICOMDIR and other files included
    assert [len(images_of) for images_of in found] == [1] * len(uids)  # IM7_copy: the same SOP Instance as IM7
    assert [path for images_of in found for _, path in images_of] == [root / rel for rel in images]
    assert set(folders) - {str(Path(rel).parent) for rel in images} == {"TINY_ALPHA/PT000000/ST000000/SE000000"}
    assert "." not in folders and "TINY_ALPHA" not in folders  # where the DICOMDIRs are: not images


@pytest.mark.parametrize("content, message", [
    ("x,effusion\n1,0\n", r"missing column\(s\) \['file'\]: name each image by one column \(file: .*sop_instance_uid"),
    ("file,sop_instance_uid,effusion\na,1.2,0\n", r"columns \['file', 'sop_instance_uid'\] each name the images"),
    ("sop_instance_uid,effusion\n1.2.3,0\n ,1\n", r"column 'sop_instance_uid' is empty at rows \[3\]"),
    ("accession_number,effusion\nA77,0\nA78,1\n A77 ,1\n", r"column 'accession_number' repeats an earlier row's "
                                                            r"value at rows \[4\]"),
])
def test_a_table_that_names_its_images_badly_is_refused_without_showing_identifiers(tmp_path, content, message):
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(DataPrepError, match=message) as caught:
        read_target_labels(tmp_path / "t.csv")
    assert "A77" not in str(caught.value) and "1.2.3" not in str(caught.value)


def test_naming_columns_are_not_labels(tmp_path):
    (tmp_path / "t.csv").write_text("accession_number,effusion,nodule\nA1,0,1\n")
    assert read_target_labels(tmp_path / "t.csv").names == ["effusion", "nodule"]


# ---------------------------------------------------------------- no identifier reaches an output


PLANTED = {"PatientID": "PID-PLANTED-{k}", "PatientName": "Planted^Patient{k}", "PatientBirthDate": "193701{k:02d}",
           "StudyDate": "201903{k:02d}", "AccessionNumber": "ACC-PLANTED-{k}", "OtherPatientIDs": "MRN-PLANTED-{k}"}


def _planted_tree(root: Path) -> list[str]:
    """Real films whose identifiers are replaced by unmistakable ones: new UIDs, and PLANTED values; two films
    share each study."""
    images = _tree(root)
    for k, rel in enumerate(images):
        ds = quiet_read(root / rel, stop_before_pixels=False)
        study = k // 2 + 1
        for keyword, value in PLANTED.items():
            setattr(ds, keyword, value.format(k=study))
        ds.PatientAge = ""  # the age comes from the planted dates
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.save_as(root / rel)
    (root / "DICOMDIR").unlink()  # it still names the old identifiers
    return images


@pytest.mark.parametrize("named_by", ["file", "sop_instance_uid", "accession_number"])
def test_no_uid_accession_number_id_name_or_date_reaches_an_output(tmp_path, named_by, capsys):
    root = tmp_path / "pacs"
    images = _planted_tree(root)
    headers = [quiet_read(root / rel) for rel in images]
    planted = {str(ds.get(k)) for ds in headers for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                                                           *PLANTED)}
    values = {"file": images, "sop_instance_uid": [str(ds.SOPInstanceUID) for ds in headers],
              "accession_number": sorted({str(ds.AccessionNumber) for ds in headers})}[named_by]
    values = values + ["1.2.826.0.1.3680043.99.404" if named_by == "sop_instance_uid" else "ACC-PLANTED-404"]
    planted |= set(values)
    if named_by == "file":
        planted |= {Path(rel).parts[1] for rel in images if rel.startswith("export")} | set(PATIENT_FOLDERS)
    params = SMALL.model_copy(update={"allow_missing": True})
    logs = []
    out = _build(root, _table(tmp_path / "labels.csv", named_by, values), tmp_path / "prep", params, logs)
    counts = _counts(out)
    assert counts["images"] + counts["duplicates"] == len(images) and counts["rejected"] == 1
    age = _labels(out)["age"]
    assert (age != "").all() and age.str.fullmatch(r"\d+|90\+").all()  # from the planted dates
    assert {p.name for p in out.iterdir()} == {"labels.csv", "folds.csv", "rejected.csv", "duplicates.csv",
                                               "manifest.json", "images.npy"}
    written = {p.name: p.read_text() for p in out.iterdir() if p.suffix != ".npy"}
    written["logs"] = "\n".join(logs) + capsys.readouterr().err
    leaks = {name: [p for p in planted if p in text] for name, text in written.items()}
    assert not any(leaks.values()), leaks


# ---------------------------------------------------------------- sex, age and view from the header


@pytest.mark.parametrize("name, facts", [
    ("6154", {"age": 47, "view": "LL"}),  # PatientAge 047Y, PatientSex empty
    ("CT_small.dcm", {"sex": "O", "age": 0}),  # 000Y
    ("RG1_UNCR.dcm", {"sex": "F", "age": 64, "view": "PA"}),  # no PatientAge: born 1940-03-05, studied 2004-08-26
    ("RG3_UNCR.dcm", {"sex": "F", "age": 25, "view": "AP"}),  # born 1979-04-08
    ("bad_sequence.dcm", {"sex": "M", "age": 23}),  # PatientAge "22Y" is not an AS: 1991-01-01 to 2014-01-01
    ("examples_overlay.dcm", {"sex": "M", "age": 58}),  # 058Y wins over the placeholder birth date 1111-11-11
    ("color-pl.dcm", {}),  # an ACR-NEMA date 1994.11.05 and nothing else
])
def test_header_facts_of_real_files(name, facts):
    assert film_facts(quiet_read(real_file(name))) == facts


def _raw(keyword: str, vr: str, value: bytes):
    def change(ds):
        tag = Tag(keyword)
        ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return change


def _set(**values):
    def change(ds):
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword) if keyword in ds else None
            else:
                setattr(ds, keyword, value)
    return change


@pytest.mark.parametrize("change, sex, age", [
    (_set(PatientSex="M", PatientAge="045Y"), "M", 45),
    (_set(PatientSex="F", PatientAge="006M"), "F", 0),
    (_set(PatientAge="030M"), None, 2),
    (_set(PatientAge="003W"), None, 0),
    (_set(PatientAge="010D"), None, 0),
    (_set(PatientAge="095Y"), None, 95),
    (_set(PatientAge="45", PatientBirthDate=None), None, None),  # not an AS, and no birth date
    (_set(PatientAge="0XXY"), None, 47),  # not an AS either: the dates
    (_set(PatientAge="0XXY", PatientBirthDate=None), None, None),
    (_set(PatientAge="45", PatientBirthDate="19500110", StudyDate="20000109"), None, 49),  # the day before
    (_set(PatientAge=None, PatientBirthDate="19500110", StudyDate="20000110"), None, 50),  # the birthday
    (_set(PatientAge=None, PatientBirthDate="19200229", StudyDate="20150301"), None, 95),
    (_set(PatientAge=None, PatientBirthDate="19500230", StudyDate="20000110"), None, None),  # no 30 February
    (_set(PatientAge=None, PatientBirthDate="2001", StudyDate="20000110"), None, None),
    (_set(PatientAge=None, PatientBirthDate="20010101", StudyDate="20000110"), None, None),  # born after
    (_set(PatientAge=None, PatientBirthDate="18500101", StudyDate="20000110"), None, None),  # a placeholder
    (_set(PatientAge=None, PatientBirthDate="19500110", StudyDate=None, AcquisitionDate="19900615"), None, 40),
    (_set(PatientAge=None, PatientBirthDate="19500110", StudyDate="bad", AcquisitionDate=None,
          ContentDate="19800615"), None, 30),
    (_raw("PatientAge", "US", b"\x2d\x00"), None, 47),  # unreadable as an AS: the dates give 47 too
    (_raw("PatientSex", "SQ", b"\x01\x02"), None, 47),
    (_set(PatientSex=["M", "F"]), None, 47),
    ([_set(PatientAge=None), _raw("PatientBirthDate", "DA", b"1950\x00\x001")], None, None),
    ([_set(PatientAge=None), _raw("StudyDate", "DA", b"2001-01-01")], None, 47),  # AcquisitionDate 20010101
    ([_set(PatientAge=None), _raw("PatientBirthDate", "DA", b"19531231\\19600101")], None, None),
])
def test_header_sex_and_age_and_malformed_values_left_out(tmp_path, change, sex, age):
    ds = quiet_read(real_file("6154"), stop_before_pixels=False)  # 047Y, PatientSex empty, no birth date
    ds.PatientBirthDate, ds.StudyDate = "19531231", "20010101"  # 47 too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the values it is asked to write
        for one in change if isinstance(change, list) else [change]:
            one(ds)
        ds.save_as(tmp_path / "f.dcm")
        facts = film_facts(quiet_read(tmp_path / "f.dcm"))
        decoded = decode_and_resize(tmp_path / "f.dcm", 16)
    assert (facts.get("sex"), facts.get("age")) == (sex, age)
    assert decoded.reason is None and decoded.facts == facts  # what a build's worker sends back


def test_the_table_wins_over_the_header_and_ages_above_89_are_90_plus(tmp_path):
    root = tmp_path / "pacs"
    images = _tree(root)
    rows = {"export/9RG1/20040826/SE1/IM1": ("", "", ""),  # header: F, born 1940, studied 2004: 64, PA
            "export/11RG3/20040826/SE1/IM1": ("M", "91", "PA"),  # the table's values, 91 -> 90+
            "export/1CT1/20040119/SE2/IM7": ("", "", "LATERAL"),  # header: sex O -> empty, 000Y -> 0
            "77654033/CR1/6154": ("F", "", "")}  # header: 047Y, LL
    old = root / "export" / "4MR1" / "20040826" / "SE3" / "IM1"
    ds = quiet_read(old, stop_before_pixels=False)
    ds.PatientAge, ds.PatientSex, ds.ViewPosition = "093Y", "F", "PA"
    ds.save_as(old)
    rows["export/4MR1/20040826/SE3/IM1"] = ("", "", "")
    assert set(rows) <= set(images)
    sex, age, view = zip(*rows.values())
    out = _build(root, _table(tmp_path / "labels.csv", "file", list(rows), sex=sex, age=age, view=view),
                 tmp_path / "prep")
    labels = _labels(out)
    assert labels[["sex", "age", "view"]].values.tolist() == [
        ["F", "64", "PA"], ["M", "90+", "PA"], ["", "0", "LATERAL"], ["F", "47", "LL"], ["F", "90+", "PA"]]


def test_a_sweeps_raw_target_may_name_its_images_by_uid_and_the_labels_cli_says_what_to_use(tmp_path, capsys):
    from data_prep.labels import main as labels_main
    from sweeper.datasets import raw_images
    from sweeper.spec import parse_spec

    root = tmp_path / "pacs"
    images = _tree(root)
    table = _table(root / "labels.csv", "sop_instance_uid", [_uid(root / rel) for rel in images])
    spec = parse_spec('name = "uids"\n[data]\ntarget = ""\n[data.prepare.target]\nmapping = "none"\n'
                      '[grid]\nbackbone = ["resnet18"]\nrecipe = ["scratch"]\n[recipes.scratch]\n')
    assert raw_images(spec, "target", "target", str(root), check=True)[:2] == (len(images), len(images))
    _table(root / "labels.csv", "file", [rel.replace("/", "\\") for rel in images])  # written on Windows
    assert raw_images(spec, "target", "target", str(root), check=True)[:2] == (len(images), len(images))
    table = _table(root / "labels.csv", "sop_instance_uid", [_uid(root / rel) for rel in images])
    assert labels_main(["target", str(table), "--mapping", "none", "--dicom-dir", str(root), "--out",
                        str(tmp_path / "l.csv")]) == 2
    assert "this table names its images by 'sop_instance_uid': build it with python -m data_prep.build" in \
        capsys.readouterr().err
