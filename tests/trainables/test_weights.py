"""ImageNet weights: files in torchvision's published layout load through torchvision's own builder,
exactly; a file whose SHA-256 does not match its published name is refused; offline, a missing file
is one clear error naming the file, the cache and the fetch command; a spec's files are checked
before Ray starts."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
import torchvision

from sweeper.spec import parse_spec
from sweeper.weights import preflight
from tests.conftest import REPO
from tests.helpers import fit_config
from tests.published_weights import published_keys, seed_published
from trainables.models import TORCHVISION_TRUNKS, build_branch, build_model
from trainables.weights import (OFFLINE_ENV, UNVERIFIED_ENV, WeightsFile, WeightsUnavailable, fetch_file, published,
                                verify)

IMAGENET_BACKBONES = sorted(TORCHVISION_TRUNKS)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty torch cache on a machine that must not download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(OFFLINE_ENV, "1")
    monkeypatch.delenv(UNVERIFIED_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def unverified(offline_cache, monkeypatch):
    """The cache, accepting files whose digest cannot match torchvision's (every file a test writes)."""
    monkeypatch.setenv(UNVERIFIED_ENV, "1")
    return offline_cache


@pytest.mark.parametrize("backbone", IMAGENET_BACKBONES)
def test_every_backbone_loads_its_published_file_exactly(unverified, backbone):
    state = seed_published(backbone)
    with pytest.warns(UserWarning, match="not the file torchvision publishes"):
        branch = build_branch(backbone, "imagenet")
    expected = TORCHVISION_TRUNKS[backbone](_model_with(state, backbone)).state_dict()
    loaded = branch.trunk.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    preset = torchvision.models.get_model_weights(backbone).DEFAULT.transforms()
    assert branch.mean.flatten().tolist() == pytest.approx(list(preset.mean))  # the weights' own normalisation


def _model_with(state: dict, backbone: str) -> torch.nn.Module:
    model = torchvision.models.get_model(backbone, weights=None)
    model.load_state_dict(state)
    return model


def test_densenet121_file_keeps_the_2017_key_names_that_a_strict_raw_load_refuses(unverified):
    state = seed_published("densenet121")
    raw = torch.load(published("densenet121").path, weights_only=True)
    assert "features.denseblock1.denselayer1.norm.1.weight" in raw  # as in densenet121-a639ec97.pth
    assert "features.denseblock1.denselayer1.norm1.weight" not in raw
    with pytest.raises(RuntimeError, match="Missing key"):
        torchvision.models.densenet121(weights=None).load_state_dict(raw)  # the old project's load
    with pytest.warns(UserWarning):
        trunk = build_branch("densenet121", "imagenet").trunk
    assert torch.equal(trunk[0].denseblock1.denselayer1.norm1.weight, state["features.denseblock1.denselayer1.norm1.weight"])


def test_a_file_whose_hash_does_not_match_its_name_is_refused_with_its_path_and_what_to_do(offline_cache):
    seed_published("resnet50")
    path = published("resnet50").path
    with pytest.raises(WeightsUnavailable) as info:
        build_model("resnet50", num_classes=3, dropout=0.1, init="imagenet")
    message = str(info.value)
    assert str(path) in message and "the published file's starts with 11ad3fa6" in message
    assert "python -m trainables.weights fetch resnet50" in message and UNVERIFIED_ENV in message


def test_a_file_whose_hash_matches_its_name_is_accepted_and_its_digest_returned(offline_cache):
    offline_cache.mkdir(parents=True)
    body = b"weights"
    digest = hashlib.sha256(body).hexdigest()
    wanted = WeightsFile("resnet18", f"https://example.invalid/models/resnet18-{digest[:8]}.pth")
    wanted.path.write_bytes(body)
    assert verify(wanted) == digest


def test_a_download_is_checked_against_the_published_digits_and_a_bad_one_deleted(offline_cache, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.delenv(OFFLINE_ENV)
    source = tmp_path / "server"
    source.mkdir()
    body = b"the published bytes"
    digest = hashlib.sha256(body).hexdigest()
    good, bad = source / f"resnet18-{digest[:8]}.pth", source / "resnet18-00000000.pth"
    good.write_bytes(body)
    bad.write_bytes(body)
    assert fetch_file(WeightsFile("resnet18", good.as_uri()), progress=False).read_bytes() == body
    with pytest.raises(WeightsUnavailable, match="does not start with 00000000"):
        fetch_file(WeightsFile("resnet18", bad.as_uri()), progress=False)
    assert not (offline_cache / bad.name).exists()


def test_offline_without_the_file_is_one_error_naming_file_cache_and_command(offline_cache):
    with pytest.raises(WeightsUnavailable) as info:
        build_model("densenet121", num_classes=3, dropout=0.1, init="imagenet")
    message = str(info.value)
    assert "densenet121-a639ec97.pth" in message and str(offline_cache) in message
    assert "python -m trainables.weights fetch densenet121" in message and "TORCH_HOME" in message


def test_a_file_with_other_keys_is_refused_not_half_loaded(unverified):
    unverified.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, published("resnet18").path)
    with pytest.raises(WeightsUnavailable, match="not a usable resnet18 ImageNet weights file.*Missing key"):
        build_model("resnet18", num_classes=3, dropout=0.1, init="imagenet")


def test_a_weights_file_that_would_run_code_is_refused_even_when_its_hash_is_waved_through(unverified):
    """torch.hub unpickles with weights_only=False; the loader forces the weights-only unpickler."""
    unverified.mkdir(parents=True)
    state = published_keys("resnet18", torchvision.models.resnet18(weights=None).state_dict())
    torch.save({**state, "fn": print}, published("resnet18").path)  # unpickling would import a callable
    with pytest.raises(WeightsUnavailable, match="(?i)not a usable resnet18 ImageNet weights file.*weights.only"):
        build_model("resnet18", num_classes=3, dropout=0.1, init="imagenet")


PAPER_LIKE = """
name = "p"
[grid]
backbone = ["resnet50", "densenet121", "alexnet_style"]
recipe = ["imnet", "scratch"]
exclude = [{ backbone = "alexnet_style", recipe = "imnet" }]
[recipes.imnet]
init = "imagenet"
[recipes.scratch]
"""


def test_preflight_lists_every_missing_file_of_a_spec_at_once(offline_cache):
    with pytest.raises(WeightsUnavailable) as info:
        preflight(parse_spec(PAPER_LIKE), "myspec.toml")
    message = str(info.value)
    assert "2 ImageNet weights file(s) that spec 'myspec.toml' needs" in message
    assert "densenet121-a639ec97.pth (densenet121)" in message and "resnet50-11ad3fa6.pth (resnet50)" in message
    assert "python -m sweeper.weights --spec myspec.toml" in message and str(offline_cache) in message
    assert "alexnet" not in message  # its cells start from scratch


def test_preflight_returns_each_files_name_and_digest(unverified):
    for backbone in ("resnet50", "densenet121"):
        seed_published(backbone)
    with pytest.warns(UserWarning):
        found = preflight(parse_spec(PAPER_LIKE), "p")
    assert found == {b: {"file": published(b).path.name, "sha256": hashlib.sha256(published(b).path.read_bytes())
                         .hexdigest()} for b in ("densenet121", "resnet50")}


def test_sweeper_weights_check_lists_what_a_spec_needs(unverified, tmp_path):
    seed_published("resnet18")
    spec = tmp_path / "s.toml"
    spec.write_text('name = "s"\n[grid]\nbackbone = ["resnet18", "alexnet"]\nrecipe = ["imnet"]\n'
                    '[recipes.imnet]\ninit = "imagenet"\n')
    done = subprocess.run([sys.executable, "-m", "sweeper.weights", "--spec", str(spec), "--check"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert "resnet18-f37072fd.pth (present, SHA-256" in done.stdout and "alexnet-owt-7be5be79.pth (missing)" in done.stdout
    fetch = subprocess.run([sys.executable, "-m", "sweeper.weights", "--spec", str(spec)],
                           capture_output=True, text=True, cwd=REPO)
    assert fetch.returncode == 2 and "python -m trainables.weights fetch alexnet" in fetch.stderr


@pytest.mark.parametrize("backbone, first_conv, in_trunk", [("resnet50", "conv1.weight", "0.weight"),
                                                            ("densenet121", "features.conv0.weight", "0.conv0.weight")])
def test_an_imagenet_cell_trains_from_the_published_file(unverified, prepared_dir, backbone, first_conv, in_trunk):
    from trainables.fit import fit

    state = seed_published(backbone)
    reports = []
    cfg = fit_config(prepared_dir, backbone=backbone, epochs=1, init="imagenet", bn_recalibration=0)
    with pytest.warns(UserWarning):
        fit(cfg, report=lambda m, s: reports.append((m, s)), log=lambda *_: None)
    final, checkpoint = reports[-1]
    assert final["completed"] and final["epoch"] == 1 and "test_auc" in final
    trained = checkpoint["best_model"][f"branches.0.trunk.{in_trunk}"]
    assert trained.shape == state[first_conv].shape  # ImageNet's three-channel stem, not scratch's one channel
    assert torch.allclose(trained.float(), state[first_conv], atol=0.02)  # a few Adam steps from the file's values


def test_the_paper_spec_without_weights_stops_before_ray_with_every_missing_file(offline_cache, tmp_path, capsys):
    from sweeper.run import main

    home = tmp_path / "home"
    code = main(["--spec", "paper", "--home", str(home), "--data", "target=phantom",
                 "--data", "chexpert=phantom:chexpert", "--data", "nih=phantom:nih"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: 2 ImageNet weights file(s) that spec 'paper' needs")
    assert "densenet121-a639ec97.pth (densenet121)" in err and "resnet50-11ad3fa6.pth (resnet50)" in err
    assert "python -m sweeper.weights --spec paper" in err and "Nothing was started." in err
    assert not any((home / d).exists() for d in ("ray", "phantom", "prepared"))  # no Ray, no data built


def test_the_dry_run_shows_each_weights_file_present_or_missing(unverified, capsys):
    from sweeper.run import main

    seed_published("resnet50")
    assert main(["--spec", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"ImageNet weights (cache {unverified}):" in out
    assert "resnet50-11ad3fa6.pth (resnet50): present" in out and "densenet121-a639ec97.pth (densenet121): missing" in out


def test_each_cell_records_the_file_and_digest_it_starts_from_in_the_db_and_the_report(unverified, tmp_path):
    from pathlib import Path

    from results.query import run_query
    from results.report import build
    from results.store import ResultsStore
    from sweeper.plan import cell_rows, study_plans

    for backbone in ("resnet50", "densenet121"):
        seed_published(backbone)
    spec = parse_spec(PAPER_LIKE)
    with pytest.warns(UserWarning):
        found = preflight(spec, "p")
    url = f"sqlite:///{tmp_path}/r.db"
    store = ResultsStore(url)
    sweep = store.start_sweep("p1", "p", PAPER_LIKE, "test", spec.folds, 1)
    store.register_cells(sweep, cell_rows(spec, study_plans(spec, {"target": Path("t")}, Path("cache")), found))
    rows = run_query(url, "SELECT backbone, recipe, weights_file, weights_sha256 FROM cells ORDER BY backbone, recipe")
    digest = {b: hashlib.sha256(published(b).path.read_bytes()).hexdigest() for b in ("resnet50", "densenet121")}
    assert rows.astype(object).where(rows.notna(), None).values.tolist() == [
        ["alexnet_style", "scratch", None, None],
        ["densenet121", "imnet", "densenet121-a639ec97.pth", digest["densenet121"]],
        ["densenet121", "scratch", None, None],  # a scratch cell starts from no file
        ["resnet50", "imnet", "resnet50-11ad3fa6.pth", digest["resnet50"]],
        ["resnet50", "scratch", None, None]]
    summary = build(url, "p1", n_boot=10, figures=False).summary
    assert f"ImageNet weights of resnet50: resnet50-11ad3fa6.pth (SHA-256 {digest['resnet50']})" in summary
    assert f"ImageNet weights of densenet121: densenet121-a639ec97.pth (SHA-256 {digest['densenet121']})" in summary
