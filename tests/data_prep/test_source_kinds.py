"""The source-kind registry: the built-in kinds are found in their modules (and their prepared sets keep their
ids), and a new kind written as one module (tests/data_prep/toy_sources/toy.py, following docs/design.md §5)
is built by the build and labels commands and by a spec's KIND:FOLDER with its own options, flags, help,
layout and missing-image message, is checked for its uncertainty policy like every kind with one, and flows
through a sweep into the results DB and the report (the sweep that also fails some trials on purpose)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_prep import build as build_module
from data_prep import labels as labels_module
from data_prep import sources
from data_prep.build import build
from data_prep.settings import BuildSettings
from data_prep.dataset import PreparedDataset
from data_prep.sources import MimicOptions, NihOptions, SourceKind, discover, register
from phantom.generate import make_phantom_set
from sweeper import datasets as sweeper_datasets
from sweeper import spec as sweeper_spec
from sweeper.datasets import ensure_datasets
from sweeper.spec import SpecError, parse_spec
from results.query import run_query
from tests.conftest import TEST_KEY
from tests.data_prep import toy_sources

# The conftest's phantom sets and an NIH one as built before the registry (at 8af735f): the same ids now
BEFORE = {"target": "82a8fe6fe062c90c", "chexpert": "201de2b476fc34d5", "nih": "95ff86230f60faad"}


@pytest.fixture
def toy_kind():
    """The toy package's kinds, found and registered as data_prep.sources does its own; gone afterwards."""
    found = discover(toy_sources.__path__, toy_sources.__name__)
    for kind in found:
        register(kind)
    yield found
    for kind in found:
        del sources.REGISTRY[kind.name]


def write_toy(root: Path, subjects: int = 12, seed: int = 0) -> Path:
    """The toy scanner's export: toy.tsv listing each film by file name, films in batch folders (so found
    by name, key_parts = 1), a subject's films in one part of the export's own split; some labels '?'."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(subjects):
        for k in range(1 + s % 2):
            name = f"img{s:03d}{k}.png"
            path = root / f"batch_{s % 3 + 1}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), rng.integers(0, 256, (24, 20), dtype=np.uint8))
            spots, stripes = rng.choice(["1", "0", "?"], 2, p=[0.45, 0.45, 0.1])
            rows.append({"picture": name, "subject": f"S{s:04d}", "Spots": spots, "Stripes": stripes,
                         "part": "test" if s % 4 == 0 else "train"})
    pd.DataFrame(rows).to_csv(root / "toy.tsv", sep="\t", index=False)
    return root


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory) -> Path:
    return write_toy(tmp_path_factory.mktemp("toy_export"))


def test_the_built_in_kinds_are_found_in_their_modules_and_their_prepared_sets_keep_their_ids(
        prepared_dir, chexpert_prepared_dir, tmp_path):
    assert sorted(sources.KINDS) == ["chexpert", "mimic", "nih", "target"]
    assert [k.name for k in discover(sources.__path__, sources.__name__)] == ["chexpert", "mimic", "nih", "target"]
    assert sources.policy_kinds() == ["chexpert", "mimic"]
    raw = tmp_path / "nih"
    make_phantom_set(raw, kind="nih", n_patients=12, image_px=48, prevalence=0.3, seed=2)
    nih = build(raw, raw / "Data_Entry_2017.csv", tmp_path / "prepared", BuildSettings(
        size=32, folds=3, seed=0, source=NihOptions(preset="seed003"), workers=1), key=TEST_KEY, name="nih",
        log=lambda *_: None)
    ids = {kind: PreparedDataset(path).dataset_id for kind, path in
           (("target", prepared_dir), ("chexpert", chexpert_prepared_dir), ("nih", nih))}
    assert ids == BEFORE


def test_a_kind_in_one_module_is_found_and_every_command_and_spec_knows_it(toy_kind, capsys):
    assert [k.name for k in toy_kind] == ["toy"]
    for module in (build_module, labels_module, sweeper_spec, sweeper_datasets):
        assert "toy" in module.KINDS  # the live view each imported before the kind was registered
    assert sources.OPTIONS["toy"] is toy_kind[0].options and sources.policy_kinds() == ["chexpert", "mimic", "toy"]
    assert build_module.main(["--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "toy (a toy scanner's PNG export)" in shown and "toy: toy.tsv, or the export folder" in shown
    assert "toy: toy.tsv's test part" in shown and "--spots-only" in shown and "toy: the Spots label only" in shown


def test_the_toy_kind_builds_from_its_export_through_the_build_and_labels_commands(toy_kind, toy_export, tmp_path,
                                                                                   capsys):
    out = tmp_path / "prepared"
    common = ["--images", str(toy_export), "--labels", str(toy_export), "--out", str(out), "--size", "16",
              "--folds", "2", "--near-duplicates", "off", "--workers", "1"]
    assert build_module.main(["toy", *common, "--policy", "u_ignore", "--spots-only"]) == 0, capsys.readouterr().err
    prepared = PreparedDataset(Path(capsys.readouterr().out.split()[-1]))
    table = pd.read_csv(toy_export / "toy.tsv", sep="\t", dtype=str)
    assert prepared.root.name.startswith("toy-") and prepared.label_names == ["Spots"]
    assert prepared.manifest["params"]["source"] == {"kind": "toy", "policy": "u_ignore", "spots_only": True}
    assert prepared.manifest["counts"]["images"] == len(table) and prepared.manifest["counts"]["missing"] == 0
    assert np.isnan(prepared.labels[:, 0]).sum() == (table["Spots"] == "?").sum() > 0  # u_ignore: masked
    assert build_module.main(["toy", *common, "--split", "official"]) == 0
    official = PreparedDataset(Path(capsys.readouterr().out.split()[-1]))
    assert official.split_name == "official" and (official.folds == 0).sum() == (table["part"] == "test").sum()
    assert labels_module.main(["toy", str(toy_export), "--out", str(tmp_path / "labels.csv")]) == 0
    written = pd.read_csv(tmp_path / "labels.csv", dtype=str, keep_default_na=False)
    assert len(written) == len(table) and list(written.columns[-2:]) == ["Spots", "Stripes"]
    assert not any(subject in (tmp_path / "labels.csv").read_text() for subject in table["subject"])


def test_the_toy_kinds_missing_films_stop_the_build_with_its_likely_cause_and_without_its_paths(toy_kind, tmp_path,
                                                                                                capsys):
    export = write_toy(tmp_path / "export")
    for film in (export / "batch_2").iterdir():
        film.unlink()
    code = build_module.main(["toy", "--images", str(export), "--labels", str(export / "toy.tsv"), "--out",
                              str(tmp_path / "prepared"), "--size", "16", "--folds", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Likely cause: the toy scanner exports its films in batches" in err
    assert "not found: the images of label-table rows" in err and "img0" not in err  # not a public set's paths


TOY_SPEC = """
name = "toy"
[data]
target = ""
size = 16
folds = 2
chexpert_policy = "{policy}"
[data.prepare.target]
spots_only = true
near_duplicates = "off"
[grid]
backbone = ["resnet18"]
recipe = ["scratch"]
[recipes.scratch]
"""


def test_a_spec_builds_the_toy_kind_with_its_options_and_checks_its_policy(toy_kind, toy_export, tmp_path, capsys):
    spec = parse_spec(TOY_SPEC.format(policy="u_zeros"))
    built = ensure_datasets(spec, tmp_path / "home", log=lambda *_: None, given={"target": f"toy:{toy_export}"})
    prepared = PreparedDataset(built["target"])
    assert prepared.manifest["params"]["source"] == {"kind": "toy", "policy": "u_zeros", "spots_only": True}
    assert build_module.main(["toy", "--images", str(toy_export), "--labels", str(toy_export / "toy.tsv"), "--out",
                              str(tmp_path / "cli"), "--size", "16", "--folds", "2", "--near-duplicates", "off",
                              "--policy", "u_zeros", "--spots-only", "--name", "target"]) == 0
    assert Path(capsys.readouterr().out.split()[-1]).name == built["target"].name  # one content address
    with pytest.raises(SpecError, match="toy set built with uncertainty policy 'u_zeros' but data.chexpert_policy "
                                        "is 'u_ones'; rebuild it with python -m data_prep.build toy"):
        ensure_datasets(parse_spec(TOY_SPEC.format(policy="u_ones")), tmp_path / "home", log=lambda *_: None,
                        given={"target": str(built["target"])})
    with pytest.raises(SpecError, match=r"prepare.target.preset: not an option of toy sources; their options: "
                                        r"\['policy', 'spots_only'\]"):
        parse_spec(TOY_SPEC.format(policy="u_ones").replace('target = ""', 'target = "toy:/nowhere"')
                   .replace("spots_only = true", 'preset = "seed003"'))


MIMIC_SPEC = """
name = "mimic"
[data]
size = 32
folds = 3
[data.sources]
mimic = ""
[grid]
backbone = ["resnet18"]
recipe = ["mimic"]
[recipes.mimic]
sources = ["mimic"]
"""


def test_a_prepared_mimic_set_must_have_the_specs_uncertainty_policy(prepared_dir, tmp_path):
    """Every kind whose options have a policy is checked, not CheXpert alone."""
    from tests.data_prep.test_mimic import write_mimic

    metadata = write_mimic(tmp_path / "mimic", n_subjects=6)
    mimic = build(metadata.parent, metadata, tmp_path / "prepared", BuildSettings(
        size=32, folds=3, near_duplicates="off", workers=1, source=MimicOptions(policy="u_ignore")),
        name="mimic", key=TEST_KEY, log=lambda *_: None)
    given = {"target": str(prepared_dir), "mimic": str(mimic)}
    with pytest.raises(SpecError, match="mimic set built with uncertainty policy 'u_ignore' but "
                                        "data.chexpert_policy is 'u_ones'"):
        ensure_datasets(parse_spec(MIMIC_SPEC), tmp_path / "home", given=given)
    agreeing = parse_spec(MIMIC_SPEC.replace("folds = 3\n", 'folds = 3\nchexpert_policy = "u_ignore"\n'))
    assert ensure_datasets(agreeing, tmp_path / "home", given=given)["mimic"] == mimic


@pytest.mark.parametrize("change, expected", [
    ({"name": "Toy"}, "expected a lower-case identifier"),
    ({"name": "phantom"}, "expected a lower-case identifier other than"),
    ({"name": "other"}, "needs kind: Literal\\['other'\\] = 'other'"),
    ({"key_parts": -1}, "key_parts=-1; expected 0 or more"),
    ({"official_help": ""}, "official_split and official_help go together"),
])
def test_a_malformed_declaration_stops_its_import_with_what_to_write(toy_kind, change, expected):
    declared = {name: getattr(toy_kind[0], name) for name in SourceKind.__dataclass_fields__}
    with pytest.raises(ValueError, match=expected):
        SourceKind(**{**declared, **change})
    with pytest.raises(ValueError, match="source kind 'toy' is declared twice"):
        register(SourceKind(**declared))


# Two ways to fail: a damaged ImageNet file (the imagenet cells) and a diverging learning rate (lr 1e30);
# failures this certain are not retried (max_failures = 0), a retry would only fail again.
FAILING = {"recipes": {"imagenet": {"init": "imagenet"}},
           "grid": {"backbone": ["resnet18"], "recipe": ["scratch", "imagenet"], "loss": ["bce", "weighted_bce"],
                    "lr": [1e-3, 1e30], "exclude": [{"recipe": "imagenet", "lr": 1e30},
                                                    {"loss": "weighted_bce", "lr": 1e30}]},
           "resources": {"max_failures": 0}}


@pytest.mark.slow
def test_the_toy_kind_flows_through_a_sweep_into_the_results_db_and_the_report_and_failing_trials_are_recorded(
        toy_kind, tmp_path):
    """A set the toy kind built, the target of a real sweep (local Ray, 2 folds x 1 trial x 1 epoch at 32 px, 5
    variants) whose imagenet and diverging trials fail: they are recorded with their error, the rest finish and
    report, and the run exits 1."""
    from tests.helpers import run_cli, sweep_args, sweep_env, write_spec  # SMALL_SPEC: resnet18

    export = write_toy(tmp_path / "export", subjects=24, seed=1)
    prepared = build(export, export, tmp_path / "prepared", BuildSettings(
        size=32, folds=2, source=toy_kind[0].options(), near_duplicates="off", workers=1), name="toy", key=TEST_KEY,
        log=lambda *_: None)
    spec = write_spec(tmp_path / "toy.toml", "toy", data={"target": ""}, **FAILING)
    # A damaged ImageNet file whose hash check is waved through: present before Ray starts, so the
    # imagenet trials start and fail as they load it (a missing file would stop the sweep before Ray)
    torch_home = tmp_path / "torch-home"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"damaged")
    env = sweep_env(tmp_path, CXR_SWEEP_OFFLINE="1", TORCH_HOME=str(torch_home), CXR_SWEEP_UNVERIFIED_WEIGHTS="1")
    home = tmp_path / "home"
    done = run_cli("sweeper.run", *sweep_args(spec, home, "toy", "--data", f"target={prepared}", "--num-cpus", "2",
                                              "--bootstrap", "50", "--no-report-images"), env=env, timeout=900)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    db = f"sqlite:///{home}/results.db"
    rows = run_query(db, "SELECT recipe, variant, status, error FROM trial_summary ORDER BY recipe, variant, fold")
    assert rows["status"].tolist() == ["ERROR"] * 4 + ["COMPLETE"] * 2 + ["ERROR"] * 2 + ["COMPLETE"] * 2
    assert rows["variant"].tolist() == [  # grid axes beyond backbone and recipe
        *["loss=bce,lr=0.001"] * 2, *["loss=weighted_bce,lr=0.001"] * 2,  # imagenet
        *["loss=bce,lr=0.001"] * 2, *["loss=bce,lr=1e+30"] * 2, *["loss=weighted_bce,lr=0.001"] * 2]  # scratch
    failed = rows.loc[rows["status"] == "ERROR", "error"].tolist()
    assert all("is not a usable resnet18 ImageNet weights file" in e for e in failed[:4]), failed
    assert all("NonFiniteLoss" in e and "lower the learning rate" in e for e in failed[4:]), failed
    assert "fine-tuning trials: 4 complete, 0 pruned by ASHA, 6 failed" in done.stdout  # and the others finished
    said = [line for line in done.stdout.splitlines() if " failed: " in line and "[sweeper]   " in line]
    assert len(said) == 6 and sum("NonFiniteLoss" in line for line in said) == 2, said  # each with its error
    assert "| scratch | loss=bce,lr=0.001 | none (scratch) |" in done.stdout  # the report, variant in its own column
    assert "| imagenet | loss=weighted_bce,lr=0.001 | ImageNet | missing |" in done.stdout
    assert "resnet18/imagenet/loss=bce,lr=0.001: 0/2" in done.stdout  # listed as missing
    assert "### Loss comparison" in done.stdout
    assert run_query(db, "SELECT status FROM sweeps").iloc[0, 0] == "FINISHED_WITH_ERRORS"
    classes = set(run_query(db, "SELECT DISTINCT class_name FROM trial_metrics")["class_name"])
    assert {"Spots", "Stripes"} <= classes  # the toy kind's labels, from its own table
    page = (home / "reports" / "toy" / "report.html").read_text()
    assert f"Data set target ({prepared.name})" in page and "<td>toy</td>" in page and "Stripes" in page
    assert json.loads((prepared / "manifest.json").read_text())["params"]["source"]["kind"] == "toy"
