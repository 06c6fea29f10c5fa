"""A sweep builds raw sources (KIND:FOLDER) through data_prep with the spec's settings, and reuses them."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from data_prep.dataset import PreparedDataset
from data_prep.errors import DataPrepError
from phantom.generate import make_phantom_set
from sweeper.datasets import ensure_datasets
from sweeper.spec import SpecError, parse_spec

SPEC = """
name = "raw"
[data]
target = "{target}"
size = 32
folds = 3
sources = {{ nih = "" }}
{prepare}
[grid]
backbone = ["resnet18"]
recipe = ["nih"]
[recipes.nih]
sources = ["nih"]
"""


@pytest.fixture(scope="module")
def raw_nih(tmp_path_factory):
    """NIH's layout: Data_Entry_2017.csv beside an images/ folder."""
    out = tmp_path_factory.mktemp("nih_raw")
    make_phantom_set(out, kind="nih", n_patients=12, image_px=48, prevalence=0.3, seed=2)
    return out


def _spec(target: str, prepare: str = ""):
    return parse_spec(SPEC.format(target=target, prepare=prepare))


def test_raw_target_and_source_are_built_with_the_specs_settings_and_reused(phantom_dir, raw_nih, tmp_path):
    spec = _spec(f"target:{phantom_dir}", '[data.prepare.nih]\npreset = "seed003"\n')
    logged = []
    paths = ensure_datasets(spec, tmp_path, log=logged.append, given={"nih": f"nih:{raw_nih}"})
    target, nih = PreparedDataset(paths["target"]), PreparedDataset(paths["nih"])
    assert paths["target"].parent == tmp_path / "prepared" and paths["target"].name.startswith("target-")
    assert target.manifest["size"] == 32 and target.num_folds == 3
    assert "Nodule" in nih.label_names and "Mass" not in nih.label_names and "Pneumonia" not in nih.label_names
    assert nih.manifest["params"]["source"] == {"kind": "nih", "preset": "seed003", "seed": 0}
    again = ensure_datasets(spec, tmp_path, log=logged.append, given={"nih": f"nih:{raw_nih}"})
    assert again == paths and sum("reusing prepared data set" in line for line in logged) == 2


def test_nih_keeps_every_label_by_default_and_the_table_can_be_named_directly(phantom_dir, raw_nih, tmp_path):
    paths = ensure_datasets(_spec(f"target:{phantom_dir / 'labels.csv'}"), tmp_path, log=lambda *_: None,
                            given={"nih": f"nih:{raw_nih / 'Data_Entry_2017.csv'}"})
    labels = PreparedDataset(paths["nih"]).label_names
    assert len(labels) == 14 and {"Mass", "Nodule", "Pneumonia"} <= set(labels)


def test_chexperts_own_layout_is_found(tmp_path):
    """train.csv inside CheXpert-v1.0-small/, its paths starting with that folder."""
    raw = tmp_path / "download"
    make_phantom_set(raw, kind="chexpert", n_patients=6, image_px=48, prevalence=0.3, seed=4)
    shutil.move(raw / "train.csv", raw / "CheXpert-v1.0-small" / "train.csv")
    spec = parse_spec(SPEC.replace('recipe = ["nih"]', 'recipe = ["chexpert"]').replace(
        "[recipes.nih]\nsources = [\"nih\"]", "[recipes.chexpert]\nsources = [\"chexpert\"]").replace(
        'sources = {{ nih = "" }}', 'sources = {{ chexpert = "" }}').format(target="phantom", prepare=""))
    paths = ensure_datasets(spec, tmp_path / "home", log=lambda *_: None, given={"chexpert": f"chexpert:{raw}"})
    prepared = PreparedDataset(paths["chexpert"])
    assert prepared.manifest["counts"]["images"] == len(prepared.labels) > 0
    assert prepared.manifest["params"]["source"]["policy"] == spec.data.chexpert_policy


@pytest.mark.parametrize("location, expected", [
    ("nih:{tmp}/nowhere", "data.sources.nih = 'nih:{tmp}/nowhere': {tmp}/nowhere does not exist"),
    ("nih:{tmp}", "data.sources.nih = 'nih:{tmp}': {tmp}: no NIH label table in this folder; expected "
                  "Data_Entry_2017_v2020.csv or Data_Entry_2017.csv, or give the table itself"),
    ("nhi:{tmp}", "not a prepared data set (no manifest.json); expected a prepared data set's path, KIND:FOLDER"),
])
def test_bad_raw_locations_name_the_key_and_what_was_expected(phantom_dir, tmp_path, location, expected):
    with pytest.raises(SpecError, match=expected.format(tmp=tmp_path).replace("*", r"\*").replace("(", r"\(")
                       .replace(")", r"\)")):
        ensure_datasets(_spec("phantom"), tmp_path, log=lambda *_: None, given={"nih": location.format(tmp=tmp_path)})


def test_a_table_whose_images_are_elsewhere_stops_before_building_and_says_where_it_looked(raw_nih, tmp_path):
    downloaded = tmp_path / "download"
    downloaded.mkdir()
    shutil.copy(raw_nih / "Data_Entry_2017.csv", downloaded / "Data_Entry_2017.csv")
    listed = len(pd.read_csv(downloaded / "Data_Entry_2017.csv"))
    with pytest.raises(DataPrepError, match=f"{listed} of {listed} images listed in .*Data_Entry_2017.csv were not "
                                            f"found under {downloaded} \\(no image files in any folder there\\)"):
        ensure_datasets(_spec("phantom"), tmp_path / "home", log=lambda *_: None, given={"nih": f"nih:{downloaded}"})
    assert not list((tmp_path / "home" / "prepared").glob("*nih*"))  # nothing built or left half-built


@pytest.mark.parametrize("prepare, expected", [
    ("[data.prepare.chexpert]\nblank = \"mask\"\n", "data: prepare.chexpert: no such data set"),
    ("[data.prepare.nih]\nnih_preset = \"seed003\"\n", "data.prepare.nih: nih_preset: unknown option; expected bits, "
                                                    "near_duplicates, allow_missing or an option of a source kind"),
    ("[data.prepare.nih]\npolicy = \"u_ones\"\n", "policy: set data.chexpert_policy"),
    ("[data.prepare.nih]\nnear_duplicates = 1.5\n", "expected a correlation in (0, 1], or 'off'"),
    ("expected_images = { target = 0 }\n", "data: expected_images.target: expected a positive image count"),
])
def test_prepare_options_are_validated_with_their_key(prepare, expected):
    with pytest.raises(SpecError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _spec("phantom", prepare)


def test_a_source_option_is_checked_by_its_kinds_model_once_the_spec_names_the_kind():
    with pytest.raises(SpecError, match="data: prepare.target.discarded_only: Input should be 'drop' or 'normal'"):
        _spec("target:/nowhere", '[data.prepare.target]\ndiscarded_only = "keep"\n')
    with pytest.raises(SpecError, match="prepare.target.preset: not an option of target sources; their options: "
                                        "\\['mapping', 'discarded_only'\\]"):
        _spec("target:/nowhere", '[data.prepare.target]\npreset = "seed003"\n')


def test_the_specs_phantom_options_reach_the_generator(tmp_path):
    """label_noise flips written labels (the films stay), image_px = 'real' keeps the real film sizes."""
    spec = (lambda extra: parse_spec(SPEC.format(target="phantom", prepare="").replace(
        "folds = 3", f"folds = 3\nphantom = {{ n_patients = 12, image_px = 64, seed = 4{extra} }}")))
    clean = ensure_datasets(spec(""), tmp_path / "clean", log=lambda *_: None, given={"nih": "phantom:nih"})
    noisy = ensure_datasets(spec(", label_noise = 0.3"), tmp_path / "noisy", log=lambda *_: None,
                            given={"nih": "phantom:nih"})
    (raw_clean,) = (tmp_path / "clean" / "phantom").glob("target-*")
    (raw_noisy,) = (tmp_path / "noisy" / "phantom").glob("target-*-noise0.3")
    findings = [pd.read_csv(raw / "labels.csv")["findings"] for raw in (raw_clean, raw_noisy)]
    assert len(findings[0]) == len(findings[1]) and (findings[0] != findings[1]).any()
    assert PreparedDataset(clean["target"]).dataset_id != PreparedDataset(noisy["target"]).dataset_id
    assert parse_spec(SPEC.format(target="phantom", prepare="").replace(
        "folds = 3", 'folds = 3\nphantom = { image_px = "real" }')).data.phantom.image_px == "real"
    with pytest.raises(SpecError, match="must be at least 16 pixels, or 'real'"):
        parse_spec(SPEC.format(target="phantom", prepare="").replace("folds = 3", "folds = 3\nphantom = { image_px = 8 }"))


def _ensure_phantom(home: str, barrier=None) -> tuple[str, list[str]]:
    spec = parse_spec(SPEC.format(target="phantom", prepare="").replace(
        "folds = 3", "folds = 3\nphantom = { n_patients = 12, image_px = 48, seed = 5 }"))
    logged = []
    if barrier is not None:
        barrier.wait()  # both drivers look for the set at the same moment
    return str(ensure_datasets(spec, Path(home), log=logged.append, given={"nih": "phantom:nih"})["target"]), logged


def test_two_drivers_sharing_a_home_generate_each_phantom_set_once_and_both_use_it(tmp_path):
    """Two sweeps started at once on one home (the tests' two smoke studies, or a user's): one writes each
    phantom set while the other waits for it; neither reads a half-written set or leaves a partial one."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        barrier = manager.Barrier(2)
        both = list(pool.map(_ensure_phantom, [str(tmp_path / "home")] * 2, [barrier] * 2))
    assert both[0][0] == both[1][0]
    generated = [line for _, logged in both for line in logged if "generating phantom" in line]
    assert len(generated) == 2, generated  # the target and NIH, each by one driver
    alone, _ = _ensure_phantom(str(tmp_path / "alone"))
    assert PreparedDataset(both[0][0]).dataset_id == PreparedDataset(alone).dataset_id
    assert sorted(p.name for p in (tmp_path / "home" / "phantom").iterdir()) == \
        sorted(p.name for p in (tmp_path / "alone" / "phantom").iterdir())
    assert not list((tmp_path / "home" / "phantom").glob(".*.partial"))
