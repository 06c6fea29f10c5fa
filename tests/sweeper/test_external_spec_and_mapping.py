"""External test sets: the spec's [data.external.NAME], --smoke's stand-in, and how a set's labels are mapped
onto the target's (a real prepared phantom CheXpert set with unknown labels, U-Ignore)."""
from __future__ import annotations

import numpy as np
import pytest

from data_prep.dataset import PreparedDataset
from sweeper.evaluate import ExternalError, label_mapping, mapped_truth
from sweeper.overrides import apply
from sweeper.spec import SpecError, parse_spec
from tests.helpers import spec_text

TARGET = ["cardiac hypertrophy", "increased lung patterns", "spinal lesions"]


def test_a_spec_names_external_sets_with_a_mapping_and_augmentations_and_refuses_a_clash_or_bad_value():
    def spec(**external):
        return parse_spec(spec_text("x", data={"external": external}))

    found = spec(elsewhere={"location": "phantom:target", "tta": ["none", "hflip"]},
                 nih_test={"location": "/data/nih_test", "labels": "nih_as_seed000_target"})
    assert found.data.external["elsewhere"].tta == ["none", "hflip"]
    assert found.data.external["nih_test"].labels == "nih_as_seed000_target"
    assert found.data.external["nih_test"].tta == ["none"]
    with pytest.raises(SpecError, match="tta"):
        spec(x={"location": "p", "tta": ["vflip"]})
    with pytest.raises(SpecError, match="external.target: a name of the target or a source"):
        spec(target={"location": "p"})


def test_smoke_gives_an_external_set_without_a_location_phantom_films_of_other_patients_and_no_mapping():
    raw = {"name": "x", "data": {"external": {"a": {"labels": "nih_as_seed000_target"}, "b": {"location": "/kept"}}}}
    out = apply(raw, [], True, 64)["data"]["external"]
    assert out == {"a": {"location": "phantom:target"}, "b": {"location": "/kept"}}


def test_mapped_labels_are_positive_when_any_is_unknown_when_none_is_and_one_is_unknown(chexpert_prepared_dir, tmp_path):
    data = PreparedDataset(chexpert_prepared_dir)
    mapping_file = tmp_path / "map.toml"
    mapping_file.write_text('[categories]\n"cardiac hypertrophy" = ["Cardiomegaly"]\n'
                            '"increased lung patterns" = ["Consolidation", "Atelectasis"]\n')
    mapping = label_mapping(TARGET, data.label_names, str(mapping_file), "chexpert")
    assert mapping == {"cardiac hypertrophy": ["Cardiomegaly"],
                       "increased lung patterns": ["Consolidation", "Atelectasis"]}  # spinal lesions: no counterpart
    truth = mapped_truth(data, mapping)
    np.testing.assert_array_equal(truth[:, 0], data.labels[:, data.label_names.index("Cardiomegaly")])
    a, b = (data.labels[:, data.label_names.index(n)] for n in ("Consolidation", "Atelectasis"))
    expected = np.where((a == 1) | (b == 1), 1.0, np.where(np.isnan(a) | np.isnan(b), np.nan, 0.0))
    np.testing.assert_array_equal(truth[:, 1], expected)
    assert np.isnan(a + b).any() and np.isnan(truth[:, 1]).any()  # U-Ignore leaves some unknown, and they stay so


def test_a_mapping_naming_labels_that_do_not_exist_is_refused_naming_them(chexpert_prepared_dir, tmp_path):
    data = PreparedDataset(chexpert_prepared_dir)
    bad = tmp_path / "bad.toml"
    bad.write_text('[categories]\n"cardiac hypertrophy" = ["Cardiomegally"]\n')
    with pytest.raises(ExternalError, match=r"\['Cardiomegally'\] are not labels of external set chexpert"):
        label_mapping(TARGET, data.label_names, str(bad), "chexpert")
    bad.write_text('[categories]\n"big heart" = ["Cardiomegaly"]\n')
    with pytest.raises(ExternalError, match=r"\['big heart'\] are not labels of the sweep's target"):
        label_mapping(TARGET, data.label_names, str(bad), "chexpert")
    with pytest.raises(ExternalError, match="give a mapping with --mapping chexpert=MAPPING.toml"):
        label_mapping(TARGET, data.label_names, None, "chexpert")


def test_results_evaluate_is_sweeper_evaluate_without_importing_it(tmp_path):
    """The issue's command name works; results itself stays free of torch (tests/test_imports.py)."""
    from tests.helpers import run_cli

    done = run_cli("results.evaluate", "--db", f"sqlite:///{tmp_path}/none.db", "--external", "x")
    assert done.returncode == 2 and "--external 'x': expected NAME=PREPARED_DIR" in done.stderr
    shown = run_cli("results.evaluate", "--help")
    assert shown.returncode == 0 and "usage: python -m sweeper.evaluate" in shown.stdout
